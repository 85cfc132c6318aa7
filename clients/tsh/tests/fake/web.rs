//! A fake proxy web API over HTTPS (tokio-rustls, hand-written HTTP/1.1): ping, login,
//! nodes, sites and ssh/authorize, answering as the architecture document specifies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use portcullis_pki::ssh::{SshCa, UserCertRequest};
use portcullis_pki::x509::{TlsCa, TlsCertRequest};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct WebState {
    pub cluster: String,
    pub ssh_addr: String,
    pub user_ca: SshCa,
    pub host_ca_line: String,
    pub tls_ca: TlsCa,
}

/// Starts the server on 127.0.0.1; returns its address.
pub async fn start_web(state: WebState) -> String {
    let key = portcullis_pki::x509::generate_key().unwrap();
    let cert_pem = state
        .tls_ca
        .issue(&TlsCertRequest {
            public_key_der: portcullis_pki::x509::public_key_der(&key),
            name: "proxy".into(),
            system_roles: vec!["Proxy".into()],
            dns_names: vec!["127.0.0.1".into(), "localhost".into()],
            ttl: Duration::from_secs(3600),
            ..Default::default()
        })
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(state.tls_ca.cert_pem().as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs,
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(state);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let has_client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let Some((method, path, body)) = read_request(&mut tls).await else {
                    return;
                };
                let (status, answer) = route(&state, &method, &path, &body, has_client_cert);
                let body = answer.to_string();
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((method, path, body))
}

fn route(
    state: &WebState,
    method: &str,
    path: &str,
    body: &[u8],
    client_cert: bool,
) -> (&'static str, Value) {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method, path) {
        ("GET", "/webapi/ping") => (
            "200 OK",
            json!({"cluster_name": state.cluster, "server_version": "test",
                   "proxy": {"ssh": {"public_addr": "", "ssh_public_addr": state.ssh_addr, "ssh_tunnel_public_addr": ""},
                             "tls_routing_enabled": false}}),
        ),
        ("POST", "/webapi/login") => login(state, &req),
        ("POST", "/webapi/ssh/authorize") => (
            "200 OK",
            json!({"allowed": false, "reason": format!("access denied: login {:?} is not allowed by role access", req["login"].as_str().unwrap_or_default())}),
        ),
        _ if !client_cert => (
            "401 Unauthorized",
            json!({"error": "a client certificate is required"}),
        ),
        ("GET", "/webapi/sites/root/nodes") => (
            "200 OK",
            json!({"nodes": [
                {"id": "n1", "hostname": "node-1", "addr": "127.0.0.1:3022", "labels": {"env": "prod"}, "tunnel": false},
                {"id": "n2", "hostname": "node-2", "addr": "", "labels": {"env": "dev"}, "tunnel": true},
            ]}),
        ),
        ("GET", "/webapi/sites") => (
            "200 OK",
            json!([{"name": "root", "status": "online"}, {"name": "leaf", "status": "online", "labels": {"env": "demo"}}]),
        ),
        _ => (
            "404 Not Found",
            json!({"error": format!("no route {method} {path}")}),
        ),
    }
}

fn login(state: &WebState, req: &Value) -> (&'static str, Value) {
    let s = |k: &str| req[k].as_str().unwrap_or_default().to_string();
    if s("password") != "secret" {
        return (
            "401 Unauthorized",
            json!({"error": "invalid username or password"}),
        );
    }
    let public_key = portcullis_pki::ssh::parse_public_key(&s("ssh_pub_key")).unwrap();
    let ttl = Duration::from_secs(req["ttl_seconds"].as_u64().unwrap_or(3600));
    let cert = state
        .user_ca
        .sign_user_cert(&UserCertRequest {
            public_key,
            username: s("user"),
            principals: vec!["visitor".into()],
            ttl,
            roles: vec!["access".into()],
            traits: BTreeMap::from([("logins".into(), vec!["visitor".into()])]),
            route_to_cluster: if s("cluster").is_empty() {
                state.cluster.clone()
            } else {
                s("cluster")
            },
            permit_port_forwarding: false,
            permit_agent_forwarding: false,
        })
        .unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .decode(s("tls_pub_key"))
        .unwrap();
    let tls_cert = state
        .tls_ca
        .issue(&TlsCertRequest {
            public_key_der: spki,
            name: s("user"),
            system_roles: vec!["User".into()],
            roles: vec!["access".into()],
            ttl,
            ..Default::default()
        })
        .unwrap();
    (
        "200 OK",
        json!({"username": s("user"), "cluster_name": state.cluster, "ssh_cert": cert.to_openssh().unwrap(),
               "tls_cert_pem": tls_cert,
               "cas": {"tls_ca_pem": [state.tls_ca.cert_pem()], "ssh_user_ca": [state.user_ca.public_line().unwrap()],
                       "ssh_host_ca": [state.host_ca_line]},
               "leaf_host_cas": [{"cluster_name": "leaf", "ssh_host_ca": [state.host_ca_line]}]}),
    )
}
