//! Fake proxy and node SSH servers (russh), and the profile a login would leave behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::Secret;
use portcullis_pki::ssh::{HostCertRequest, SshCa, UserCertRequest, generate_key};
use russh::keys::{Certificate, PrivateKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tsh::profile::{Credentials, Profile, Store};

pub struct Pki {
    pub user_ca: SshCa,
    pub host_ca: SshCa,
}

impl Pki {
    pub fn new() -> Self {
        Pki {
            user_ca: SshCa::generate().unwrap(),
            host_ca: SshCa::generate().unwrap(),
        }
    }
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
    portcullis_pki::ssh::verify_user_cert(
        cert,
        std::slice::from_ref(pki_user_ca),
        portcullis_pki::unix_now(),
    )
    .is_ok_and(|info| info.principals.iter().any(|p| p == user))
}

struct Proxy {
    user_ca: russh::keys::PublicKey,
    node_config: Arc<server::Config>,
    sessions: HashMap<ChannelId, Channel<Msg>>,
}

impl Proxy {
    /// Serves the node's SSH on `stream`, as if the proxy had dialled it.
    fn serve_node<S>(&self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let node = Node {
            user_ca: self.user_ca.clone(),
            channels: HashMap::new(),
            pty: None,
        };
        let config = self.node_config.clone();
        tokio::spawn(async move {
            if let Ok(running) = server::run_stream(config, stream, node).await {
                let _ = running.await;
            }
        });
    }
}

impl server::Handler for Proxy {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        // The proxy only checks the certificate is genuine; logins are the node's business.
        let genuine = portcullis_pki::ssh::verify_user_cert(
            cert,
            std::slice::from_ref(&self.user_ca),
            portcullis_pki::unix_now(),
        )
        .is_ok();
        let _ = user;
        Ok(if genuine {
            Auth::Accept
        } else {
            Auth::reject()
        })
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
                .reject(ChannelOpenFailure::Other {
                    code: 2,
                    reason: format!("node {host} not found"),
                })
                .await;
            return Ok(());
        }
        reply.accept().await;
        self.serve_node(channel.into_stream());
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(channel) = self.sessions.remove(&id) else {
            return Ok(());
        };
        // Like the real proxy: accept first, then dial; a failed dial is told on stderr.
        session.channel_success(id)?;
        if name != "proxy:node-1:0@leaf" {
            session.extended_data(id, 1, format!("no route for {name}\r\n").into_bytes())?;
            session.exit_status_request(id, 1)?;
            session.eof(id)?;
            session.close(id)?;
            return Ok(());
        }
        self.serve_node(channel.into_stream());
        Ok(())
    }
}

struct Node {
    user_ca: russh::keys::PublicKey,
    channels: HashMap<ChannelId, Channel<Msg>>,
    pty: Option<String>,
}

impl server::Handler for Node {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(if cert_ok(&self.user_ca, user, cert) {
            Auth::Accept
        } else {
            Auth::reject()
        })
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

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pty = Some(format!("{term} {cols}x{rows}"));
        session.channel_success(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let cmd = String::from_utf8_lossy(data).to_string();
        let out = match &self.pty {
            Some(pty) => format!("ran: {cmd} (pty {pty})\r\n"),
            None => format!("ran: {cmd}\n"),
        };
        session.data(channel, out.into_bytes())?;
        session.extended_data(channel, 1, b"to stderr\n".to_vec())?;
        let code = cmd
            .strip_prefix("exit ")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        session.exit_status_request(channel, code)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

pub async fn start_proxy(pki: &Pki) -> String {
    let (pkey, pcert) = host_identity(pki, "proxy", "Proxy");
    let (nkey, ncert) = host_identity(pki, "node-1", "Node");
    let (user_ca, node_config) = (pki.user_ca.public_key().clone(), server_config(nkey, ncert));
    let config = server_config(pkey, pcert);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = config.clone();
            let handler = Proxy {
                user_ca: user_ca.clone(),
                node_config: node_config.clone(),
                sessions: HashMap::new(),
            };
            tokio::spawn(async move {
                if let Ok(running) = server::run_stream(config, tcp, handler).await {
                    let _ = running.await;
                }
            });
        }
    });
    addr
}

pub fn login(pki: &Pki, home: &std::path::Path, ssh_addr: &str, ttl: Duration) {
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
        // The fake's "leaf" node is signed by the same CA; tsh trusts it for leaf hosts only.
        leaf_host_cas: vec![("leaf".into(), pki.host_ca.public_key().clone())],
    };
    store.save_credentials(&profile, &creds).unwrap();
    store.save(&profile).unwrap();
}
