//! `DialStream`: one tunnelled connection as a byte stream. Reads come from the agent's
//! inbound `Dial` chunks; writes go out as chunks of up to 64 KiB through the gRPC response stream.
//! Shutting down (or dropping) ends the response stream, which the agent reads as EOF and
//! answers by closing its TCP connection; the agent ending its stream reads as EOF here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::Stream;
use portcullis_proto::Bytes;
use portcullis_proto::tunnel::Chunk;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::OwnedPermit;
use tonic::Status;

/// Largest payload of one outgoing chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;

type Outbound = mpsc::Sender<Result<Chunk, Status>>;
type Inbound = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;
type Reserve = Pin<Box<dyn Future<Output = Result<OwnedPermit<Result<Chunk, Status>>, SendError<()>>> + Send>>;

/// A connection carried by a `Dial` stream.
pub struct DialStream {
    inbound: Inbound,
    /// Unread bytes of the last inbound chunk, from `pos`.
    buf: Bytes,
    pos: usize,
    eof: bool,
    /// `None` after shutdown.
    outbound: Option<Outbound>,
    /// A send slot being waited for (the channel was full).
    reserving: Option<Reserve>,
}

impl DialStream {
    /// Joins the agent's chunks (`inbound`) and the sender feeding our response stream.
    pub fn new(inbound: impl Stream<Item = Result<Chunk, Status>> + Send + 'static, outbound: Outbound) -> Self {
        DialStream { inbound: Box::pin(inbound), buf: Bytes::new(), pos: 0, eof: false, outbound: Some(outbound), reserving: None }
    }
}

impl AsyncRead for DialStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.remaining().min(self.buf.len() - self.pos);
                let start = self.pos;
                out.put_slice(&self.buf[start..start + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.inbound.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => {
                    self.buf = chunk.data;
                    self.pos = 0;
                }
                None => self.eof = true,
                Some(Err(status)) => {
                    self.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("the tunnelled connection broke: {}", status.message()),
                    )));
                }
            }
        }
    }
}

impl AsyncWrite for DialStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the tunnelled connection is closed");
        if self.reserving.is_none() {
            let Some(tx) = self.outbound.clone() else {
                return Poll::Ready(Err(closed()));
            };
            self.reserving = Some(Box::pin(tx.reserve_owned()));
        }
        let Some(reserving) = self.reserving.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        let slot = ready!(reserving.as_mut().poll(cx));
        self.reserving = None;
        match slot {
            Ok(permit) => {
                let n = data.len().min(CHUNK_SIZE);
                permit.send(Ok(Chunk { data: Bytes::copy_from_slice(&data[..n]) }));
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Chunks are handed to the response stream as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Dropping the last sender ends the response stream: the agent sees EOF.
        self.reserving = None;
        self.outbound = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::wrappers::ReceiverStream;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn bytes_flow_both_ways_in_bounded_chunks_and_eof_ends_streams() {
        let (in_tx, in_rx) = mpsc::channel::<Result<Chunk, Status>>(4);
        let (out_tx, out_rx) = mpsc::channel(2);
        let mut s = DialStream::new(ReceiverStream::new(in_rx), out_tx);
        let mut out = ReceiverStream::new(out_rx);

        in_tx.send(Ok(Chunk { data: Bytes::from_static(b"hello ") })).await.unwrap();
        in_tx.send(Ok(Chunk { data: Bytes::from_static(b"world") })).await.unwrap();
        drop(in_tx);
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");

        let big = vec![7u8; CHUNK_SIZE * 2 + 5];
        let writer = async {
            s.write_all(&big).await.unwrap();
            s.shutdown().await.unwrap();
            assert!(s.write_all(b"late").await.is_err());
        };
        let reader = async {
            let mut sizes = Vec::new();
            while let Some(c) = out.next().await {
                sizes.push(c.unwrap().data.len());
            }
            sizes
        };
        let ((), sizes) = tokio::join!(writer, reader);
        assert_eq!(sizes, vec![CHUNK_SIZE, CHUNK_SIZE, 5]);
    }

    #[tokio::test]
    async fn a_broken_stream_is_an_error() {
        let (in_tx, in_rx) = mpsc::channel::<Result<Chunk, Status>>(1);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let mut s = DialStream::new(ReceiverStream::new(in_rx), out_tx);
        in_tx.send(Err(Status::cancelled("gone"))).await.unwrap();
        let mut buf = [0u8; 4];
        let e = s.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }
}
