//! Issue 11 (items 5 and 8): leaf names and invite tokens at validation, host CAs scoped per
//! leaf at login, and the placeholder principal of users without logins.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis_auth::AuthState;
use portcullis_auth::users::CertParams;
use portcullis_config::{AuthSettings, CommonFlags, FileConfig};
use portcullis_pki::{ssh, x509};
use portcullis_proto::auth::{CertAuthorities, UserCerts, ValidateTrustedClusterRequest};
use portcullis_storage::MemoryBackend;
use portcullis_types::{SystemRole, User};

fn state(dir: &std::path::Path, name: &str) -> AuthState {
    let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: {name}\n", dir.join(name).display());
    let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
    AuthState::open(&settings, Arc::new(MemoryBackend::new())).unwrap()
}

fn invite(root: &AuthState) -> String {
    root.create_token(vec![SystemRole::TrustedCluster], None, None, Default::default()).unwrap().token().to_string()
}

fn validate(root: &AuthState, token: &str, name: &str, cas: CertAuthorities) -> Result<(), String> {
    root.validate_trusted_cluster(&ValidateTrustedClusterRequest {
        token: token.into(),
        leaf_cluster_name: name.into(),
        leaf_cas: Some(cas),
        remote_addr: "127.0.0.1:1".into(),
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn login(s: &AuthState, user: &User) -> UserCerts {
    let key = ssh::generate_key().unwrap();
    let tkey = x509::generate_key().unwrap();
    s.user_certs(
        user,
        CertParams {
            username: user.name(),
            ssh_public_key: &ssh::public_key_line(key.public_key()).unwrap(),
            tls_public_key: &x509::public_key_der(&tkey),
            ttl: None,
            route_to_cluster: "",
        },
    )
    .unwrap()
}

#[test]
fn leaf_names_must_be_dns_names_and_not_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = state(dir.path(), "root.example.com");
    let attacker = state(dir.path(), "attacker");
    let token = invite(&root);
    for (name, why) in [
        ("evil/../x", "'/' is not allowed"),
        ("*", "'*' is not allowed"),
        ("evil a", "' ' is not allowed"),
        ("..", "empty label"),
        ("EVIL", "'E' is not allowed"),
    ] {
        let e = validate(&root, &token, name, attacker.own_cas().unwrap()).unwrap_err();
        assert!(e.contains(&format!("invalid cluster name {name:?}")) && e.contains(why), "{name}: {e}");
    }
    let e = validate(&root, &token, "root.example.com", attacker.own_cas().unwrap()).unwrap_err();
    assert!(e.contains("root cluster's name"), "{e}");
    // A name inside the root's (or a leaf's) namespace would share its `*.<name>` scope.
    let e = validate(&root, &token, "x.root.example.com", attacker.own_cas().unwrap()).unwrap_err();
    assert!(e.contains("overlaps cluster \"root.example.com\""), "{e}");
    assert!(root.list_remote_clusters().unwrap().is_empty(), "nothing was registered");
    assert!(root.leaf_host_cas().unwrap().is_empty());
}

#[test]
fn one_invite_token_registers_one_cluster_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = state(dir.path(), "root");
    let leaf_a = state(dir.path(), "leaf-a");
    let leaf_b = state(dir.path(), "leaf-b");
    let token = invite(&root);
    validate(&root, &token, "leaf-a", leaf_a.own_cas().unwrap()).unwrap();
    // The same leaf with the same CAs may validate again (trust re-established).
    validate(&root, &token, "leaf-a", leaf_a.own_cas().unwrap()).unwrap();
    // The token's holder cannot register a second name, with its own CAs or another's.
    for cas in [leaf_a.own_cas().unwrap(), leaf_b.own_cas().unwrap()] {
        let e = validate(&root, &token, "evil-a", cas).unwrap_err();
        assert!(e.contains("already used by leaf cluster \"leaf-a\"") && e.contains("\"evil-a\""), "{e}");
    }
    // Nor overwrite leaf B with another token: B's name is taken with other keys.
    validate(&root, &invite(&root), "leaf-b", leaf_b.own_cas().unwrap()).unwrap();
    let e = validate(&root, &invite(&root), "leaf-b", leaf_a.own_cas().unwrap()).unwrap_err();
    assert!(e.contains("already trusted with other keys"), "{e}");
    let e = validate(&root, &invite(&root), "sub.leaf-b", leaf_a.own_cas().unwrap()).unwrap_err();
    assert!(e.contains("overlaps cluster \"leaf-b\""), "{e}");
    let names: Vec<String> = root.list_remote_clusters().unwrap().into_iter().map(|r| r.metadata.name).collect();
    assert_eq!(names, ["leaf-a", "leaf-b"]);
    // The record of a token's use never holds the token itself.
    for (k, v) in root.backend.list("trust_token_uses/").unwrap() {
        assert!(!k.contains(&token) && !String::from_utf8_lossy(&v).contains(&token));
    }
}

#[test]
fn login_hands_out_leaf_host_cas_per_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let root = state(dir.path(), "root");
    let leaf = state(dir.path(), "leaf");
    validate(&root, &invite(&root), "leaf", leaf.own_cas().unwrap()).unwrap();
    let user = User::new("alice", vec!["access".into()], Default::default());
    root.put_user(&user).unwrap();
    let certs = login(&root, &user);
    let leaf_host = leaf.own_cas().unwrap().ssh_host_ca;
    assert_eq!(certs.cas.unwrap().ssh_host_ca, root.own_cas().unwrap().ssh_host_ca, "only the root's own host CA unscoped");
    assert_eq!(certs.leaf_host_cas.len(), 1);
    assert_eq!(certs.leaf_host_cas[0].cluster_name, "leaf");
    assert_eq!(certs.leaf_host_cas[0].ssh_host_ca, leaf_host);
}

#[test]
fn users_without_logins_get_a_placeholder_principal() {
    let dir = tempfile::tempdir().unwrap();
    let root = state(dir.path(), "root");
    let user = User::new("audrey", vec!["auditor".into()], Default::default());
    root.put_user(&user).unwrap();
    let certs = login(&root, &user);
    let cert = ssh::parse_certificate(&certs.ssh_cert).unwrap();
    let p = cert.valid_principals();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with(ssh::NO_LOGIN_PREFIX) && ssh::is_no_login(&p[0]), "{p:?}");
    // The placeholder is no login the auth service grants.
    let d = root
        .authorize_ssh(
            &portcullis_proto::auth::AuthorizeSshRequest {
                ssh_cert: certs.ssh_cert.clone(),
                login: p[0].clone(),
                source: "proxy".into(),
                ..Default::default()
            },
            portcullis_auth::access::Asker::Proxy,
        )
        .unwrap();
    assert!(!d.allowed, "{}", d.reason);
}

/// A root host named under a leaf's name would be vouched for by that leaf's host CA
/// (`@cert-authority *.<leaf>` in known_hosts), so join refuses such names.
#[test]
fn root_hosts_may_not_take_names_under_a_leafs_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = state(dir.path(), "root.example.com");
    let leaf = state(dir.path(), "leaf.example.com");
    validate(&root, &invite(&root), "leaf.example.com", leaf.own_cas().unwrap()).unwrap();
    let token = root.create_token(vec![SystemRole::Node], None, None, Default::default()).unwrap().token().to_string();
    let join = |nodename: &str, principals: &[&str]| {
        root.join(
            &portcullis_proto::auth::JoinRequest {
                token: token.clone(),
                role: "node".into(),
                nodename: nodename.into(),
                tls_public_key: x509::public_key_der(&x509::generate_key().unwrap()),
                ssh_public_key: ssh::public_key_line(ssh::generate_key().unwrap().public_key()).unwrap(),
                additional_principals: principals.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            },
            "127.0.0.1:1",
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    for name in ["db.leaf.example.com", "leaf.example.com"] {
        let e = join(name, &[]).unwrap_err();
        assert!(e.contains("lies under the name of leaf cluster \"leaf.example.com\""), "{name}: {e}");
    }
    let e = join("db-1", &["x.leaf.example.com"]).unwrap_err();
    assert!(e.contains("additional principal") && e.contains("leaf cluster"), "{e}");
    join("db.example.com", &[]).unwrap();
}

/// The other way round: a leaf may not take a name that a live root host lies under.
#[test]
fn a_leaf_may_not_be_named_over_a_root_host() {
    let dir = tempfile::tempdir().unwrap();
    let root = state(dir.path(), "root.example.com");
    let leaf = state(dir.path(), "corp.example.com");
    root.heartbeat(
        &portcullis_proto::auth::HeartbeatRequest {
            kind: "node".into(),
            host_id: "11111111-1111-4111-8111-111111111111".into(),
            hostname: "db.corp.example.com".into(),
            addr: "127.0.0.1:3022".into(),
            ..Default::default()
        },
        &portcullis_auth::nodes::Observed {
            peer_ip: Some("127.0.0.1".parse().unwrap()),
            cert_names: vec!["db.corp.example.com".into()],
        },
    )
    .unwrap();
    let e = validate(&root, &invite(&root), "corp.example.com", leaf.own_cas().unwrap()).unwrap_err();
    assert!(e.contains("node \"db.corp.example.com\"") && e.contains("named under it"), "{e}");
    assert!(root.list_remote_clusters().unwrap().is_empty());
}
