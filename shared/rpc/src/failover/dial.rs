//! Dialling one resolved auth address (TCP then TLS, under one deadline) and wording why a
//! dial or a call failed, short enough to list one reason per address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tonic::transport::Uri;

use portcullis_pki::verify::find_wrong_role;

/// A TLS stream to one auth server, as the tonic connector hands it over.
pub(crate) type Stream = TokioIo<tokio_rustls::client::TlsStream<crate::ReadBuffered>>;

/// Everything needed to open a verified TLS connection to any auth address.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) cfg: Arc<ClientConfig>,
    pub(crate) name: ServerName<'static>,
    /// Bounds TCP connect plus TLS handshake: a server that accepts and never answers
    /// counts as dead after this long.
    pub(crate) timeout: Duration,
}

impl Dialer {
    /// Opens a TCP connection to `addr` and completes the TLS handshake, or says why not.
    pub(crate) async fn dial(&self, addr: SocketAddr) -> std::io::Result<Stream> {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            tokio_rustls::TlsConnector::from(self.cfg.clone())
                .connect(self.name.clone(), crate::read_buffered(tcp))
                .await
                .map_err(|e| match find_wrong_role(&e) {
                    // The role refusal is the whole story: say it plainly, with the address.
                    Some(w) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, w.describe(Some(&addr.to_string()))),
                    None => std::io::Error::other(format!("TLS handshake failed: {e}")),
                })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r.map(TokioIo::new),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out after {}", secs(self.timeout)))),
        }
    }

    /// A tonic connector that always dials `addr`, whatever URI tonic passes.
    pub(crate) fn connector(
        &self,
        addr: SocketAddr,
    ) -> impl tower::Service<Uri, Response = Stream, Error = std::io::Error, Future = impl Send> + Clone + Send + 'static
    {
        let dialer = self.clone();
        tower::service_fn(move |_: Uri| {
            let dialer = dialer.clone();
            async move { dialer.dial(addr).await }
        })
    }
}

/// `1s`, `500ms`: durations as people write them.
pub(crate) fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// Why a dial or a call failed, in a few words: the innermost I/O error's kind when it is
/// one people know (refused, reset, timed out), else the whole chain without tonic's and
/// hyper's generic wrappers.
pub(crate) fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io = None;
    while let Some(err) = cur {
        if let Some(i) = err.downcast_ref::<std::io::Error>() {
            io = Some(i);
        }
        cur = err.source();
    }
    if let Some(i) = io {
        use std::io::ErrorKind::*;
        let short = match i.kind() {
            ConnectionRefused => Some("connection refused"),
            ConnectionReset => Some("connection reset"),
            ConnectionAborted => Some("connection aborted"),
            BrokenPipe => Some("connection closed"),
            HostUnreachable => Some("host unreachable"),
            NetworkUnreachable => Some("network unreachable"),
            _ => None,
        };
        if let Some(s) = short {
            return s.to_string();
        }
        // Our own errors (timed out, TLS, wrong role) already read well on their own.
        if i.get_ref().is_some() {
            return i.to_string();
        }
    }
    let chain = crate::client::error_chain(e);
    let trimmed = chain.trim_start_matches("transport error: ").trim_start_matches("transport error");
    let trimmed = trimmed.trim_start_matches(": ");
    if trimmed.is_empty() { chain } else { trimmed.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_short() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(reason(&refused), "connection refused");
        let timed = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out after 1s");
        assert_eq!(reason(&timed), "timed out after 1s");
        assert_eq!(secs(Duration::from_millis(1500)), "1500ms");
        assert_eq!(secs(Duration::from_secs(1)), "1s");
    }
}
