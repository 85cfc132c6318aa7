//! `Drain`: the proxy's one shutdown signal, handed to the web, SSH and tunnel servers.

use std::sync::Arc;

use tokio::sync::watch;

/// A signal that fires once: "stop accepting, let open work finish". Clones share it; any
/// clone may fire it, every clone sees it. Firing it again does nothing.
#[derive(Debug, Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    /// A signal not fired yet.
    pub fn new() -> Self {
        Drain { tx: Arc::new(watch::channel(false).0) }
    }

    /// Fires the signal (idempotent).
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the signal has fired.
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the signal has fired (at once if it already has). Owns what it needs, so
    /// it can be handed to servers that want a `'static` shutdown future.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // Every clone holds the sender, so the channel cannot close while this waits; the
            // guard `wait_for` returns is dropped at once (it is not Send).
            let _ = rx.wait_for(|d| *d).await.map(|_| ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_signal_once_fired() {
        let d = Drain::new();
        let other = d.clone();
        let waiting = tokio::spawn(other.draining());
        assert!(!other.is_draining());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        d.start();
        d.start();
        waiting.await.unwrap();
        assert!(other.is_draining());
        // Already fired: resolves at once.
        other.draining().await;
    }
}
