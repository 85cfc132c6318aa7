//! Runs the `tsh` binary against an in-process fake proxy and node (russh servers) to check
//! the SSH path: host certificates, user certificate, direct-tcpip, nested session, exit status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::Secret;
use portcullis_pki::ssh::{HostCertRequest, SshCa, UserCertRequest, generate_key};
use russh::keys::{Certificate, PrivateKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tsh::profile::{Credentials, Profile, Store};

struct Pki {
    user_ca: SshCa,
    host_ca: SshCa,
}

fn host_identity(pki: &Pki, name: &str, role: &str) -> (PrivateKey, Certificate) {
    let key = generate_key().unwrap();
    let cert = pki
        .host_ca
        .sign_host_cert(&HostCertRequest {
            public_key: key.public_key().clone(),
            host_id: format!("{name}-id"),
            nodename: name.into(),
            cluster_name: "root".into(),
            role: role.into(),
            additional_principals: vec![],
            ttl: Duration::from_secs(600),
        })
        .unwrap();
    (key, cert)
}

fn server_config(key: PrivateKey, cert: Certificate) -> Arc<server::Config> {
    Arc::new(server::Config {
        keys: vec![key],
        certificates: vec![cert],
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        ..Default::default()
    })
}

/// Accepts user certificates of the user CA for any principal they carry.
fn cert_ok(pki_user_ca: &russh::keys::PublicKey, user: &str, cert: &Certificate) -> bool {
    portcullis_pki::ssh::verify_user_cert(cert, std::slice::from_ref(pki_user_ca), portcullis_pki::unix_now())
        .is_ok_and(|info| info.principals.iter().any(|p| p == user))
}

#[derive(Clone)]
struct Proxy {
    user_ca: russh::keys::PublicKey,
    node_config: Arc<server::Config>,
}

impl server::Handler for Proxy {
    type Error = russh::Error;

    async fn auth_openssh_certificate(&mut self, user: &str, cert: &Certificate) -> Result<Auth, Self::Error> {
        // The proxy only checks the certificate is genuine; logins are the node's business.
        let genuine = portcullis_pki::ssh::verify_user_cert(cert, std::slice::from_ref(&self.user_ca), portcullis_pki::unix_now()).is_ok();
        let _ = user;
        Ok(if genuine { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        _port: u32,
        _orig: &str,
        _orig_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if host != "node-1" {
            reply
                .reject(ChannelOpenFailure::Other { code: 2, reason: format!("node {host} not found") })
                .await;
            return Ok(());
        }
        reply.accept().await;
        let node = Node { user_ca: self.user_ca.clone(), channels: HashMap::new() };
        let config = self.node_config.clone();
        tokio::spawn(async move {
            if let Ok(running) = server::run_stream(config, channel.into_stream(), node).await {
                let _ = running.await;
            }
        });
        Ok(())
    }
}

struct Node {
    user_ca: russh::keys::PublicKey,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl server::Handler for Node {
    type Error = russh::Error;

    async fn auth_openssh_certificate(&mut self, user: &str, cert: &Certificate) -> Result<Auth, Self::Error> {
        Ok(if cert_ok(&self.user_ca, user, cert) { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(&mut self, channel: ChannelId, data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let cmd = String::from_utf8_lossy(data).to_string();
        session.data(channel, format!("ran: {cmd}\n").into_bytes())?;
        session.extended_data(channel, 1, b"to stderr\n".to_vec())?;
        let code = cmd.strip_prefix("exit ").and_then(|c| c.parse().ok()).unwrap_or(0);
        session.exit_status_request(channel, code)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

async fn start_proxy(pki: &Pki) -> String {
    let (pkey, pcert) = host_identity(pki, "proxy", "Proxy");
    let (nkey, ncert) = host_identity(pki, "node-1", "Node");
    let proxy = Proxy { user_ca: pki.user_ca.public_key().clone(), node_config: server_config(nkey, ncert) };
    let config = server_config(pkey, pcert);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, handler) = (config.clone(), proxy.clone());
            tokio::spawn(async move {
                if let Ok(running) = server::run_stream(config, tcp, handler).await {
                    let _ = running.await;
                }
            });
        }
    });
    addr
}

fn login(pki: &Pki, home: &std::path::Path, ssh_addr: &str, ttl: Duration) {
    let key = generate_key().unwrap();
    let cert = pki
        .user_ca
        .sign_user_cert(&UserCertRequest {
            public_key: key.public_key().clone(),
            username: "alice".into(),
            principals: vec!["visitor".into()],
            ttl,
            roles: vec!["access".into()],
            traits: BTreeMap::new(),
            route_to_cluster: String::new(),
            permit_port_forwarding: false,
            permit_agent_forwarding: false,
        })
        .unwrap();
    let store = Store::new(home.to_path_buf());
    let profile = Profile {
        // Nothing listens there: refusals are explained locally.
        web_proxy_addr: "127.0.0.1:1".into(),
        ssh_proxy_addr: ssh_addr.into(),
        username: "alice".into(),
        cluster: "root".into(),
        selected_cluster: String::new(),
        insecure: false,
    };
    let creds = Credentials {
        ssh_key: key,
        ssh_cert: cert,
        tls_cert_pem: String::new(),
        tls_key_pem: Secret::new(String::new()),
        tls_ca_pems: vec![],
        ssh_host_cas: vec![pki.host_ca.public_key().clone()],
    };
    store.save_credentials(&profile, &creds).unwrap();
    store.save(&profile).unwrap();
}

async fn tsh(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsh"))
        .args(args)
        .env("TSH_HOME", home)
        .env_remove("TELEPORT_PROXY")
        .env_remove("TELEPORT_USER")
        .env_remove("TELEPORT_CLUSTER")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("tsh hung").unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn ssh_through_a_proxy_to_a_node() {
    let pki = Pki { user_ca: SshCa::generate().unwrap(), host_ca: SshCa::generate().unwrap() };
    let addr = start_proxy(&pki).await;
    let home = tempfile::tempdir().unwrap();
    login(&pki, home.path(), &addr, Duration::from_secs(600));

    let (code, out, err) = tsh(home.path(), &["ssh", "visitor@node-1", "exit", "3"]).await;
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "ran: exit 3\n");
    assert!(err.contains("to stderr"), "{err}");

    let (code, out, err) = tsh(home.path(), &["ssh", "-l", "visitor", "node-1", "uname", "-a"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "ran: uname -a\n");

    // The node refuses a login the certificate does not carry; the reason cannot be asked.
    let (code, _, err) = tsh(home.path(), &["ssh", "root@node-1", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("ERROR: access denied: the node refused the certificate for login \"root\""), "{err}");

    let (code, _, err) = tsh(home.path(), &["ssh", "visitor@node-9", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to node-9 through the proxy: node node-9 not found"), "{err}");

    let (code, out, _) = tsh(home.path(), &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Logged in as:       alice"), "{out}");
    let key = tsh::key_paths(home.path(), "127.0.0.1", "alice").private_key;
    assert!(out.contains(&key.display().to_string()), "{out}");
}

#[tokio::test]
async fn foreign_host_ca_and_expired_certificates_are_refused() {
    let pki = Pki { user_ca: SshCa::generate().unwrap(), host_ca: SshCa::generate().unwrap() };
    let addr = start_proxy(&pki).await;

    let other = Pki { user_ca: SshCa::generate().unwrap(), host_ca: SshCa::generate().unwrap() };
    let home = tempfile::tempdir().unwrap();
    login(&other, home.path(), &addr, Duration::from_secs(600));
    let (code, _, err) = tsh(home.path(), &["ssh", "visitor@node-1", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("refusing to connect to the proxy") && err.contains("does not trust"), "{err}");

    let home = tempfile::tempdir().unwrap();
    login(&pki, home.path(), &addr, Duration::ZERO);
    let (code, _, err) = tsh(home.path(), &["ssh", "visitor@node-1", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("certificate expired at") && err.contains("tsh login"), "{err}");
    let (code, out, _) = tsh(home.path(), &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("[EXPIRED]"), "{out}");

    let (code, _, err) = tsh(home.path(), &["--proxy=127.0.0.1:1", "login", "--user=alice"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("ERROR: cannot reach the proxy at 127.0.0.1:1: "), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = tsh(empty.path(), &["status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Not logged in."), "{err}");
}
