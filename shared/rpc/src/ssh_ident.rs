//! Checks that a dialled target answers as an SSH server before anything is relayed to it.
//!
//! Proxies and tunnel agents dial nodes on behalf of users. A node's address is checked by
//! the auth service, but a node still picks its port, so without this check a user could be
//! relayed to any other service on the node's host (an HTTP admin port, the auth service).
//! An SSH server speaks first (RFC 4253 §4.2): its identification line must start with
//! `SSH-2.0-` within a short time; whatever was read is handed on to the client unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How an SSH-2.0 server's identification line starts.
pub const SSH_IDENT_PREFIX: &[u8] = b"SSH-2.0-";
/// How long a target may take to identify itself.
pub const IDENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per attempt: an identification line is at most 255 bytes.
const READ_SIZE: usize = 256;

/// Why a target is not taken for an SSH server. The text names no bytes the target sent:
/// those may belong to an internal service and are not the user's to see.
#[derive(Debug, thiserror::Error)]
pub enum NotSsh {
    #[error("it sent no SSH identification line within {0:?} (not an SSH server)")]
    Silent(Duration),
    #[error("it closed the connection without identifying as an SSH server")]
    Closed,
    #[error("it answered with something other than an SSH-2.0 identification line (not an SSH server)")]
    Other,
    #[error("reading its identification line failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads from `r` until its first bytes show an SSH-2.0 server, for at most `wait`.
/// Returns every byte read (at least the `SSH-2.0-` prefix), for the caller to pass on.
pub async fn read_ssh_ident<R: AsyncRead + Unpin>(r: &mut R, wait: Duration) -> Result<Vec<u8>, NotSsh> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::with_capacity(READ_SIZE);
    let mut chunk = [0u8; READ_SIZE];
    loop {
        let n = match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Err(_) => return Err(NotSsh::Silent(wait)),
            Ok(read) => read?,
        };
        if n == 0 {
            return Err(NotSsh::Closed);
        }
        seen.extend_from_slice(&chunk[..n]);
        let compared = seen.len().min(SSH_IDENT_PREFIX.len());
        if seen[..compared] != SSH_IDENT_PREFIX[..compared] {
            return Err(NotSsh::Other);
        }
        if compared == SSH_IDENT_PREFIX.len() {
            return Ok(seen);
        }
    }
}

/// A stream that first yields bytes already read from it (the identification line), then
/// reads on; writes go straight through.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_ssh_server_passes_and_its_bytes_are_kept() {
        let (mut server, mut client) = tokio::io::duplex(1024);
        server.write_all(b"SSH-2.0-").await.unwrap();
        let reader = tokio::spawn(async move {
            let seen = read_ssh_ident(&mut client, Duration::from_secs(5)).await.unwrap();
            let mut rest = Prefixed::new(seen, client);
            let mut all = Vec::new();
            rest.read_to_end(&mut all).await.unwrap();
            all
        });
        // The line arrives in pieces; everything reaches the reader, in order.
        server.write_all(b"Portcullis_1\r\nKEX").await.unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), b"SSH-2.0-Portcullis_1\r\nKEX");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (mut server, mut client) = tokio::io::duplex(1024);
        server.write_all(b"HTTP/1.1 400 Bad Request\r\n").await.unwrap();
        let e = read_ssh_ident(&mut client, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("not an SSH server"), "{e}");

        let (server, mut client) = tokio::io::duplex(1024);
        let e = read_ssh_ident(&mut client, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.to_string(), "it sent no SSH identification line within 100ms (not an SSH server)");
        drop(server);

        let (mut server, mut client) = tokio::io::duplex(1024);
        server.write_all(b"SSH-1.5-old\r\n").await.unwrap();
        assert!(matches!(read_ssh_ident(&mut client, Duration::from_secs(5)).await, Err(NotSsh::Other)));
        drop(server);
        let (server, mut client) = tokio::io::duplex(1024);
        drop(server);
        assert!(matches!(read_ssh_ident(&mut client, Duration::from_secs(5)).await, Err(NotSsh::Closed)));
    }
}
