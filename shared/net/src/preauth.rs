//! The pre-authentication deadline of an SSH connection: the handler marks the connection
//! authenticated; the task serving it disconnects clients that are not by the deadline, and
//! cuts the socket ([`PreAuth::cut`]) of those too stuck (mid key exchange) to be told.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a session gets to close by itself once told why, and once cut.
const GOODBYE: std::time::Duration = std::time::Duration::from_secs(1);

/// The client did not authenticate in time; its connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

#[derive(Debug, Default)]
struct Inner {
    authenticated: AtomicBool,
    cut: AtomicBool,
    /// The wakers of the task using the stream, so cutting wakes it; kept only until the
    /// connection authenticates.
    read_waker: Mutex<Option<Waker>>,
    write_waker: Mutex<Option<Waker>>,
}

/// Whether a connection has authenticated, and the switch that cuts it; clones share both.
#[derive(Debug, Clone, Default)]
pub struct PreAuth(Arc<Inner>);

impl PreAuth {
    /// Marks the connection authenticated: the deadline no longer applies.
    pub fn authenticated(&self) {
        self.0.authenticated.store(true, Ordering::Release);
        // Nothing will cut it any more: drop the wakers.
        self.0.read_waker.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.0.write_waker.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    pub fn is_authenticated(&self) -> bool {
        self.0.authenticated.load(Ordering::Acquire)
    }

    /// Resolves at `deadline` if the connection has not authenticated by then; never
    /// otherwise. Meant for a `select!` beside the session.
    pub async fn expired(&self, deadline: tokio::time::Instant) {
        tokio::time::sleep_until(deadline).await;
        if self.is_authenticated() {
            std::future::pending::<()>().await;
        }
    }

    /// Drives `session` (serving a stream from [`PreAuth::wrap`]) to its end. If the client
    /// has not authenticated by `deadline`, runs `say_why` (e.g. an SSH disconnect message,
    /// which a session only sends once its key exchange is done), gives the session a moment
    /// to close, then cuts the stream. `Err(Expired)` tells the caller it was cut short.
    pub async fn drive<F: std::future::Future>(
        &self,
        session: F,
        deadline: tokio::time::Instant,
        say_why: impl std::future::Future<Output = ()>,
    ) -> Result<F::Output, Expired> {
        tokio::pin!(session);
        tokio::select! {
            out = &mut session => return Ok(out),
            () = self.expired(deadline) => {}
        }
        let told = tokio::time::timeout(GOODBYE, async {
            say_why.await;
            (&mut session).await;
        })
        .await;
        if told.is_err() {
            self.cut();
            let _ = tokio::time::timeout(GOODBYE, &mut session).await;
        }
        Err(Expired)
    }

    /// Wraps the connection's stream so that [`PreAuth::cut`] ends it.
    pub fn wrap<S>(&self, stream: S) -> Cuttable<S> {
        Cuttable { inner: stream, switch: self.clone() }
    }

    /// Ends the wrapped stream: reads see end of file, writes fail, so whoever serves it
    /// (an SSH session stuck in key exchange) finishes and drops the socket.
    pub fn cut(&self) {
        self.0.cut.store(true, Ordering::Release);
        for slot in [&self.0.read_waker, &self.0.write_waker] {
            if let Some(w) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
                w.wake();
            }
        }
    }

    /// Registers the task's waker (until authenticated), then says whether the stream is cut.
    /// In that order: a cut after the check finds the waker and wakes it.
    fn register_and_check(&self, slot: &Mutex<Option<Waker>>, cx: &Context<'_>) -> bool {
        if !self.is_authenticated() {
            let mut w = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        self.0.cut.load(Ordering::Acquire)
    }
}

/// A stream that [`PreAuth::cut`] can end.
#[derive(Debug)]
pub struct Cuttable<S> {
    inner: S,
    switch: PreAuth,
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.switch.register_and_check(&self.switch.0.read_waker, cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

fn cut_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection cut: not authenticated in time")
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.switch.register_and_check(&self.switch.0.write_waker, cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.switch.register_and_check(&self.switch.0.write_waker, cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.switch.register_and_check(&self.switch.0.write_waker, cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn expires_only_when_not_authenticated() {
        let p = PreAuth::default();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        assert!(tokio::time::timeout(Duration::from_secs(5), p.expired(deadline)).await.is_ok());
        let q = PreAuth::default();
        q.clone().authenticated();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        assert!(tokio::time::timeout(Duration::from_millis(400), q.expired(deadline)).await.is_err());
    }

    #[tokio::test]
    async fn drive_cuts_a_session_that_ignores_the_goodbye() {
        let (a, _b) = tokio::io::duplex(64);
        let p = PreAuth::default();
        let mut s = p.wrap(a);
        // A session stuck reading (as russh is during a key exchange the client stalls).
        let session = async move {
            let mut buf = [0u8; 8];
            s.read(&mut buf).await.ok()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        let started = std::time::Instant::now();
        let out = p.drive(session, deadline, async {}).await;
        assert_eq!(out, Err(Expired));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // An authenticated one runs to its end.
        let q = PreAuth::default();
        q.authenticated();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(10);
        let out = q.drive(async { tokio::time::sleep(Duration::from_millis(100)).await; 7 }, deadline, async {}).await;
        assert_eq!(out, Ok(7));
    }

    #[tokio::test]
    async fn cutting_ends_a_pending_read_and_fails_writes() {
        let (a, _b) = tokio::io::duplex(64);
        let p = PreAuth::default();
        let mut s = p.wrap(a);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = s.read(&mut buf).await;
            (n.ok(), s.write_all(b"x").await.is_err())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.cut();
        let (n, write_failed) = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("woken").expect("task");
        assert_eq!(n, Some(0), "a cut stream reads as closed");
        assert!(write_failed, "writes to a cut stream fail");
    }
}
