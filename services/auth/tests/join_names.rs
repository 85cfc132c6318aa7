//! A join token buys only its holder's own names: reserved names, other live hosts' names
//! and ids, and malformed names are refused with the reason; only auth and proxy
//! certificates may serve TLS.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_pki::x509::{self, AUTH_SERVER_NAME, PROXY_SERVER_NAME};
use portcullis_pki::{Identity, Secret, ssh};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::*;
use portcullis_rpc::{Channel, ClientTls, Trust};

const CLUSTER: &str = "names.example.com";

mod common;
use common::Running;

async fn start(dir: &std::path::Path) -> Running {
    common::start(dir, CLUSTER, &["node:node-token", "proxy:proxy-token"]).await
}

/// A raw join call, so the test controls every field (host id, principals).
async fn raw_join(
    r: &Running,
    token: &str,
    role: &str,
    nodename: &str,
    host_id: &str,
    principals: &[&str],
) -> Result<JoinResponse, String> {
    let tls = ClientTls { trust: Trust::Insecure, identity: None, server_name: AUTH_SERVER_NAME.into() };
    let mut c = AuthClient::new(portcullis_rpc::connect(&r.addr, &tls).await.unwrap());
    let tls_key = x509::generate_key().unwrap();
    let ssh_key = ssh::generate_key().unwrap();
    c.join(JoinRequest {
        token: token.into(),
        role: role.into(),
        host_id: host_id.into(),
        nodename: nodename.into(),
        tls_public_key: x509::public_key_der(&tls_key),
        ssh_public_key: ssh::public_key_line(ssh_key.public_key()).unwrap(),
        additional_principals: principals.iter().map(|p| p.to_string()).collect(),
    })
    .await
    .map(tonic::Response::into_inner)
    .map_err(|s| s.message().to_string())
}

/// A node that joins the normal way and announces itself, so it is a live host.
async fn live_node(r: &Running, name: &str) -> Identity {
    let id = portcullis_rpc::join::join(&r.addr, Trust::Insecure, Secret::new("node-token".into()), "node", name, &[])
        .await
        .unwrap();
    let ch: Channel = portcullis_rpc::connect(&r.addr, &ClientTls::from_identity(&id, AUTH_SERVER_NAME)).await.unwrap();
    AuthClient::new(ch)
        .heartbeat(HeartbeatRequest {
            kind: "node".into(),
            host_id: id.name.clone(),
            hostname: name.into(),
            addr: "127.0.0.1:3022".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    id
}

fn leaf_der(pem: &str) -> Vec<u8> {
    x509::pem_to_ders(pem).unwrap().remove(0)
}

#[tokio::test]
async fn reserved_and_malformed_node_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    let cases: &[(&str, &str)] = &[
        (AUTH_SERVER_NAME, "reserved for the cluster's own services"),
        ("Auth.Portcullis.Local", "reserved for the cluster's own services"),
        (PROXY_SERVER_NAME, "reserved for the cluster's own services"),
        ("evil.portcullis.local", "reserved for the cluster's own services"),
        ("localhost", "localhost names every machine"),
        ("127.0.0.1", "an IP address cannot be a node name"),
        ("10.1.2.3", "an IP address cannot be a node name"),
        (CLUSTER, "it is the cluster's name"),
        ("bad name", "not a valid host name"),
        ("-flag", "not a valid host name"),
        ("a..b", "not a valid host name"),
        ("", "it is empty"),
    ];
    for (name, why) in cases {
        let e = raw_join(&r, "node-token", "node", name, "", &[]).await.unwrap_err();
        assert!(e.contains(&format!("{name:?}")) && e.contains(why), "{name}: {e}");
    }
    // A proxy token buys no reserved name either: the fixed name is added by auth alone.
    let e = raw_join(&r, "proxy-token", "proxy", PROXY_SERVER_NAME, "", &[]).await.unwrap_err();
    assert!(e.contains("reserved"), "{e}");
    r.stop().await;
}

#[tokio::test]
async fn another_live_hosts_name_or_id_is_refused_but_the_same_host_may_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    let n1 = live_node(&r, "n1").await;

    for name in ["n1", "N1", &format!("n1.{CLUSTER}"), &n1.name] {
        let e = raw_join(&r, "node-token", "node", name, "", &[]).await.unwrap_err();
        assert!(e.contains("held by live node \"n1\"") && e.contains(&n1.name), "{name}: {e}");
    }
    // A proxy may not take a node's name either.
    let e = raw_join(&r, "proxy-token", "proxy", "n1", "", &[]).await.unwrap_err();
    assert!(e.contains("held by live node"), "{e}");

    // The same host id joining again as itself is a re-join; as anything else it is not.
    raw_join(&r, "node-token", "node", "n1", &n1.name, &[]).await.unwrap();
    let e = raw_join(&r, "node-token", "node", "n1-evil", &n1.name, &[]).await.unwrap_err();
    assert!(e.contains("host id") && e.contains("belongs to live node \"n1\""), "{e}");
    let e = raw_join(&r, "proxy-token", "proxy", "n1", &n1.name, &[]).await.unwrap_err();
    assert!(e.contains("belongs to live node"), "{e}");
    let e = raw_join(&r, "proxy-token", "agent", "n1", &n1.name, &[]).await.unwrap_err();
    assert!(e.contains("belongs to live node"), "{e}");

    // Other names are fine.
    raw_join(&r, "node-token", "node", "n2", "", &[]).await.unwrap();
    r.stop().await;
}

#[tokio::test]
async fn additional_principals_follow_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    let n1 = live_node(&r, "n1").await;

    let bad: &[(&str, &str)] = &[
        ("n1", "names live node \"n1\""),
        (&n1.name, "names live node \"n1\""),
        (&format!("{}.{CLUSTER}", n1.name), "names live node \"n1\""),
        (AUTH_SERVER_NAME, "reserved"),
        (PROXY_SERVER_NAME, "reserved"),
        (CLUSTER, "cluster's name"),
        ("*", "not a valid host name"),
        ("0.0.0.0", "not the address of any one host"),
    ];
    for (p, why) in bad {
        let e = raw_join(&r, "node-token", "node", "n2", "", &[p]).await.unwrap_err();
        assert!(e.contains("additional principal") && e.contains(&format!("{p:?}")) && e.contains(why), "{p}: {e}");
    }

    // What a node really sends: its loopback names and addresses, its public name and IP.
    let ok = ["127.0.0.1", "localhost", "::1", "n2.example.org", "192.0.2.7", "n2"];
    let resp = raw_join(&r, "node-token", "node", "n2", "", &ok).await.unwrap();
    let cert = ssh::parse_certificate(&resp.ssh_host_cert).unwrap();
    let principals = cert.valid_principals();
    for p in ok {
        assert!(principals.contains(&p.to_string()), "{p} in {principals:?}");
    }
    // A proxy may be reached by the cluster's name (its public address often is it).
    let resp = raw_join(&r, "proxy-token", "proxy", "proxy-1", "", &[CLUSTER, "localhost"]).await.unwrap();
    let principals = ssh::parse_certificate(&resp.ssh_host_cert).unwrap().valid_principals().to_vec();
    assert!(principals.contains(&CLUSTER.to_string()), "{principals:?}");
    r.stop().await;
}

#[tokio::test]
async fn only_proxies_get_a_serving_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    let node = raw_join(&r, "node-token", "node", "n1", "", &[]).await.unwrap();
    let agent = raw_join(&r, "proxy-token", "agent", "agent-1", "", &[]).await.unwrap();
    let proxy = raw_join(&r, "proxy-token", "proxy", "proxy-1", "", &[]).await.unwrap();
    for (what, resp, serves) in [("node", &node, false), ("agent", &agent, false), ("proxy", &proxy, true)] {
        let der = leaf_der(&resp.tls_cert_pem);
        assert_eq!(x509::allows_server_auth(&der).unwrap(), serves, "{what}");
        let id = x509::parse_identity(&der).unwrap();
        assert_eq!(id.dns_names.contains(&PROXY_SERVER_NAME.to_string()), serves, "{what}: {:?}", id.dns_names);
        assert!(!id.dns_names.contains(&AUTH_SERVER_NAME.to_string()), "{what}: {:?}", id.dns_names);
    }
    r.stop().await;
}
