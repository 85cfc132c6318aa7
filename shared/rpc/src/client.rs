//! Mutual-TLS gRPC channels. TLS is done here rather than by tonic so that a first join
//! can trust the server by CA pin, and so every client checks the same fixed server name
//! whatever address it dialled, and the system role that name stands for.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use portcullis_pki::Secret;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Endpoint, Uri};

use crate::traced::TracedChannel;

use portcullis_pki::verify::{
    InsecureAcceptAnyServer, PinnedCaVerifier, find_wrong_role, roots_from_ders, server_chain, server_role_for, with_role,
};
use crate::{RpcError, crypto_provider};

/// How the client decides to trust the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// PEM CA certificates.
    Cas(Vec<String>),
    /// `sha256:` pins of the server's CA (first join).
    Pins(Vec<String>),
    /// Trust whatever answers (first join with --insecure).
    Insecure,
}

/// Client TLS settings.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub trust: Trust,
    /// Client certificate (PEM) and key (PEM); none for the join call.
    pub identity: Option<(String, Secret<String>)>,
    /// The name the server certificate must carry, e.g. `auth.portcullis.local`. It also
    /// fixes the system role the server must hold (see [`server_role_for`]).
    pub server_name: String,
}

impl ClientTls {
    /// Settings for a client holding `id`, talking to a server named `server_name`.
    pub fn from_identity(id: &portcullis_pki::Identity, server_name: &str) -> Self {
        ClientTls {
            trust: Trust::Cas(id.tls_ca_pems.clone()),
            identity: Some((id.tls_cert_pem.clone(), id.tls_key_pem.clone())),
            server_name: server_name.to_string(),
        }
    }

    /// The rustls configuration these settings describe (ALPN h2 for gRPC).
    pub fn rustls_config(&self) -> Result<ClientConfig, RpcError> {
        let tls = |e: &dyn std::fmt::Display| RpcError::Tls(e.to_string());
        let builder = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?;
        // Every server name a client checks belongs to one system role; a name without one
        // would leave the role unchecked, so it is refused here rather than trusted.
        let role = server_role_for(&self.server_name).ok_or_else(|| {
            RpcError::Tls(format!(
                "no system role is known for the server name {:?}: a client must check the server's role",
                self.server_name
            ))
        })?;
        let inner: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &self.trust {
            Trust::Cas(pems) => {
                let mut ders = Vec::new();
                for p in pems {
                    ders.extend(portcullis_pki::x509::pem_to_ders(p)?);
                }
                server_chain(roots_from_ders(&ders).map_err(|e| tls(&e))?).map_err(|e| tls(&e))?
            }
            Trust::Pins(pins) => Arc::new(PinnedCaVerifier::new(pins.clone())),
            // The operator asked for it (first join with --insecure); the role is still checked.
            Trust::Insecure => Arc::new(InsecureAcceptAnyServer::dangerously_new()),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(Arc::new(with_role(inner, role)));
        let mut cfg = match &self.identity {
            Some((cert, key)) => {
                let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(cert.as_bytes()).collect();
                let chain = chain.map_err(|e| tls(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).map_err(|e| tls(&e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| tls(&e))?
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, RpcError> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                // Tunnel chunks are up to 64 KiB: let each travel as one HTTP/2 frame
                // (the default is 16 KiB).
                .max_frame_size(crate::MAX_FRAME_SIZE)
        })
        .map_err(|e| RpcError::Connect { addr: addr.to_string(), reason: e.to_string() })
}

fn connector(
    tls: &ClientTls,
) -> Result<
    impl tower::Service<
        Uri,
        Response = TokioIo<tokio_rustls::client::TlsStream<crate::ReadBuffered>>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    RpcError,
> {
    let cfg = Arc::new(tls.rustls_config()?);
    let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| RpcError::Tls(e.to_string()))?;
    Ok(tower::service_fn(move |uri: Uri| {
        let cfg = cfg.clone();
        let name = name.clone();
        async move {
            let host = uri.host().unwrap_or("127.0.0.1").trim_matches(|c| c == '[' || c == ']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = connect_any(host, port).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, crate::read_buffered(tcp))
                .await
                .map_err(|e| match find_wrong_role(&e) {
                    // The role refusal is the whole story: say it plainly, with the address.
                    Some(w) => std::io::Error::other(w.describe(Some(&format!("{host}:{port}")))),
                    None => std::io::Error::other(format!("TLS handshake with {host}:{port} failed: {e}")),
                })?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    }))
}

/// Connects to one of the addresses `host` resolves to, starting at a random one: a name
/// with several addresses (one per proxy) then spreads connections like DNS round robin,
/// and a dead address is skipped.
async fn connect_any(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::other(format!("{host} has no addresses")));
    }
    let start = portcullis_pki::random_bytes::<2>().map(|b| u16::from_le_bytes(b) as usize).unwrap_or(0) % addrs.len();
    let mut last = None;
    for i in 0..addrs.len() {
        match tokio::net::TcpStream::connect(addrs[(start + i) % addrs.len()]).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address answered")))
}

/// Connects now, so an unreachable or untrusted server is reported at once.
pub async fn connect(addr: &str, tls: &ClientTls) -> Result<TracedChannel, RpcError> {
    endpoint(addr)?
        .connect_with_connector(connector(tls)?)
        .await
        .map(TracedChannel::new)
        .map_err(|e| RpcError::Connect { addr: addr.to_string(), reason: error_chain(&e) })
}

/// A channel that connects on first use and reconnects after failures: for long-lived
/// service clients that must ride out auth restarts.
pub fn connect_lazy(addr: &str, tls: &ClientTls) -> Result<TracedChannel, RpcError> {
    Ok(TracedChannel::new(endpoint(addr)?.connect_with_connector_lazy(connector(tls)?)))
}

/// An error and its sources on one line: tonic hides the useful part in the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// A channel to whichever of the auth servers `addrs` answers (each `host:port`; a name
/// with several addresses counts as several servers), failing over between them; connects
/// on first use. For long-lived services.
pub fn connect_auth_lazy(addrs: &[String], tls: &ClientTls) -> Result<TracedChannel, RpcError> {
    Ok(TracedChannel::failover(crate::failover::Failover::new(addrs, tls)?))
}

/// [`connect_auth_lazy`], but first reaches one of the servers, so a one-shot client says
/// at once that auth is unreachable, with every address tried and why.
pub async fn connect_auth(addrs: &[String], tls: &ClientTls) -> Result<TracedChannel, RpcError> {
    let f = crate::failover::Failover::new(addrs, tls)?;
    f.check().await?;
    Ok(TracedChannel::failover(f))
}
