//! Several auth replicas on one backend (issue 12): each read-then-write that two replicas
//! could interleave is atomic in the backend. Every test runs many threads over two
//! `AuthState`s sharing a memory or a sled backend, and two on their own connections to
//! one throwaway PostgreSQL server (when PostgreSQL is installed), and counts winners.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use portcullis_auth::nodes::Observed;
use portcullis_auth::{AuthError, AuthState};
use portcullis_config::{AuthSettings, CommonFlags, FileConfig};
use portcullis_proto::auth::{CertAuthorities, HeartbeatRequest, ValidateTrustedClusterRequest};
use portcullis_storage::{Backend, MemoryBackend, SledBackend};
use portcullis_types::SystemRole;

const THREADS: usize = 16;
const CLUSTER: &str = "races.example.com";

fn settings(dir: &std::path::Path, kek: &std::path::Path, extra: &str) -> AuthSettings {
    let yaml = format!(
        "teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: {CLUSTER}\n  ca_key_encryption_key_file: {}\n{extra}",
        dir.display(),
        kek.display()
    );
    AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap()
}

#[path = "../../../shared/storage/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

/// One backend a race runs on, as two replicas see it: the same handle in one process
/// (memory, sled), or two connections to one database (PostgreSQL).
struct Setup {
    name: &'static str,
    backends: [Arc<dyn Backend>; 2],
    _pg: Option<pg::PgServer>,
    _dir: tempfile::TempDir,
}

fn setups() -> Vec<Setup> {
    let dir = tempfile::tempdir().unwrap();
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let sled: Arc<dyn Backend> = Arc::new(SledBackend::open(&dir.path().join("sled")).unwrap());
    let mut out = vec![
        Setup { name: "memory", backends: [memory.clone(), memory], _pg: None, _dir: tempfile::tempdir().unwrap() },
        Setup { name: "sled", backends: [sled.clone(), sled], _pg: None, _dir: dir },
    ];
    if let Some(server) = pg::PgServer::start() {
        let conn = server.conn_string("disable");
        let connect = || Arc::new(portcullis_storage::PostgresBackend::connect(&conn).unwrap()) as Arc<dyn Backend>;
        let backends = [connect(), connect()];
        out.push(Setup { name: "postgresql", backends, _pg: Some(server), _dir: tempfile::tempdir().unwrap() });
    }
    out
}

/// Two replicas, one on each of the setup's backends, each with its own data directory and
/// one shared KEK.
fn replicas(dir: &std::path::Path, setup: &Setup, extra: &str) -> Vec<Arc<AuthState>> {
    let kek = dir.join("shared-kek");
    (0..2)
        .map(|i| {
            let s = settings(&dir.join(format!("r{i}")), &kek, extra);
            Arc::new(AuthState::open(&s, setup.backends[i].clone()).unwrap())
        })
        .collect()
}

/// Runs `f(i, replica)` on THREADS threads released together; returns the results in order.
fn race<T: Send + 'static>(
    states: &[Arc<AuthState>],
    f: impl Fn(usize, &AuthState) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (f, start, s) = (f.clone(), start.clone(), states[i % states.len()].clone());
            std::thread::spawn(move || {
                start.wait();
                f(i, &s)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn beat(host_id: &str, hostname: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        kind: "node".into(),
        host_id: host_id.into(),
        hostname: hostname.into(),
        addr: "127.0.0.1:3022".into(),
        ..Default::default()
    }
}

fn seen(name: &str, host_id: &str) -> Observed {
    Observed::new(Some(std::net::Ipv4Addr::LOCALHOST.into()), vec![name.into(), host_id.into()])
}

fn fake_cas(tag: &str) -> CertAuthorities {
    CertAuthorities {
        tls_ca_pem: vec![format!("tls-{tag}")],
        ssh_user_ca: vec![format!("user-{tag}")],
        ssh_host_ca: vec![format!("host-{tag}")],
    }
}

#[test]
fn replicas_starting_at_once_make_one_set_of_cas() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("shared-kek");
        let start = Arc::new(Barrier::new(8));
        let opened: Vec<_> = (0..8)
            .map(|i| {
                let b = setup.backends[i % 2].clone();
                let (start, s) = (start.clone(), settings(&dir.path().join(format!("r{i}")), &kek, ""));
                std::thread::spawn(move || {
                    start.wait();
                    AuthState::open(&s, b)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        let first = &opened[0];
        for s in &opened {
            assert_eq!(s.user_ca.public_line().unwrap(), first.user_ca.public_line().unwrap(), "{name}");
            assert_eq!(s.host_ca.public_line().unwrap(), first.host_ca.public_line().unwrap(), "{name}");
            assert_eq!(s.tls_ca.cert_pem(), first.tls_ca.cert_pem(), "{name}");
        }
        assert_eq!(setup.backends[1].list("cas/").unwrap().len(), 3, "{name}: one record per CA");
    }
}

#[test]
fn replicas_with_different_keks_starting_at_once_leave_one_consistent_database() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let start = Arc::new(Barrier::new(8));
    let results: Vec<_> = (0..8)
        .map(|i| {
            let kek = dir.path().join(format!("kek-{i}"));
            let (b, start, s) = (backend.clone(), start.clone(), settings(&dir.path().join(format!("r{i}")), &kek, ""));
            std::thread::spawn(move || {
                start.wait();
                AuthState::open(&s, b).map(|_| kek)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "one key-encryption key wins: {:?}", results.iter().map(|r| r.as_ref().map(|_| ()).map_err(|e| e.to_string())).collect::<Vec<_>>());
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        // Started before the winner claimed the database: its own key is refused. Started after:
        // it finds sealed keys and no key file of its own, and must not make a new key.
        let e = e.to_string();
        assert!(
            e.contains("sealed with a different key-encryption key") || e.contains("does not exist; restore it"),
            "{e}"
        );
    }
    // Every CA opens with the winner's key: no CA was sealed under a losing one.
    AuthState::open(&settings(&dir.path().join("again"), winners[0], ""), backend).unwrap();
}

#[test]
fn sixteen_hosts_claiming_one_node_name_one_wins() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let states = replicas(dir.path(), &setup, "");
        let results = race(&states, |i, s| {
            let host = format!("host-{i}");
            s.heartbeat(&beat(&host, "db-1"), &seen("db-1", &host))
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{name}: {results:?}");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(e, AuthError::AlreadyExists(_)) && e.to_string().contains("is already held by host"), "{name}: {e}");
        }
        for s in &states {
            let nodes = s.list_nodes().unwrap();
            assert_eq!(nodes.len(), 1, "{name}");
            assert_eq!(s.resolve_node("db-1", 0).unwrap().metadata.name, nodes[0].metadata.name);
        }
    }
}

#[test]
fn a_delayed_older_heartbeat_never_overwrites_a_newer_one() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let states = replicas(dir.path(), &setup, "");
        let base = time::OffsetDateTime::now_utc();
        // Received in a shuffled order by two replicas: the one received last must win.
        let results = race(&states, move |i, s| {
            let seq = (i * 7) % THREADS;
            let mut req = beat("h1", "web-1");
            req.labels = [("seq".to_string(), seq.to_string())].into();
            s.heartbeat_at(&req, &seen("web-1", "h1"), base + time::Duration::milliseconds(seq as i64))
        });
        assert!(results.iter().all(Result::is_ok), "{name}: {results:?}");
        let stored = states[0].get_node("h1").unwrap().unwrap();
        assert_eq!(stored.metadata.labels["seq"], (THREADS - 1).to_string(), "{name}");
        // And one that arrives late, through the other replica, changes nothing.
        let mut old = beat("h1", "web-1");
        old.labels = [("seq".to_string(), "old".to_string())].into();
        states[1].heartbeat_at(&old, &seen("web-1", "h1"), base - time::Duration::seconds(5)).unwrap();
        assert_eq!(states[0].get_node("h1").unwrap().unwrap(), stored, "{name}");
    }
}

#[test]
fn failed_logins_through_two_replicas_are_all_counted() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("  lockout: {{max_failures: {THREADS}, window: 30m, duration: 20m}}\n");
        let states = replicas(dir.path(), &setup, &extra);
        let results = race(&states, |_, s| s.record_login_failure("alice").unwrap());
        // Only the last of the 16 failures reaches the limit: with any lost update none does.
        let lock = states[1].user_lock("alice").unwrap().unwrap_or_else(|| panic!("{name}: not locked: {results:?}"));
        assert_eq!(lock.failures, THREADS as u32, "{name}");
        assert_eq!(results.iter().filter(|r| r.is_some()).count(), 1, "{name}: the lock starts once");
        // A successful password check racing the lock never lifts it.
        assert_eq!(states[0].clear_login_failures("alice").unwrap().map(|l| l.failures), Some(THREADS as u32));
        assert!(states[1].user_lock("alice").unwrap().is_some(), "{name}");
    }
}

#[test]
fn concurrent_trust_establishment_for_one_name_has_one_winner() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let states = replicas(dir.path(), &setup, "");
        let tokens: Vec<String> = (0..THREADS)
            .map(|_| {
                let t = states[0].create_token(vec![SystemRole::TrustedCluster], None, None, BTreeMap::new()).unwrap();
                t.token().to_string()
            })
            .collect();
        // Sixteen different clusters, each with its own token, all calling themselves "leaf".
        let results = race(&states, move |i, s| {
            s.validate_trusted_cluster(&ValidateTrustedClusterRequest {
                token: tokens[i].clone(),
                leaf_cluster_name: "leaf".into(),
                leaf_cas: Some(fake_cas(&i.to_string())),
                remote_addr: String::new(),
            })
            .map(|_| i)
        });
        let winners: Vec<usize> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(winners.len(), 1, "{name}: {results:?}");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(e.to_string().contains("is already trusted with other keys"), "{name}: {e}");
        }
        let ca = states[1].leaf_tls_cas().unwrap();
        assert_eq!(ca.len(), 1, "{name}");
        assert_eq!(ca[0].tls_ca_pem, vec![format!("tls-{}", winners[0])], "{name}: the winner's keys are stored");
    }
}

#[test]
fn one_invite_token_registers_one_name_under_concurrency() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let states = replicas(dir.path(), &setup, "");
        let token = states[0].create_token(vec![SystemRole::TrustedCluster], None, None, BTreeMap::new()).unwrap();
        let token = token.token().to_string();
        let results = race(&states, move |i, s| {
            s.validate_trusted_cluster(&ValidateTrustedClusterRequest {
                token: token.clone(),
                leaf_cluster_name: format!("leaf{i}"),
                leaf_cas: Some(fake_cas(&i.to_string())),
                remote_addr: String::new(),
            })
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{name}: {results:?}");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(e.to_string().contains("this invite token was already used by leaf cluster"), "{name}: {e}");
        }
        // The losers left nothing behind: one leaf, its CAs, its record.
        assert_eq!(states[1].leaf_tls_cas().unwrap().len(), 1, "{name}");
        assert_eq!(states[1].list_remote_clusters().unwrap().len(), 1, "{name}");
    }
}

#[test]
fn tunnel_reports_through_replicas_keep_the_newest_heartbeat_and_label_edits() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let states = replicas(dir.path(), &setup, "");
        let token = states[0].create_token(vec![SystemRole::TrustedCluster], None, None, BTreeMap::new()).unwrap();
        states[0]
            .validate_trusted_cluster(&ValidateTrustedClusterRequest {
                token: token.token().into(),
                leaf_cluster_name: "leaf".into(),
                leaf_cas: Some(fake_cas("x")),
                remote_addr: String::new(),
            })
            .unwrap();
        let base = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let results = race(&states, move |i, s| {
            if i == 5 {
                // An admin labels the leaf while proxies report.
                let mut rc = s.get_remote_cluster("leaf").unwrap().unwrap();
                rc.metadata.labels.insert("env".into(), "prod".into());
                return s.update_remote_cluster(&rc);
            }
            let at = base + time::Duration::seconds(((i * 7) % THREADS) as i64);
            s.report_tunnels_at(&format!("proxy-{i}"), &[("leaf".to_string(), 1)].into(), at)
        });
        assert!(results.iter().all(Result::is_ok), "{name}: {results:?}");
        let rc = states[1].get_remote_cluster("leaf").unwrap().unwrap();
        assert_eq!(rc.metadata.labels.get("env").map(String::as_str), Some("prod"), "{name}: the label edit is kept");
        let newest = (0..THREADS).filter(|i| *i != 5).map(|i| (i * 7) % THREADS).max().unwrap();
        assert_eq!(rc.status.last_heartbeat, Some(base + time::Duration::seconds(newest as i64)), "{name}");
    }
}

#[test]
fn tctl_create_of_one_name_through_replicas_creates_it_once() {
    for setup in setups() {
        let name = setup.name;
        let dir = tempfile::tempdir().unwrap();
        let states = replicas(dir.path(), &setup, "");
        let results = race(&states, |i, s| {
            let role = serde_json::json!({
                "kind": "role", "version": "v7", "metadata": {"name": "dev"},
                "spec": {"allow": {"logins": [format!("login{i}")]}}
            });
            s.upsert_resource(&role.to_string(), true)
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{name}: {results:?}");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(e, AuthError::AlreadyExists(_)), "{name}: {e}");
        }
    }
}

#[test]
fn data_written_through_one_replica_is_read_through_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setups().remove(0);
    let backend = setup.backends[0].clone();
    let states = replicas(dir.path(), &setup, "");
    states[0].put_user(&portcullis_types::User::new("bob", vec!["access".into()], Default::default())).unwrap();
    states[0].set_password("bob", &portcullis_pki::Secret::new("bobs-password".into())).unwrap();
    let u = states[1].check_password("bob", &portcullis_pki::Secret::new("bobs-password".into())).unwrap();
    assert_eq!(u.name(), "bob");
    // Deleted through one: gone through the other, password included.
    states[1].delete_user("bob").unwrap();
    assert!(states[0].get_user("bob").unwrap().is_none());
    assert!(backend.get("passwords/bob").unwrap().is_none());
}
