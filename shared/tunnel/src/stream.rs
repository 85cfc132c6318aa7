//! [`ChunkStream`]: one tunnelled connection as a byte stream, the same at both ends of a
//! `Dial` stream. Reads come from the other end's inbound chunks; writes go out as chunks of up
//! to [`CHUNK_SIZE`] through a channel feeding the outbound gRPC stream (the proxy's response
//! stream, the agent's request stream). Shutting down (or dropping) the writing half ends the
//! outbound stream, which the other end reads as EOF; the other end ending its stream reads as
//! EOF here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::Stream;
use portcullis_proto::Bytes;
use portcullis_proto::tunnel::Chunk;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::mpsc::error::SendError;
use tonic::Status;

use crate::CHUNK_SIZE;

/// What the outbound channel of a `Dial` stream carries: `Result<Chunk, Status>` for a gRPC
/// response stream (the proxy), plain `Chunk` for a request stream (the agent).
pub trait ChunkItem: Send + 'static {
    fn from_chunk(chunk: Chunk) -> Self;
}

impl ChunkItem for Chunk {
    fn from_chunk(chunk: Chunk) -> Self {
        chunk
    }
}

impl ChunkItem for Result<Chunk, Status> {
    fn from_chunk(chunk: Chunk) -> Self {
        Ok(chunk)
    }
}

type Inbound = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;
type Reserve<T> = Pin<Box<dyn Future<Output = Result<OwnedPermit<T>, SendError<()>>> + Send>>;

/// The proxy's form: its outbound chunks feed a gRPC response stream.
pub type DialStream = ChunkStream<Result<Chunk, Status>>;

/// A connection carried by a `Dial` stream: a [`ChunkReader`] and a [`ChunkWriter`].
pub struct ChunkStream<T: ChunkItem = Result<Chunk, Status>> {
    reader: ChunkReader,
    writer: ChunkWriter<T>,
}

impl<T: ChunkItem> ChunkStream<T> {
    /// Joins the other end's chunks (`inbound`) and the sender feeding our outbound stream.
    pub fn new(inbound: impl Stream<Item = Result<Chunk, Status>> + Send + 'static, outbound: mpsc::Sender<T>) -> Self {
        ChunkStream { reader: ChunkReader::new(inbound), writer: ChunkWriter::new(outbound) }
    }

    /// The two halves, to copy each direction on its own (and end each on its own).
    pub fn into_split(self) -> (ChunkReader, ChunkWriter<T>) {
        (self.reader, self.writer)
    }
}

/// The reading half: the other end's chunks as bytes. A broken inbound stream is an error
/// (`ConnectionReset`); its end is EOF. Empty chunks are skipped.
pub struct ChunkReader {
    inbound: Inbound,
    /// Unread bytes of the last inbound chunk, from `pos`.
    buf: Bytes,
    pos: usize,
    eof: bool,
}

impl ChunkReader {
    pub fn new(inbound: impl Stream<Item = Result<Chunk, Status>> + Send + 'static) -> Self {
        ChunkReader { inbound: Box::pin(inbound), buf: Bytes::new(), pos: 0, eof: false }
    }

    /// The next bytes from the other end without copying them (the rest of the current chunk,
    /// else the next non-empty one); `None` at the end of the stream.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        if self.pos < self.buf.len() {
            let rest = self.buf.slice(self.pos..);
            self.pos = self.buf.len();
            return Ok(Some(rest));
        }
        Ok(None)
    }

    /// Ready when unread bytes are buffered or the stream ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos >= self.buf.len() && !self.eof {
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
        Poll::Ready(Ok(()))
    }
}

/// The writing half: bytes out as chunks of at most [`CHUNK_SIZE`].
pub struct ChunkWriter<T: ChunkItem> {
    /// `None` after shutdown.
    outbound: Option<mpsc::Sender<T>>,
    /// A send slot being waited for (the channel was full).
    reserving: Option<Reserve<T>>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnelled connection is closed")
}

impl<T: ChunkItem> ChunkWriter<T> {
    pub fn new(outbound: mpsc::Sender<T>) -> Self {
        ChunkWriter { outbound: Some(outbound), reserving: None }
    }

    /// Sends `data` without copying it: one chunk per [`CHUNK_SIZE`] slice, or one empty chunk
    /// for empty `data` (which still reaches the other end, e.g. to open the stream).
    pub async fn send(&mut self, mut data: Bytes) -> io::Result<()> {
        // A write that returned `Pending` wrote nothing; its slot is not needed.
        self.reserving = None;
        let tx = self.outbound.as_ref().ok_or_else(closed)?;
        loop {
            let piece = data.split_to(data.len().min(CHUNK_SIZE));
            tx.send(T::from_chunk(Chunk { data: piece })).await.map_err(|_| closed())?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_fill(cx))?;
        // Nothing buffered after a fill is the end of the stream: an empty read.
        let n = out.remaining().min(self.buf.len() - self.pos);
        let start = self.pos;
        out.put_slice(&self.buf[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: ChunkItem> AsyncWrite for ChunkWriter<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
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
                permit.send(T::from_chunk(Chunk { data: Bytes::copy_from_slice(&data[..n]) }));
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Chunks are handed to the outbound stream as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Dropping the last sender ends the outbound stream: the other end sees EOF.
        self.reserving = None;
        self.outbound = None;
        Poll::Ready(Ok(()))
    }
}

impl<T: ChunkItem> AsyncRead for ChunkStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, out)
    }
}

impl<T: ChunkItem> AsyncWrite for ChunkStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;

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

    #[tokio::test]
    async fn the_agent_form_sends_without_copying_and_skips_empty_chunks() {
        let (in_tx, in_rx) = mpsc::channel::<Result<Chunk, Status>>(4);
        let (out_tx, mut out_rx) = mpsc::channel::<Chunk>(8);
        let (mut rd, mut wr) = ChunkStream::new(ReceiverStream::new(in_rx), out_tx).into_split();

        // An empty chunk goes out as one (it opens a stream); a large one is cut at CHUNK_SIZE.
        wr.send(Bytes::new()).await.unwrap();
        let big = Bytes::from(vec![1u8; CHUNK_SIZE + 3]);
        wr.send(big.clone()).await.unwrap();
        let sizes: Vec<usize> = [out_rx.recv().await, out_rx.recv().await, out_rx.recv().await]
            .into_iter()
            .map(|c| c.unwrap().data.len())
            .collect();
        assert_eq!(sizes, vec![0, CHUNK_SIZE, 3]);
        wr.shutdown().await.unwrap();
        assert!(out_rx.recv().await.is_none(), "shutdown ends the outbound stream");
        assert!(wr.send(Bytes::from_static(b"late")).await.is_err());

        in_tx.send(Ok(Chunk { data: Bytes::new() })).await.unwrap();
        in_tx.send(Ok(Chunk { data: Bytes::from_static(b"ssh-") })).await.unwrap();
        in_tx.send(Ok(Chunk { data: Bytes::from_static(b"2.0") })).await.unwrap();
        drop(in_tx);
        let mut two = [0u8; 2];
        rd.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ss");
        assert_eq!(rd.recv().await.unwrap().as_deref(), Some(&b"h-"[..]), "the rest of the chunk");
        assert_eq!(rd.recv().await.unwrap().as_deref(), Some(&b"2.0"[..]));
        assert_eq!(rd.recv().await.unwrap(), None);
        let mut rest = Vec::new();
        assert_eq!(rd.read_to_end(&mut rest).await.unwrap(), 0, "EOF stays EOF");
    }
}
