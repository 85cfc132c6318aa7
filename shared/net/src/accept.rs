//! A TCP listener that admits connections through a [`Gate`] and sets up each socket
//! (no Nagle delay, TCP keep-alives).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};

use crate::gate::{ConnGuard, Gate};

/// Missed TCP keep-alive probes after which the kernel drops the peer.
const KEEPALIVE_PROBES: u32 = 3;
/// Pause after a failed accept (usually out of descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Small answers must not wait for delayed ACKs, and dead peers (a client whose host went
/// away) must be found without traffic: keep-alive probes after `interval` idle, every
/// `interval`, dropped after 3 unanswered.
pub fn configure_socket(tcp: &TcpStream, interval: Duration) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("set_nodelay failed: {e}");
    }
    let ka = TcpKeepalive::new().with_time(interval).with_interval(interval).with_retries(KEEPALIVE_PROBES);
    if let Err(e) = SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!("setting TCP keep-alive failed: {e}");
    }
}

/// A listener whose `accept` yields only admitted connections.
#[derive(Debug)]
pub struct GatedListener {
    listener: TcpListener,
    gate: Gate,
    /// When an accept error was last logged (they come in bursts when descriptors run out).
    last_error_log: std::sync::Mutex<Option<Instant>>,
}

impl GatedListener {
    pub fn new(listener: TcpListener, gate: Gate) -> Self {
        GatedListener { listener, gate, last_error_log: Default::default() }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next admitted connection with its place in the gate. Refused connections are
    /// closed at once; accept errors are logged (at most once a second) and retried after
    /// a pause. Cancel-safe: nothing is lost when the future is dropped.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, ConnGuard) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => match self.gate.admit(peer) {
                    Ok(guard) => {
                        configure_socket(&tcp, self.gate.limits().keepalive_interval);
                        return (tcp, peer, guard);
                    }
                    // Dropping the socket closes it: the client sees the connection end.
                    Err(_) => drop(tcp),
                },
                Err(e) => {
                    let log = {
                        let mut last = self.last_error_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                        if due {
                            *last = Some(Instant::now());
                        }
                        due
                    };
                    if log {
                        tracing::warn!(local = ?self.listener.local_addr().ok(), "accepting a connection failed: {e}");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::ConnectionLimits;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_beyond_the_per_address_limit_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits { max_per_address: 2, ..ConnectionLimits::AUTH };
        let gated = GatedListener::new(listener, Gate::new("test_accept", limits));
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (tcp, _, guard) = gated.accept().await;
                held.push((tcp, guard));
            }
        });
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("the third is closed");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        server.abort();
    }
}
