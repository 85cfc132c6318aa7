//! The proxy subsystem channel as the byte stream the node's SSH session runs on, read
//! straight from the channel (no pipe, no pump tasks), keeping the proxy's stderr text.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use russh::{ChannelMsg, ChannelReadHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ssh::client::SharedState;

type Next = Pin<Box<dyn Future<Output = (ChannelReadHalf, Option<ChannelMsg>)> + Send>>;

/// Reads the channel's data and writes data to it. Text on the channel's stderr is what the
/// proxy says when it cannot reach the node; it goes to `state.open_failure` for the user.
pub struct SubsystemStream {
    /// The read half while no message is awaited.
    reader: Option<ChannelReadHalf>,
    /// The read half, moved into the wait for the next message.
    next: Option<Next>,
    data: bytes::Bytes,
    eof: bool,
    stderr: Vec<u8>,
    state: SharedState,
    writer: Pin<Box<dyn AsyncWrite + Send>>,
}

impl SubsystemStream {
    /// `early` is data that arrived before the subsystem was confirmed.
    pub fn new(
        reader: ChannelReadHalf,
        writer: impl AsyncWrite + Send + 'static,
        early: Vec<u8>,
        state: SharedState,
    ) -> Self {
        SubsystemStream {
            reader: Some(reader),
            next: None,
            data: bytes::Bytes::from(early),
            eof: false,
            stderr: Vec::new(),
            state,
            writer: Box::pin(writer),
        }
    }

    fn keep_stderr(&mut self, more: &[u8]) {
        self.stderr.extend_from_slice(more);
        let text = String::from_utf8_lossy(&self.stderr).trim().to_string();
        if let Ok(mut s) = self.state.lock() {
            s.open_failure = Some(text);
        }
    }
}

impl AsyncRead for SubsystemStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.data.is_empty() {
                let n = out.remaining().min(self.data.len());
                let chunk = self.data.split_to(n);
                out.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            if self.next.is_none() {
                let Some(mut reader) = self.reader.take() else {
                    self.eof = true;
                    continue;
                };
                self.next = Some(Box::pin(async move {
                    let msg = reader.wait().await;
                    (reader, msg)
                }));
            }
            let Some(next) = self.next.as_mut() else { continue };
            let (reader, msg) = ready!(next.as_mut().poll(cx));
            self.next = None;
            self.reader = Some(reader);
            match msg {
                Some(ChannelMsg::Data { data }) => self.data = data,
                Some(ChannelMsg::ExtendedData { data, .. }) => self.keep_stderr(&data),
                Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => self.eof = true,
                Some(_) => {}
            }
        }
    }
}

impl AsyncWrite for SubsystemStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    /// Sends EOF on the channel.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}
