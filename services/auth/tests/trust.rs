//! Trusted clusters inside the auth service, without the network: a root and a leaf state
//! in memory, trust established by hand-carrying the validation request and answer.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis_auth::AuthState;
use portcullis_auth::access::Asker;
use portcullis_auth::trust::{ClusterCas, TOKEN_REJECTED};
use portcullis_auth::users::CertParams;
use portcullis_config::{AuthSettings, CommonFlags, FileConfig};
use portcullis_pki::{Secret, ssh, x509};
use portcullis_proto::auth::{AuthorizeSshRequest, HeartbeatRequest, ValidateTrustedClusterRequest};
use portcullis_storage::MemoryBackend;
use portcullis_types::{Resource, SystemRole, TrustedCluster, User};

fn state(dir: &std::path::Path, name: &str) -> AuthState {
    let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: {name}\n", dir.join(name).display());
    let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
    AuthState::open(&settings, Arc::new(MemoryBackend::new())).unwrap()
}

/// What auth sees of a node on this host whose certificate names `name`.
fn observed(name: &str) -> portcullis_auth::nodes::Observed {
    portcullis_auth::nodes::Observed::new(Some(std::net::Ipv4Addr::LOCALHOST.into()), vec![name.to_string()])
}

fn tc(yaml: &str) -> TrustedCluster {
    match portcullis_types::parse_yaml_documents(yaml).unwrap().remove(0) {
        Resource::TrustedCluster(t) => t,
        other => panic!("{other:?}"),
    }
}

fn put_role(s: &AuthState, yaml: &str) {
    match portcullis_types::parse_yaml_documents(yaml).unwrap().remove(0) {
        Resource::Role(r) => s.put_role(&r).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Root and leaf with trust established through `role_map`, a leaf node `n1` (env=prod).
fn trusted(dir: &std::path::Path, role_map: &str) -> (AuthState, AuthState, String) {
    let root = state(dir, "root");
    let leaf = state(dir, "leaf");
    let token = root.create_token(vec![SystemRole::TrustedCluster], None, None, Default::default()).unwrap();
    let resp = root
        .validate_trusted_cluster(&ValidateTrustedClusterRequest {
            token: token.token().into(),
            leaf_cluster_name: "leaf".into(),
            leaf_cas: Some(leaf.own_cas().unwrap()),
            remote_addr: String::new(),
        })
        .unwrap();
    assert_eq!(resp.root_cluster_name, "root");
    let t = tc(&format!("kind: trusted_cluster\nversion: v2\nmetadata: {{name: root}}\nspec:\n  token: x\n  role_map:\n{role_map}"));
    leaf.store_trusted_cluster(&t, Some(ClusterCas::from_proto(&resp.root_cas.unwrap()))).unwrap();
    leaf.heartbeat(&HeartbeatRequest {
        kind: "node".into(),
        host_id: "node-1-id".into(),
        hostname: "n1".into(),
        addr: "127.0.0.1:1".into(),
        labels: [("env".to_string(), "prod".to_string())].into(),
        ..Default::default()
    }, &observed("n1"))
    .unwrap();
    (root, leaf, token.token().to_string())
}

fn root_user_cert(root: &AuthState, name: &str, roles: &[&str], logins: &[&str]) -> String {
    let mut u = User::new(name, roles.iter().map(|r| r.to_string()).collect(), Default::default());
    u.spec.traits.insert("logins".into(), logins.iter().map(|l| l.to_string()).collect());
    u.spec.traits.insert("team".into(), vec!["ops".into()]);
    root.put_user(&u).unwrap();
    let key = ssh::generate_key().unwrap();
    let tkey = x509::generate_key().unwrap();
    let certs = root
        .user_certs(
            &u,
            CertParams {
                username: name,
                ssh_public_key: &ssh::public_key_line(key.public_key()).unwrap(),
                tls_public_key: &x509::public_key_der(&tkey),
                ttl: None,
                route_to_cluster: "",
            },
        )
        .unwrap();
    certs.ssh_cert
}

fn ask(leaf: &AuthState, cert: &str, login: &str) -> portcullis_proto::auth::AuthorizeSshResponse {
    leaf.authorize_ssh(
        &AuthorizeSshRequest { ssh_cert: cert.into(), login: login.into(), source: "node".into(), ..Default::default() },
        Asker::Node { host_id: "node-1-id" },
    )
    .unwrap()
}

const VISITOR: &str = "kind: role\nversion: v7\nmetadata: {name: visitor}\nspec:\n  allow:\n    logins: [visitor, '{{external.team}}']\n    node_labels: {'*': '*'}\n";

#[test]
fn role_map_forms_decide_access_on_the_leaf() {
    let dir = tempfile::tempdir().unwrap();
    for (map, roles, allowed) in [
        ("    - remote: access\n      local: [visitor]\n", vec!["access"], true),
        ("    - remote: '*'\n      local: [visitor]\n", vec!["anything"], true),
        ("    - remote: 'cluster-*'\n      local: [visitor]\n", vec!["cluster-admin"], true),
        ("    - remote: 'cluster-*'\n      local: [visitor]\n", vec!["access"], false),
        ("    - remote: '^dev-(.*)$'\n      local: ['$1']\n", vec!["dev-visitor"], true),
        ("    - remote: '^dev-(.*)$'\n      local: ['$1']\n", vec!["dev-nobody"], false),
    ] {
        let (root, leaf, _) = trusted(dir.path(), map);
        put_role(&leaf, VISITOR);
        for r in &roles {
            put_role(&root, &format!("kind: role\nversion: v7\nmetadata: {{name: {r}}}\nspec:\n  allow:\n    logins: ['{{{{internal.logins}}}}']\n"));
        }
        let cert = root_user_cert(&root, "alice", &roles, &["visitor", "ops"]);
        let d = ask(&leaf, &cert, "visitor");
        assert_eq!(d.allowed, allowed, "map {map} roles {roles:?}: {}", d.reason);
        if allowed {
            assert_eq!(d.roles, vec!["visitor"], "the mapped role is reported");
            // {{external.team}} expands from the root user's traits.
            assert!(ask(&leaf, &cert, "ops").allowed);
        } else {
            assert!(d.reason.contains("map to no role") || d.reason.contains("not allowed"), "{}", d.reason);
        }
    }
}

#[test]
fn disabling_trust_refuses_root_certificates_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (root, leaf, _) = trusted(dir.path(), "    - remote: access\n      local: [visitor]\n");
    put_role(&leaf, VISITOR);
    let cert = root_user_cert(&root, "alice", &["access"], &["visitor"]);
    assert!(ask(&leaf, &cert, "visitor").allowed);
    let mut t = leaf.get_trusted_cluster("root").unwrap().unwrap();
    t.spec.enabled = false;
    leaf.store_trusted_cluster(&t, None).unwrap();
    let d = ask(&leaf, &cert, "visitor");
    assert!(!d.allowed && d.reason.contains("disabled"), "{}", d.reason);
    assert!(leaf.trusted_cluster_targets().unwrap().iter().all(|t| !t.enabled));
    assert!(!leaf.cert_authorities().unwrap().ssh_user_ca.iter().any(|c| root.own_cas().unwrap().ssh_user_ca.contains(c)));
    t.spec.enabled = true;
    leaf.store_trusted_cluster(&t, None).unwrap();
    assert!(ask(&leaf, &cert, "visitor").allowed);
}

#[test]
fn leaf_certificates_are_never_root_identities() {
    let dir = tempfile::tempdir().unwrap();
    let (root, leaf, _) = trusted(dir.path(), "    - remote: access\n      local: [access]\n");
    // A leaf user's certificate, presented to the root's node decision.
    let leaf_cert = root_user_cert(&leaf, "mallory", &["access"], &["root"]);
    root.heartbeat(&HeartbeatRequest { kind: "node".into(), host_id: "r1".into(), hostname: "r1".into(), addr: "127.0.0.1:3022".into(), ..Default::default() }, &observed("r1")).unwrap();
    let d = root
        .authorize_ssh(
            &AuthorizeSshRequest { ssh_cert: leaf_cert, login: "root".into(), source: "node".into(), ..Default::default() },
            Asker::Node { host_id: "r1" },
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(d.reason.contains("does not trust"), "{}", d.reason);
    // The root hands out the leaf's host CA only scoped to the leaf (for tsh), never its
    // user CA, and never the host CA in its unscoped set.
    let cas = root.cert_authorities().unwrap();
    let leaf_cas = leaf.own_cas().unwrap();
    assert!(!cas.ssh_host_ca.contains(&leaf_cas.ssh_host_ca[0]));
    assert!(!cas.ssh_user_ca.contains(&leaf_cas.ssh_user_ca[0]));
    let scoped = root.leaf_host_cas().unwrap();
    assert_eq!((scoped[0].cluster_name.as_str(), &scoped[0].ssh_host_ca), ("leaf", &leaf_cas.ssh_host_ca));
}

#[test]
fn validation_refuses_bad_tokens_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let (root, leaf, token) = trusted(dir.path(), "    - remote: access\n      local: [access]\n");
    let req = |token: &str, name: &str, cas| ValidateTrustedClusterRequest {
        token: token.into(),
        leaf_cluster_name: name.into(),
        leaf_cas: Some(cas),
        remote_addr: String::new(),
    };
    let e = root.validate_trusted_cluster(&req("wrong", "leaf2", leaf.own_cas().unwrap())).unwrap_err();
    assert_eq!(e.to_string(), TOKEN_REJECTED);
    // A node token is not a trusted_cluster token.
    let node_token = root.create_token(vec![SystemRole::Node], None, None, Default::default()).unwrap();
    let e = root.validate_trusted_cluster(&req(node_token.token(), "leaf2", leaf.own_cas().unwrap())).unwrap_err();
    assert_eq!(e.to_string(), TOKEN_REJECTED);
    // The root's own name, and a second cluster with the leaf's name but other keys.
    let e = root.validate_trusted_cluster(&req(&token, "root", leaf.own_cas().unwrap())).unwrap_err();
    assert!(e.to_string().contains("root cluster's name"), "{e}");
    let other = state(dir.path(), "leaf-impostor");
    let e = root.validate_trusted_cluster(&req(&token, "leaf", other.own_cas().unwrap())).unwrap_err();
    assert!(e.to_string().contains("already trusted"), "{e}");
    // The real leaf may validate again (re-running tctl create is harmless).
    root.validate_trusted_cluster(&req(&token, "leaf", leaf.own_cas().unwrap())).unwrap();
    let _ = Secret::new(());
}
