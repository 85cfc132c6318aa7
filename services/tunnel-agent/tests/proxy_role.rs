//! The agent opens tunnels only to a root server whose certificate has the Proxy role: a
//! root node's certificate with the right CA and the proxy's name is refused before any
//! Hello is sent.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::auth::{self, AuthState};
use common::proxy::{FakeProxy, ProxyState};
use common::{Pki, RunningAgent, eventually};
use portcullis_pki::x509::{self, PROXY_SERVER_NAME, TlsCertRequest, SystemRole};
use portcullis_proto::tunnel::ProxyInfo;

/// A certificate from `pki.root` for `role`, carrying the proxies' fixed name.
fn root_cert(pki: &Pki, role: &str) -> (String, String) {
    let key = x509::generate_key().unwrap();
    let cert = pki
        .root
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: "evil-host".into(),
            system_roles: vec![role.into()],
            dns_names: vec![PROXY_SERVER_NAME.into()],
            ttl: Duration::from_secs(600),
            ..Default::default()
        })
        .unwrap();
    (cert, key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_node_posing_as_a_proxy_gets_no_tunnel() {
    let mut pki = Pki::new();
    let auth = Arc::new(AuthState::default());
    let auth_addr = auth::serve(&pki, auth.clone()).await.to_string();
    // A node's certificate (no ServerAuth), and the root auth's (ServerAuth, wrong role).
    for role in [SystemRole::Node.as_str(), SystemRole::Auth.as_str()] {
        pki.proxy = root_cert(&pki, role);
        let fake = FakeProxy::start(&pki, ProxyState::new("p1"), "127.0.0.1:0".parse().unwrap());
        fake.state.proxy_set.lock().unwrap().push(ProxyInfo { id: "p1".into(), tunnel_addr: fake.addr.to_string() });
        auth.set_targets(vec![pki.target(&fake.addr.to_string(), true)]);
        let agent = RunningAgent::start(&pki, &auth_addr);
        // Several attempts' worth of time: none may get as far as a Hello.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(fake.state.hello_count(), 0, "the agent said Hello to a {role} posing as a proxy");
        agent.stop().await;
    }

    // The same set-up with a real proxy certificate works, so the role made the difference.
    pki.proxy = root_cert(&pki, SystemRole::Proxy.as_str());
    let real = FakeProxy::start(&pki, ProxyState::new("p1"), "127.0.0.1:0".parse().unwrap());
    real.state.proxy_set.lock().unwrap().push(ProxyInfo { id: "p1".into(), tunnel_addr: real.addr.to_string() });
    auth.set_targets(vec![pki.target(&real.addr.to_string(), true)]);
    let agent = RunningAgent::start(&pki, &auth_addr);
    let state = real.state.clone();
    eventually("the agent's Hello to the real proxy", Duration::from_secs(10), || state.hello_count() == 1).await;
    agent.stop().await;
}
