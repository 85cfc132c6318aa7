//! `run()` wiring: with an identity already on disk and no reachable auth service, the proxy
//! still serves ping over HTTPS, accepts certificate users over SSH, and stops on request.

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{CommonFlags, FileConfig, ProxySettings};
use portcullis_pki::ssh::{HostCertRequest, SshCa, UserCertRequest};
use portcullis_pki::x509::{self, TlsCa, TlsCertRequest};
use portcullis_pki::{Identity, Secret};
use russh::client;
use russh::keys::PublicKeyOrCertificate;

use crate::{ProxyListeners, run};

struct Client;

impl client::Handler for Client {
    type Error = russh::Error;
    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // The proxy presents its host certificate.
        Ok(matches!(key, PublicKeyOrCertificate::Certificate(_)))
    }
}

fn save_identity(dir: &std::path::Path, user_ca: &SshCa) {
    let tls_ca = TlsCa::generate("c.example.com").unwrap();
    let tls_key = x509::generate_key().unwrap();
    let tls_cert = tls_ca
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&tls_key),
            name: "host-1".into(),
            system_roles: vec!["Proxy".into()],
            ttl: Duration::from_secs(3600),
            ..Default::default()
        })
        .unwrap();
    let host_ca = SshCa::generate().unwrap();
    let ssh_key = portcullis_pki::ssh::generate_key().unwrap();
    let host_cert = host_ca
        .sign_host_cert(&HostCertRequest {
            public_key: ssh_key.public_key().clone(),
            host_id: "host-1".into(),
            nodename: "proxy-1".into(),
            cluster_name: "c.example.com".into(),
            role: "Proxy".into(),
            additional_principals: vec!["127.0.0.1".into()],
            ttl: Duration::from_secs(3600),
        })
        .unwrap();
    let mut id = Identity::new(
        "c.example.com".into(),
        "host-1".into(),
        "proxy-1".into(),
        "proxy".into(),
        tls_cert,
        Secret::new(tls_key.serialize_pem()),
        vec![tls_ca.cert_pem().to_string()],
        Secret::new(portcullis_pki::ssh::private_key_openssh(&ssh_key).unwrap()),
        host_cert.to_openssh().unwrap(),
    );
    id.ssh_user_cas = vec![user_ca.public_line().unwrap()];
    id.save(&portcullis_rpc::join::identity_path(dir, "proxy")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_with_a_saved_identity_and_stops() {
    portcullis_rpc::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("proxy-run-{}", portcullis_pki::random_hex::<6>().unwrap()));
    let user_ca = SshCa::generate().unwrap();
    save_identity(&dir, &user_ca);
    let flags = CommonFlags {
        data_dir: Some(dir.clone()),
        auth_server: vec!["127.0.0.1:1".into()],
        nodename: Some("proxy-1".into()),
        ..Default::default()
    };
    let settings = ProxySettings::from_parts(&FileConfig::default(), &flags).unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ssh = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (web_port, ssh_addr, tunnel_port) =
        (web.local_addr().unwrap().port(), ssh.local_addr().unwrap(), tunnel.local_addr().unwrap().port());
    let diag = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let diag_url = format!("http://{}", diag.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(run(settings, ProxyListeners { web, ssh, tunnel: Some(tunnel), diag: Some(diag) }, async {
        let _ = stop_rx.await;
    }));

    // HTTPS with the self-signed certificate.
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let url = format!("https://127.0.0.1:{web_port}/webapi/ping");
    let mut ping = None;
    for _ in 0..50 {
        if let Ok(r) = http.get(&url).send().await {
            ping = Some(r.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ping = ping.expect("the web API answers");
    assert_eq!(ping["cluster_name"], "c.example.com");
    assert_eq!(ping["proxy"]["ssh"]["public_addr"], format!("127.0.0.1:{web_port}"));
    assert_eq!(ping["proxy"]["ssh"]["ssh_public_addr"], format!("127.0.0.1:{}", ssh_addr.port()));
    assert_eq!(ping["proxy"]["ssh"]["ssh_tunnel_public_addr"], format!("127.0.0.1:{tunnel_port}"));

    // SSH with a user certificate from the CA in the identity.
    let key = Arc::new(portcullis_pki::ssh::generate_key().unwrap());
    let cert = user_ca
        .sign_user_cert(&UserCertRequest {
            public_key: key.public_key().clone(),
            username: "alice".into(),
            principals: vec!["alice".into()],
            ttl: Duration::from_secs(600),
            roles: vec!["access".into()],
            traits: Default::default(),
            route_to_cluster: String::new(),
            permit_port_forwarding: false,
            permit_agent_forwarding: false,
        })
        .unwrap();
    // Asking for certificate host keys is what makes the proxy present its host certificate.
    let config = client::Config {
        preferred: russh::Preferred {
            host_key_certificates: std::borrow::Cow::Borrowed(&[russh::keys::Algorithm::Ed25519]),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    };
    let mut h = client::connect(Arc::new(config), ssh_addr, Client).await.unwrap();
    assert!(h.authenticate_openssh_cert("alice", key, cert).await.unwrap().success());
    // Auth is unreachable, so the node cannot be resolved: the channel is refused.
    assert!(h.channel_open_direct_tcpip("node-1", 0, "127.0.0.1", 1).await.is_err());

    // Alive, but not ready: no heartbeat has reached the auth service.
    let get = |path: &'static str| {
        let url = format!("{diag_url}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get("/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: waiting for the first heartbeat to the auth service\n"));
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("portcullis_proxy_sessions_total{cluster_type=\"local\",outcome=\"error\"} 1\n"), "{text}");
    assert!(text.contains("portcullis_proxy_active_sessions 0.0\n"), "{text}");
    assert!(text.contains("# TYPE portcullis_proxy_heartbeat_age_seconds gauge\n"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), proxy).await.unwrap().unwrap().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
