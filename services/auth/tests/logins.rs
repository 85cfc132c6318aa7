//! Password logins cannot be abused (issue 11 item 2): per-user lockout (persisted, audited,
//! lifted by an admin or by time), bounded argon2 hashing, unknown users costing the same as
//! real ones, and the per-address rate limit of `Join`.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_auth::users::{CertParams, INVALID_LOGIN};
use portcullis_auth::{AuthError, AuthState};
use portcullis_config::{AuthSettings, CommonFlags, FileConfig};
use portcullis_pki::x509::AUTH_SERVER_NAME;
use portcullis_pki::{Identity, Secret, ssh, x509};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{ListUserLocksRequest, UnlockUserRequest};
use portcullis_rpc::{ClientTls, Trust};
use portcullis_storage::{Backend, MemoryBackend, SledBackend};
use portcullis_types::User;

const PASSWORD: &str = "right-password";

fn settings(dir: &std::path::Path, extra: &str) -> AuthSettings {
    let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: logins.example.com\n{extra}", dir.display());
    AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap()
}

fn state_on(dir: &std::path::Path, extra: &str, backend: Arc<dyn Backend>) -> AuthState {
    let s = AuthState::open(&settings(dir, extra), backend).unwrap();
    if s.get_user("alice").unwrap().is_none() {
        s.put_user(&User::new("alice", vec!["access".into()], Default::default())).unwrap();
        s.set_password("alice", &Secret::new(PASSWORD.into())).unwrap();
    }
    s
}

fn state(dir: &std::path::Path, extra: &str) -> AuthState {
    state_on(dir, extra, Arc::new(MemoryBackend::new()))
}

/// A password login as the proxy makes it; the error text as the user sees it.
fn login(s: &AuthState, user: &str, password: &str) -> Result<String, String> {
    let key = ssh::generate_key().unwrap();
    let tkey = x509::generate_key().unwrap();
    let ssh_key = ssh::public_key_line(key.public_key()).unwrap();
    let tls_key = x509::public_key_der(&tkey);
    let params = CertParams { username: user, ssh_public_key: &ssh_key, tls_public_key: &tls_key, ttl: None, route_to_cluster: "" };
    s.login(user, &Secret::new(password.into()), params, "192.0.2.7:5000")
        .map(|c| c.username)
        .map_err(|e| e.to_string())
}

fn assert_locked(msg: &str, user: &str) {
    assert!(msg.starts_with(&format!("user {user} is locked until ")), "{msg}");
    assert!(
        msg.ends_with(&format!("UTC after 5 failed logins; try again then or ask an admin to run 'tctl users unlock {user}'")),
        "{msg}"
    );
}

#[test]
fn five_failures_lock_the_user_even_with_the_right_password_until_unlocked() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path(), "");
    for i in 1..=4 {
        assert_eq!(login(&s, "alice", "wrong").unwrap_err(), INVALID_LOGIN, "failure {i}");
    }
    // The fifth failure locks, and says so.
    assert_locked(&login(&s, "alice", "wrong").unwrap_err(), "alice");
    // While locked, even the right password is refused, with the same message.
    let e = login(&s, "alice", PASSWORD).unwrap_err();
    assert_locked(&e, "alice");
    let locks = s.list_user_locks().unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!((locks[0].username.as_str(), locks[0].failures), ("alice", 5));
    let left = locks[0].locked_until - portcullis_auth::state::now();
    assert!(left > time::Duration::minutes(19) && left <= time::Duration::minutes(20), "20 minutes by default: {left}");

    // Audited: the failed logins carry the lock.
    let events = s.audit.search("user.login", 0).unwrap();
    assert_eq!(events.len(), 6);
    assert!(events[..4].iter().all(|e| e["success"] == false && e.get("locked_until").is_none()));
    assert!(events[4..].iter().all(|e| e["locked_until"].as_str().is_some_and(|t| t.ends_with("UTC"))), "{events:?}");

    // An admin lifts it; the right password works again, the failures are forgotten.
    assert!(s.unlock_user("alice", "admin").unwrap());
    assert!(s.list_user_locks().unwrap().is_empty());
    assert_eq!(login(&s, "alice", PASSWORD).unwrap(), "alice");
    let unlock = s.audit.search("user.unlock", 0).unwrap();
    assert_eq!(unlock.len(), 1);
    assert_eq!((unlock[0]["user"].as_str(), unlock[0]["by"].as_str(), unlock[0]["was_locked"].as_bool()), (Some("alice"), Some("admin"), Some(true)));
    for _ in 0..4 {
        assert_eq!(login(&s, "alice", "wrong").unwrap_err(), INVALID_LOGIN, "the count starts afresh");
    }
}

#[test]
fn a_guess_in_flight_when_the_lock_falls_is_answered_like_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path(), "");
    for _ in 0..5 {
        let _ = login(&s, "alice", "wrong");
    }
    // A wrong guess that was already hashing when the fifth failure locked the user records
    // its failure afterwards: it gets the lock, not "invalid", and does not grow the count,
    // so it reads exactly like a right guess refused by the lock.
    let late = s.record_login_failure("alice").unwrap().expect("the lock in force");
    assert_eq!(late.failures, 5);
    assert_eq!(s.list_user_locks().unwrap()[0].failures, 5);
    assert_locked(&login(&s, "alice", PASSWORD).unwrap_err(), "alice");
}

#[test]
fn a_success_clears_the_count_and_a_lock_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path(), "  lockout: {max_failures: 2, window: 1m, duration: 2s}\n");
    assert!(login(&s, "alice", "wrong").is_err());
    assert_eq!(login(&s, "alice", PASSWORD).unwrap(), "alice");
    // One failure before the success is forgotten: one more does not lock.
    assert_eq!(login(&s, "alice", "wrong").unwrap_err(), INVALID_LOGIN);
    let e = login(&s, "alice", "wrong").unwrap_err();
    assert!(e.starts_with("user alice is locked until") && e.contains("after 2 failed logins"), "{e}");
    assert!(login(&s, "alice", PASSWORD).is_err());
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(login(&s, "alice", PASSWORD).unwrap(), "alice", "the lock lasts `duration` only");
    assert_eq!(s.sweep_login_attempts().unwrap(), 0, "the success removed the record");
}

#[test]
fn the_lock_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("backend");
    {
        let s = state_on(dir.path(), "", Arc::new(SledBackend::open(&db).unwrap()));
        for _ in 0..5 {
            let _ = login(&s, "alice", "wrong");
        }
    }
    let s = state_on(dir.path(), "", Arc::new(SledBackend::open(&db).unwrap()));
    assert_locked(&login(&s, "alice", PASSWORD).unwrap_err(), "alice");
}

#[test]
fn unknown_users_get_the_same_answers_and_the_same_argon2_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path(), "");
    let before = s.passwords.runs();
    let unknown = login(&s, "mallory", "guess").unwrap_err();
    assert_eq!(s.passwords.runs(), before + 1, "an unknown user is checked against the dummy hash");
    let real = login(&s, "alice", "guess").unwrap_err();
    assert_eq!(s.passwords.runs(), before + 2);
    assert_eq!(unknown, real);
    assert_eq!(unknown, INVALID_LOGIN);
    // Unknown names lock the same way, so a lock tells nothing either.
    for _ in 0..4 {
        let _ = login(&s, "mallory", "guess");
        let _ = login(&s, "alice", "guess");
    }
    let (u, r) = (login(&s, "mallory", "guess").unwrap_err(), login(&s, "alice", "guess").unwrap_err());
    assert_locked(&u, "mallory");
    assert_eq!(u.replace("mallory", "X").split(" until ").next(), r.replace("alice", "X").split(" until ").next());
    // A locked name costs no argon2 run at all.
    let runs = s.passwords.runs();
    let _ = login(&s, "alice", PASSWORD);
    assert_eq!(s.passwords.runs(), runs);
}

#[test]
fn password_hashing_is_bounded_and_refuses_beyond_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(state(dir.path(), "  password_hashing: {max_concurrent: 1, max_queued: 1}\n  lockout: {max_failures: 0}\n"));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || s.check_password(&format!("user{i}"), &Secret::new("guess".into())))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|r| matches!(r, Err(AuthError::TooManyRequests { .. }))).collect();
    assert!(!busy.is_empty(), "16 at once with room for 2 must refuse some");
    let status = tonic::Status::from(results.into_iter().find_map(|r| match r {
        Err(e @ AuthError::TooManyRequests { .. }) => Some(e),
        _ => None,
    }).unwrap());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "too many login attempts in progress; try again later");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
}

/// The gRPC side: `Join` is rate limited per address; `ListUserLocks` and `UnlockUser` are
/// admin calls.
#[tokio::test]
async fn join_rate_limit_and_the_unlock_calls() {
    portcullis_rpc::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path(), "  join_rate_limit: {burst: 2, per_second: 0.2}\n");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(portcullis_auth::run(settings, listener, async move {
        let _ = rx.await;
    }));
    let id_path = portcullis_auth::admin_identity_path(dir.path());
    for _ in 0..200 {
        if id_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let join = || portcullis_rpc::join::join(&addr, Trust::Insecure, Secret::new("no-such-token".into()), "node", "n1", &[]);
    for _ in 0..2 {
        let e = join().await.unwrap_err().to_string();
        assert!(!e.contains("too many"), "within the burst: {e}");
    }
    let e = join().await.unwrap_err().to_string();
    assert!(e.contains("too many join requests from 127.0.0.1; try again in 5s"), "{e}");

    let id = Identity::load(&id_path).unwrap();
    let ch = portcullis_rpc::connect(&addr, &ClientTls::from_identity(&id, AUTH_SERVER_NAME)).await.unwrap();
    let mut admin = AuthClient::new(ch);
    assert!(admin.list_user_locks(ListUserLocksRequest {}).await.unwrap().into_inner().locks.is_empty());
    let r = admin.unlock_user(UnlockUserRequest { username: "bob".into() }).await.unwrap().into_inner();
    assert!(!r.was_locked);
    let e = admin.unlock_user(UnlockUserRequest { username: " ".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
