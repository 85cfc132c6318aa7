//! Web API tests against a fake auth service: routes in-process, and one real HTTPS server to
//! check that client certificates reach the handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ConnInfo, router};
use crate::drain::Drain;
use crate::testutil::{self, CLUSTER, FakeAuth, PASSWORD};

async fn call(state: Arc<crate::ProxyState>, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(state).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let v = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    (status, v)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// A POST with a JSON body, as clients send it (type and length named).
fn post_json(uri: &str, body: &Value) -> Request<Body> {
    let bytes = serde_json::to_vec(body).unwrap();
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(Body::from(bytes))
        .unwrap()
}

/// `req` as if it came from `peer`.
fn from_peer(mut req: Request<Body>, peer: &str) -> Request<Body> {
    req.extensions_mut().insert(ConnInfo { peer: Some(peer.parse().unwrap()), cert: None });
    req
}

#[tokio::test]
async fn ping_ignores_the_host_header() {
    let state = testutil::state(None, vec![]);
    // Whatever Host the caller sends, the answer names the proxy's own listeners.
    let req = Request::get("/webapi/ping").header(header::HOST, "evil.test:443").body(Body::empty()).unwrap();
    let (status, v) = call(state, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["cluster_name"], CLUSTER);
    assert_eq!(v["server_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["proxy"]["ssh"]["public_addr"], "0.0.0.0:43080");
    assert_eq!(v["proxy"]["ssh"]["ssh_public_addr"], "0.0.0.0:43023");
    assert_eq!(v["proxy"]["ssh"]["ssh_tunnel_public_addr"], "0.0.0.0:43024");
    assert_eq!(v["proxy"]["tls_routing_enabled"], false);
    assert!(!v.to_string().contains("evil"), "{v}");
}

fn login_body(password: &str) -> Value {
    json!({
        "user": "alice",
        "password": password,
        "ssh_pub_key": "ssh-ed25519 AAAA",
        "tls_pub_key": "AQID",
        "ttl_seconds": 3600,
        "cluster": "",
    })
}

#[tokio::test]
async fn login_passes_the_request_on_and_answers_with_certificates() {
    let fake = Arc::new(FakeAuth::default());
    let state = testutil::state(Some(testutil::serve_fake(fake.clone()).await), vec![]);
    let req = from_peer(post_json("/webapi/login", &login_body(PASSWORD)), "10.1.2.3:5555");
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["username"], "alice");
    assert_eq!(v["cluster_name"], CLUSTER);
    assert_eq!(v["ssh_cert"], "ssh-cert");
    assert_eq!(v["tls_cert_pem"], "tls-cert");
    assert_eq!(v["cas"]["tls_ca_pem"][0], "tls-ca");
    assert_eq!(v["cas"]["ssh_user_ca"][0], "user-ca");
    assert_eq!(v["cas"]["ssh_host_ca"][0], "host-ca");
    {
        let logins = fake.logins.lock().unwrap();
        assert_eq!(logins[0].tls_public_key, vec![1, 2, 3]);
        assert_eq!(logins[0].remote_addr, "10.1.2.3:5555");
        assert_eq!(logins[0].ttl_seconds, 3600);
    }

    let req = post_json("/webapi/login", &login_body("wrong"));
    let (status, v) = call(state, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"], "invalid username or password");
}

#[tokio::test]
async fn bad_login_bodies_are_named() {
    let state = testutil::state(None, vec![]);
    let req = Request::post("/webapi/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().starts_with("invalid JSON request body"), "{v}");

    let req = post_json("/webapi/login", &json!({"password": "x"}));
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("missing field `user`"), "{v}");

    let mut body = login_body("x");
    body["tls_pub_key"] = json!("not base64!");
    let req = post_json("/webapi/login", &body);
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("tls_pub_key is not standard base64"), "{v}");

    let mut body = login_body("x");
    body["password"] = json!("p".repeat(super::JSON_LIMIT + 1));
    let req = post_json("/webapi/login", &body);
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("larger than the limit"), "{v}");

    // A body named as something else than JSON is refused; an unnamed one is read as JSON.
    let req = Request::post("/webapi/login").header(header::CONTENT_TYPE, "text/plain").body(Body::from("{}")).unwrap();
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(v["error"], "the request body must be JSON (Content-Type: application/json)");
    let req = Request::post("/webapi/login").body(Body::from(r#"{"password": "x"}"#)).unwrap();
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("missing field `user`"), "{v}");

    // No auth service behind this state: the answer says so.
    let req = post_json("/webapi/login", &login_body("x"));
    let (status, v) = call(state, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"].as_str().unwrap().starts_with("auth service unreachable"), "{v}");
}

#[tokio::test]
async fn nodes_need_a_certificate_and_unknown_paths_are_json() {
    let state = testutil::state(None, vec![]);
    let req = get(&format!("/webapi/sites/{CLUSTER}/nodes"));
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"], "a client certificate is required: run 'tsh login'");

    let (status, v) = call(state.clone(), get("/webapi/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "no such endpoint: GET /webapi/nope");
    // A known path with another method is no endpoint either.
    let (status, v) = call(state, post_json("/webapi/ping", &json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "no such endpoint: POST /webapi/ping");
}

#[tokio::test]
async fn authorize_needs_a_client_certificate() {
    let fake = Arc::new(FakeAuth::default());
    let state = testutil::state(Some(testutil::serve_fake(fake).await), vec![]);
    // Without a client certificate nothing is asked of any auth service (no audit event),
    // for this cluster or a leaf.
    for cluster in [CLUSTER, "leaf"] {
        let body = json!({"ssh_cert": "ssh-ed25519-cert-v01@openssh.com AAAA", "login": "root", "node": "node-1", "cluster": cluster});
        let req = post_json("/webapi/ssh/authorize", &body);
        let (status, v) = call(state.clone(), req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"], "a client certificate is required: run 'tsh login'");
    }
}

/// A real HTTPS proxy web server over `state`, and a client presenting a TLS user
/// certificate for `user` from `ca` (or none).
struct Https {
    port: u16,
    drain: Drain,
    dir: std::path::PathBuf,
    roots: rustls::RootCertStore,
}

impl Https {
    fn start(state: Arc<crate::ProxyState>) -> Https {
        let dir = std::env::temp_dir().join(format!("proxy-web-{}", portcullis_pki::random_hex::<6>().unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&server_key)
            .unwrap();
        let (kp, cp) = (dir.join("key.pem"), dir.join("cert.pem"));
        std::fs::write(&kp, server_key.serialize_pem()).unwrap();
        std::fs::write(&cp, server_cert.pem()).unwrap();
        let tls = super::tls::server_config(&[(kp, cp)], &[], state.client_verifier.verifier()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let drain = Drain::new();
        tokio::spawn(super::start(state, listener, tls, drain.clone()).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_cert.der().clone()).unwrap();
        Https { port, drain, dir, roots }
    }

    fn client(&self, user: Option<(&portcullis_pki::x509::TlsCa, &str, &str)>) -> reqwest::Client {
        use portcullis_pki::x509::{self, TlsCertRequest};
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let builder = rustls::ClientConfig::builder_with_provider(portcullis_rpc::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let tls = match user {
            None => builder.with_no_client_auth(),
            Some((ca, name, route)) => {
                let key = x509::generate_key().unwrap();
                let pem = ca
                    .issue(&TlsCertRequest {
                        public_key_der: x509::public_key_der(&key),
                        name: name.into(),
                        system_roles: vec!["User".into()],
                        route_to_cluster: route.into(),
                        ttl: std::time::Duration::from_secs(600),
                        ..Default::default()
                    })
                    .unwrap();
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap();
                let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key_der).unwrap()
            }
        };
        reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
    }

    async fn stop(self) {
        self.drain.start();
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

fn ssh_cert(ca: &portcullis_pki::ssh::SshCa, user: &str, route: &str) -> String {
    let key = portcullis_pki::ssh::generate_key().unwrap();
    ca.sign_user_cert(&portcullis_pki::ssh::UserCertRequest {
        public_key: key.public_key().clone(),
        username: user.into(),
        principals: vec!["root".into()],
        ttl: std::time::Duration::from_secs(600),
        roles: vec!["access".into()],
        traits: Default::default(),
        route_to_cluster: route.into(),
        permit_port_forwarding: false,
        permit_agent_forwarding: false,
    })
    .unwrap()
    .to_openssh()
    .unwrap()
}

/// `POST /webapi/ssh/authorize` answers only the holder: the TLS client certificate must
/// name the SSH certificate's user and cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_requires_the_matching_client_certificate() {
    let fake = Arc::new(FakeAuth::default());
    let user_ca = portcullis_pki::ssh::SshCa::generate().unwrap();
    let other_ca = portcullis_pki::ssh::SshCa::generate().unwrap();
    let (state, ca) = testutil::state_with_ca(Some(testutil::serve_fake(fake).await), vec![user_ca.public_key().clone()]);
    let server = Https::start(state);
    let url = format!("https://localhost:{}/webapi/ssh/authorize", server.port);
    let ask = |client: reqwest::Client, cert: String, cluster: &str| {
        let body = json!({"ssh_cert": cert, "login": "root", "node": "node-1", "cluster": cluster});
        let url = url.clone();
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let alice = || server.client(Some((&ca, "alice", "")));

    // The holder gets auth's answer.
    let (status, v) = ask(alice(), ssh_cert(&user_ca, "alice", ""), CLUSTER).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reason"], "login \"root\" is not allowed (source proxy)");

    // No client certificate; another user's SSH certificate; another cluster's route; a
    // certificate from a CA this proxy does not trust: refused before any auth call.
    let (status, v) = ask(server.client(None), ssh_cert(&user_ca, "alice", ""), CLUSTER).await;
    assert_eq!((status, v["error"].as_str().unwrap()), (401, "a client certificate is required: run 'tsh login'"));
    let (status, v) = ask(alice(), ssh_cert(&user_ca, "bob", ""), "leaf").await;
    assert_eq!(status, 403, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("SSH certificate (user \"bob\"") && err.contains("does not match the client certificate (user \"alice\""), "{err}");
    let (status, v) = ask(alice(), ssh_cert(&user_ca, "alice", "leaf"), "leaf").await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("cluster \"leaf\") does not match"), "{v}");
    let (status, v) = ask(alice(), ssh_cert(&other_ca, "alice", ""), CLUSTER).await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not issued by a user CA this proxy trusts"), "{v}");
    server.stop().await;
}

/// Real HTTPS: the client certificate a user presents reaches the nodes handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_client_certificates_reach_handlers() {
    use portcullis_pki::x509::{self, TlsCertRequest};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let fake = Arc::new(FakeAuth {
        nodes: vec![testutil::node("id-1", "node-1", "127.0.0.1:3022")],
        ..Default::default()
    });
    let (state, ca) = testutil::state_with_ca(Some(testutil::serve_fake(fake).await), vec![]);

    // The server's certificate, from files as `https_keypairs` would give it.
    let dir = std::env::temp_dir().join(format!("proxy-web-{}", portcullis_pki::random_hex::<6>().unwrap()));
    std::fs::create_dir_all(&dir).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&server_key)
        .unwrap();
    let (kp, cp) = (dir.join("key.pem"), dir.join("cert.pem"));
    std::fs::write(&kp, server_key.serialize_pem()).unwrap();
    std::fs::write(&cp, server_cert.pem()).unwrap();
    let tls = super::tls::server_config(&[(kp, cp)], &[], state.client_verifier.verifier()).unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let drain = Drain::new();
    let server = tokio::spawn(super::start(state, listener, tls, drain.clone()).unwrap());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cert.der().clone()).unwrap();
    let builder = || {
        rustls::ClientConfig::builder_with_provider(portcullis_rpc::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    let key = x509::generate_key().unwrap();
    let pem = ca
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: "alice".into(),
            system_roles: vec!["User".into()],
            ttl: std::time::Duration::from_secs(600),
            ..Default::default()
        })
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let with_cert = reqwest::Client::builder()
        .use_preconfigured_tls(builder().with_client_auth_cert(chain, key_der).unwrap())
        .build()
        .unwrap();
    let without_cert = reqwest::Client::builder()
        .use_preconfigured_tls(builder().with_no_client_auth())
        .build()
        .unwrap();

    let url = |cluster: &str| format!("https://localhost:{port}/webapi/sites/{cluster}/nodes");
    let resp = with_cert.get(url(CLUSTER)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["nodes"][0]["id"], "id-1");
    assert_eq!(v["nodes"][0]["hostname"], "node-1");
    assert_eq!(v["nodes"][0]["addr"], "127.0.0.1:3022");
    assert_eq!(v["nodes"][0]["labels"]["env"], "test");
    assert_eq!(v["nodes"][0]["tunnel"], false);

    let resp = with_cert.get(url("leaf")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "cluster \"leaf\" is not found");

    let resp = without_cert.get(url(CLUSTER)).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let resp = without_cert.get(format!("https://localhost:{port}/webapi/ping")).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["proxy"]["ssh"]["public_addr"], "0.0.0.0:43080");

    drain.start();
    server.await.unwrap().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn trusted_cluster_validation_is_passed_to_auth() {
    let fake = Arc::new(FakeAuth::default());
    let state = testutil::state(Some(testutil::serve_fake(fake.clone()).await), vec![]);
    let body = |token: &str| {
        json!({
            "token": token,
            "cluster_name": "leaf.example.com",
            "cas": {"tls_ca_pem": ["leaf-tls"], "ssh_user_ca": ["leaf-user"], "ssh_host_ca": ["leaf-host"]},
        })
    };
    let req = from_peer(post_json("/webapi/trustedclusters/validate", &body("wrong-token")), "10.9.8.7:4444");
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(v, json!({"error": "access denied: the cluster token has been rejected"}));

    let req = post_json("/webapi/trustedclusters/validate", &body(testutil::CLUSTER_TOKEN));
    let (status, v) = call(state.clone(), req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["cluster_name"], CLUSTER);
    assert_eq!(v["cas"], json!({"tls_ca_pem": ["tls-ca"], "ssh_user_ca": ["user-ca"], "ssh_host_ca": ["host-ca"]}));
    {
        let seen = fake.validations.lock().unwrap();
        assert_eq!(seen[0].leaf_cluster_name, "leaf.example.com");
        assert_eq!(seen[0].remote_addr, "10.9.8.7:4444");
        let cas = seen[1].leaf_cas.clone().unwrap();
        assert_eq!((cas.tls_ca_pem, cas.ssh_user_ca, cas.ssh_host_ca), (vec!["leaf-tls".into()], vec!["leaf-user".into()], vec!["leaf-host".into()]));
    }

    let req = post_json("/webapi/trustedclusters/validate", &json!({"token": "x", "cluster_name": " "}));
    let (status, v) = call(state, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().starts_with("cluster_name is empty"), "{v}");
}
