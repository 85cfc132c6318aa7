//! A TCP stream with a read buffer under TLS that holds memory only while data flows.
//!
//! rustls reads the socket 4 KiB at a time; reading whole TLS records (16 KiB and a little
//! framing) underneath cuts a bulk stream's `recv` calls by four. A root proxy holds one
//! connection per leaf tunnel, most of them idle, so the buffer is taken when the socket is
//! readable and given back once it is drained and the socket has nothing more: an idle
//! connection keeps no read buffer at all.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Read buffer size: one full TLS record.
const TLS_READ_BUFFER: usize = 17 * 1024;

/// See the module doc. Writes pass straight through.
#[derive(Debug)]
pub struct ReadBuffered {
    tcp: TcpStream,
    /// Bytes read from the socket and not yet handed out are `buf[pos..]`; empty (and
    /// unallocated) while the connection is idle.
    buf: Vec<u8>,
    pos: usize,
}

impl ReadBuffered {
    pub fn new(tcp: TcpStream) -> Self {
        ReadBuffered { tcp, buf: Vec::new(), pos: 0 }
    }

    /// The socket (for addresses and socket options).
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    /// Bytes currently allocated for the read buffer (0 while idle).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn drained(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

impl AsyncRead for ReadBuffered {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.drained() {
            let n = (this.buf.len() - this.pos).min(out.remaining());
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        // A caller with room for a whole record needs no buffer in between.
        if out.remaining() >= TLS_READ_BUFFER {
            this.release();
            return Pin::new(&mut this.tcp).poll_read(cx, out);
        }
        loop {
            match this.tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    // Nothing to read: an idle connection holds no buffer.
                    this.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.release();
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {}
            }
            if this.buf.capacity() < TLS_READ_BUFFER {
                this.buf = Vec::with_capacity(TLS_READ_BUFFER);
            }
            this.buf.resize(TLS_READ_BUFFER, 0);
            match this.tcp.try_read(&mut this.buf) {
                Ok(n) => {
                    this.buf.truncate(n);
                    this.pos = 0;
                    let give = n.min(out.remaining());
                    out.put_slice(&this.buf[..give]);
                    this.pos = give;
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: poll again, which registers for the next wake-up.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    this.buf.clear();
                    this.pos = 0;
                    continue;
                }
                Err(e) => {
                    this.release();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl ReadBuffered {
    fn release(&mut self) {
        if self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
        self.pos = 0;
    }
}

impl AsyncWrite for ReadBuffered {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ReadBuffered, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(a), l.accept());
        (ReadBuffered::new(c.unwrap()), s.unwrap().0)
    }

    #[tokio::test]
    async fn small_reads_see_every_byte_and_idle_holds_no_buffer() {
        let (mut r, mut w) = pair().await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < data.len() {
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        let _w = writer.await.unwrap();
        // Drained, and the next read finds nothing: the buffer is given back.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut chunk)).await;
        assert!(idle.is_err(), "no data was expected");
        assert_eq!(r.buffer_capacity(), 0);
    }

    #[tokio::test]
    async fn end_of_stream_reads_zero() {
        let (mut r, w) = pair().await;
        drop(w);
        let mut chunk = [0u8; 16];
        assert_eq!(r.read(&mut chunk).await.unwrap(), 0);
    }
}
