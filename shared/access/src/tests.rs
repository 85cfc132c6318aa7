//! Tests of every decision path over hand-built snapshots and real certificates.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_pki::ssh::{self, SshCa, UserCertRequest};
use portcullis_pki::x509::{self, TlsCa, TlsCertRequest, SystemRole};
use portcullis_proto::auth::AuthorizeSshRequest;
use portcullis_types::{Node, RemoteCluster, Role, RoleMapping, RoleSpec};

use crate::*;

struct Cluster {
    name: String,
    user_ca: SshCa,
    tls_ca: TlsCa,
}

impl Cluster {
    fn new(name: &str) -> Self {
        Cluster { name: name.into(), user_ca: SshCa::generate().unwrap(), tls_ca: TlsCa::generate(name).unwrap() }
    }

    /// An SSH user certificate for `user` with `roles`, allowing `logins`.
    fn ssh_cert(&self, user: &str, roles: &[&str], logins: &[&str]) -> String {
        let key = ssh::generate_key().unwrap();
        self.user_ca
            .sign_user_cert(&UserCertRequest {
                public_key: key.public_key().clone(),
                username: user.into(),
                principals: logins.iter().map(|s| s.to_string()).collect(),
                ttl: Duration::from_secs(3600),
                roles: roles.iter().map(|s| s.to_string()).collect(),
                traits: BTreeMap::new(),
                route_to_cluster: self.name.clone(),
                permit_port_forwarding: true,
                permit_agent_forwarding: false,
            })
            .unwrap()
            .to_openssh()
            .unwrap()
    }

    /// A user TLS certificate (DER) for `user` with `roles`.
    fn tls_cert(&self, user: &str, roles: &[&str], system: &str) -> Vec<u8> {
        let key = x509::generate_key().unwrap();
        let pem = self
            .tls_ca
            .issue(&TlsCertRequest {
                public_key_der: x509::public_key_der(&key),
                name: user.into(),
                system_roles: vec![system.into()],
                roles: roles.iter().map(|s| s.to_string()).collect(),
                traits: BTreeMap::new(),
                route_to_cluster: self.name.clone(),
                dns_names: vec![],
                ttl: Duration::from_secs(3600),
            })
            .unwrap();
        x509::pem_to_ders(&pem).unwrap().remove(0)
    }

    fn as_root(&self, active: bool, role_map: Vec<RoleMapping>) -> TrustedRoot {
        TrustedRoot {
            name: self.name.clone(),
            active,
            ssh_user_cas: vec![self.user_ca.public_line().unwrap()],
            ssh_host_cas: vec![],
            tls_cas: vec![self.tls_ca.cert_pem().to_string()],
            role_map,
        }
    }
}

fn role(name: &str, logins: &[&str], labels: &[(&str, &str)]) -> Role {
    let mut spec = RoleSpec::default();
    spec.allow.logins = logins.iter().map(|s| s.to_string()).collect();
    for (k, v) in labels {
        spec.allow.node_labels.insert(k.to_string(), portcullis_types::LabelValues::from(vec![v.to_string()]));
    }
    spec.allow.cluster_labels.insert("*".into(), portcullis_types::LabelValues::from(vec!["*".to_string()]));
    Role::new(name, spec)
}

fn node(id: &str, hostname: &str, addr: &str, env: &str) -> Node {
    let labels = BTreeMap::from([("env".to_string(), env.to_string())]);
    Node::new(id.to_string(), hostname.to_string(), addr.to_string(), labels)
}

/// Leaf cluster `leaf` with roles dev (login dev on env=dev) and ops (root on everything),
/// user alice holding dev, and root cluster `root` trusted with role map admin -> ops.
fn setup() -> (Cluster, Cluster, AccessSnapshot) {
    let leaf = Cluster::new("leaf");
    let root = Cluster::new("root");
    let snap = AccessSnapshot {
        cluster_name: "leaf".into(),
        revision: 7,
        user_cas: vec![leaf.user_ca.public_line().unwrap()],
        tls_cas: vec![leaf.tls_ca.cert_pem().to_string()],
        roles: vec![role("dev", &["dev"], &[("env", "dev")]), role("ops", &["root", "dev"], &[("*", "*")])],
        users: BTreeMap::from([("alice".to_string(), vec!["dev".to_string()])]),
        trusted_roots: vec![root.as_root(true, vec![RoleMapping::new("admin", vec!["ops".into()])])],
        nodes: vec![node("id-1", "db-1", "10.0.0.1:3022", "dev"), node("id-2", "web-1", "10.0.0.2:3022", "prod")],
        ..Default::default()
    };
    (leaf, root, snap)
}

fn ask(snap: &AccessSnapshot, cert: &str, login: &str, node: Option<&Node>) -> portcullis_proto::auth::AuthorizeSshResponse {
    let req = AuthorizeSshRequest { ssh_cert: cert.into(), login: login.into(), node: "db-1".into(), ..Default::default() };
    authorize_ssh(snap, &req, node).unwrap()
}

#[test]
fn own_user_is_allowed_with_the_roles_it_holds() {
    let (leaf, _, snap) = setup();
    let cert = leaf.ssh_cert("alice", &["dev"], &["dev"]);
    let r = ask(&snap, &cert, "dev", Some(&snap.nodes[0]));
    assert!(r.allowed, "{}", r.reason);
    assert_eq!(r.roles, vec!["dev".to_string()]);
    assert_eq!((r.username.as_str(), r.node_id.as_str(), r.node_name.as_str()), ("alice", "id-1", "db-1"));
}

#[test]
fn a_login_the_roles_do_not_grant_is_refused() {
    let (leaf, _, snap) = setup();
    let cert = leaf.ssh_cert("alice", &["dev"], &["dev", "root"]);
    let r = ask(&snap, &cert, "root", Some(&snap.nodes[0]));
    assert!(!r.allowed);
    assert!(r.reason.starts_with("access denied to alice connecting to db-1:"), "{}", r.reason);
    assert!(r.reason.contains("(roles [dev])"), "{}", r.reason);
    // A node outside the role's labels is refused too.
    let r = ask(&snap, &cert, "dev", Some(&snap.nodes[1]));
    assert!(!r.allowed && r.reason.contains("web-1"), "{}", r.reason);
}

#[test]
fn a_login_missing_from_the_certificate_is_refused() {
    let (leaf, _, snap) = setup();
    let cert = leaf.ssh_cert("alice", &["dev"], &["other"]);
    let r = ask(&snap, &cert, "dev", Some(&snap.nodes[0]));
    assert!(!r.allowed);
    assert!(r.reason.contains("login \"dev\" is not in the certificate"), "{}", r.reason);
}

#[test]
fn a_locked_user_is_refused_naming_the_lock_until_it_ends() {
    let (leaf, _, mut snap) = setup();
    let cert = leaf.ssh_cert("alice", &["dev"], &["dev"]);
    snap.locks.push(UserLock { user: "alice".into(), until: None, message: "laptop stolen".into() });
    let r = ask(&snap, &cert, "dev", Some(&snap.nodes[0]));
    assert!(!r.allowed);
    assert_eq!(r.reason, "user alice is locked: laptop stolen; an admin can run 'tctl users unlock alice'");
    // An expired lock no longer holds.
    snap.locks[0].until = Some(1);
    assert!(ask(&snap, &cert, "dev", Some(&snap.nodes[0])).allowed);
    // A lock also closes listings.
    snap.locks[0].until = None;
    let id = verify_user_tls(&snap, &leaf.tls_cert("alice", &["dev"], SystemRole::User.as_str())).unwrap();
    let e = nodes_visible_to(&snap, &id).unwrap_err();
    assert!(matches!(e, AccessError::Denied(_)) && e.to_string().contains("is locked"), "{e}");
}

#[test]
fn a_role_removed_from_the_user_stops_counting() {
    let (leaf, _, mut snap) = setup();
    // The certificate still says ops, but alice no longer holds it.
    let cert = leaf.ssh_cert("alice", &["dev", "ops"], &["dev", "root"]);
    let r = ask(&snap, &cert, "root", Some(&snap.nodes[0]));
    assert!(!r.allowed, "ops was removed, root must be refused");
    assert!(r.reason.contains("(roles [dev])"), "{}", r.reason);
    snap.users.insert("alice".into(), vec![]);
    let r = ask(&snap, &cert, "dev", Some(&snap.nodes[0]));
    assert!(!r.allowed);
    assert!(r.reason.contains("roles [dev, ops] in the certificate were removed from the user"), "{}", r.reason);
}

#[test]
fn a_deleted_user_is_refused_saying_so() {
    let (leaf, _, mut snap) = setup();
    let cert = leaf.ssh_cert("alice", &["dev"], &["dev"]);
    snap.users.clear();
    let r = ask(&snap, &cert, "dev", Some(&snap.nodes[0]));
    assert!(!r.allowed);
    assert_eq!(r.reason, "user alice no longer exists in cluster \"leaf\": its certificates are not accepted");
    let id = verify_user_tls(&snap, &leaf.tls_cert("alice", &["dev"], SystemRole::User.as_str())).unwrap();
    assert!(user_checker(&snap, &id).unwrap_err().to_string().contains("no longer exists"));
}

#[test]
fn a_trusted_roots_user_gets_the_mapped_roles() {
    let (_, root, snap) = setup();
    let cert = root.ssh_cert("bob", &["admin"], &["root"]);
    let r = ask(&snap, &cert, "root", Some(&snap.nodes[1]));
    assert!(r.allowed, "{}", r.reason);
    assert_eq!(r.roles, vec!["ops".to_string()]);
    // A role the map does not cover maps to nothing.
    let cert = root.ssh_cert("bob", &["intern"], &["root"]);
    let r = ask(&snap, &cert, "root", Some(&snap.nodes[1]));
    assert!(!r.allowed && r.reason.contains("map to no role"), "{}", r.reason);
    // TLS: verified against the root's CA, access through the map.
    let id = verify_user_tls(&snap, &root.tls_cert("bob", &["admin"], SystemRole::User.as_str())).unwrap();
    assert_eq!(user_checker(&snap, &id).unwrap().role_names(), vec!["ops".to_string()]);
    assert_eq!(nodes_visible_to(&snap, &id).unwrap().len(), 2);
}

#[test]
fn a_disabled_root_is_refused() {
    let (_, root, mut snap) = setup();
    snap.trusted_roots[0].active = false;
    let cert = root.ssh_cert("bob", &["admin"], &["root"]);
    let r = ask(&snap, &cert, "root", Some(&snap.nodes[1]));
    assert!(!r.allowed);
    assert_eq!(r.reason, "trust with cluster \"root\" is disabled: its certificates are not accepted here");
    let e = verify_user_tls(&snap, &root.tls_cert("bob", &["admin"], SystemRole::User.as_str())).unwrap_err();
    assert_eq!(e, AccessError::Denied("trust with cluster \"root\" is disabled".into()));
}

#[test]
fn an_unknown_ca_is_refused() {
    let (_, _, snap) = setup();
    let stranger = Cluster::new("leaf");
    let cert = stranger.ssh_cert("alice", &["dev"], &["dev"]);
    let r = ask(&snap, &cert, "dev", Some(&snap.nodes[0]));
    assert!(!r.allowed && !r.reason.is_empty());
    // Same cluster name, other CA: the TLS certificate is rejected.
    let e = verify_user_tls(&snap, &stranger.tls_cert("alice", &["dev"], SystemRole::User.as_str())).unwrap_err();
    assert!(matches!(e, AccessError::Unauthenticated(ref m) if m.starts_with("user certificate rejected")), "{e}");
    // A cluster nobody trusts.
    let other = Cluster::new("elsewhere");
    let e = verify_user_tls(&snap, &other.tls_cert("eve", &["dev"], SystemRole::User.as_str())).unwrap_err();
    assert_eq!(e, AccessError::Unauthenticated("cluster \"elsewhere\" is not trusted here".into()));
}

#[test]
fn an_unreadable_certificate_is_an_error_and_an_unknown_node_a_refusal() {
    let (leaf, _, snap) = setup();
    let req = AuthorizeSshRequest { ssh_cert: "not a cert".into(), login: "dev".into(), ..Default::default() };
    assert!(matches!(authorize_ssh(&snap, &req, None), Err(AccessError::BadRequest(m)) if m.starts_with("unreadable SSH certificate")));
    let cert = leaf.ssh_cert("alice", &["dev"], &["dev"]);
    let r = ask(&snap, &cert, "dev", None);
    assert!(!r.allowed);
    assert_eq!(r.reason, "node \"db-1\" is not found in cluster \"leaf\"");
}

#[test]
fn nodes_resolve_by_hostname_address_and_id() {
    let (_, _, snap) = setup();
    assert_eq!(resolve_node(&snap.nodes, "leaf", "db-1", 0).unwrap().metadata.name, "id-1");
    assert_eq!(resolve_node(&snap.nodes, "leaf", "id-2", 0).unwrap().spec.hostname, "web-1");
    assert_eq!(resolve_node(&snap.nodes, "leaf", "10.0.0.2", 3022).unwrap().metadata.name, "id-2");
    assert_eq!(resolve_node(&snap.nodes, "leaf", "10.0.0.1", 0).unwrap().metadata.name, "id-1");
    // Another port is another service: not this node.
    let e = resolve_node(&snap.nodes, "leaf", "10.0.0.1", 22).unwrap_err();
    assert_eq!(e, AccessError::NotFound("node \"10.0.0.1\" is not found in cluster \"leaf\" (see tsh ls)".into()));
}

#[test]
fn an_ambiguous_name_is_refused_unless_an_id_matches() {
    let mut nodes = vec![node("id-1", "db", "10.0.0.1:3022", "dev"), node("id-2", "db", "10.0.0.2:3022", "dev")];
    let e = resolve_node(&nodes, "leaf", "db", 0).unwrap_err();
    assert_eq!(e, AccessError::BadRequest("\"db\" matches several nodes (id-1, id-2); use the node id".into()));
    // A node whose id is the name wins over one merely called so.
    nodes.push(node("db", "other", "10.0.0.3:3022", "dev"));
    assert_eq!(resolve_node(&nodes, "leaf", "db", 0).unwrap().spec.addr, "10.0.0.3:3022");
}

#[test]
fn listings_follow_the_roles_labels() {
    let (leaf, _, mut snap) = setup();
    let id = verify_user_tls(&snap, &leaf.tls_cert("alice", &["dev"], SystemRole::User.as_str())).unwrap();
    let seen: Vec<String> = nodes_visible_to(&snap, &id).unwrap().into_iter().map(|n| n.spec.hostname).collect();
    assert_eq!(seen, vec!["db-1".to_string()]);
    let mut rc = RemoteCluster::new("leaf-2");
    rc.metadata.labels.insert("env".into(), "prod".into());
    snap.remote_clusters.push(rc);
    assert_eq!(remote_clusters_visible_to(&snap, &id).unwrap().len(), 1);
    // A node certificate is no user's.
    let e = verify_user_tls(&snap, &leaf.tls_cert("host-1", &[], SystemRole::Node.as_str())).unwrap_err();
    assert_eq!(e, AccessError::Denied("not a user certificate".into()));
}

#[test]
fn a_snapshot_round_trips_through_json() {
    let (_, _, mut snap) = setup();
    snap.locks.push(UserLock { user: "bob".into(), until: Some(42), message: "m".into() });
    let back = AccessSnapshot::from_json(&snap.to_json().unwrap()).unwrap();
    assert_eq!(back, snap);
    assert_eq!(AccessSnapshot::from_json(b"{}").unwrap(), AccessSnapshot::default());
}
