//! The trace preamble: one line a proxy or tunnel agent writes on a new connection to a node
//! before the SSH bytes, so the node's session span joins the trace of the hop that dialled
//! it. SSH itself has no place for it (the session is end to end between tsh and the node).
//!
//! Format: `PORTCULLIS-TRACE <traceparent>\r\n`. A node reads it when the connection starts
//! with it and otherwise leaves the bytes alone; it carries no authority (only trace ids).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFIX: &[u8] = b"PORTCULLIS-TRACE ";
/// Longest preamble line accepted.
const MAX_LINE: usize = 200;

/// Writes the current span's trace context as a preamble, if a span is being exported.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    if let Some(tp) = crate::current_traceparent() {
        w.write_all(format!("PORTCULLIS-TRACE {tp}\r\n").as_bytes()).await?;
    }
    Ok(())
}

/// Writes the trace preamble, or one saying there is no trace (`PORTCULLIS-TRACE -`): a
/// node stops waiting for a preamble at once and sends its SSH identification line, which
/// a dialler that checks the line before relaying (see `portcullis_rpc::ssh_ident`) needs
/// without the node's preamble wait. A node reads `-` as "no trace".
pub async fn write_or_none<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    match crate::current_traceparent() {
        Some(tp) => w.write_all(format!("PORTCULLIS-TRACE {tp}\r\n").as_bytes()).await,
        None => w.write_all(b"PORTCULLIS-TRACE -\r\n").await,
    }
}

/// Reads a preamble from the start of `tcp` when there is one, leaving the SSH bytes
/// unread. Waits at most `wait` for the first bytes (a client that waits for the server's
/// banner sends nothing first). Returns the `traceparent`.
pub async fn read(tcp: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = [0u8; MAX_LINE];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        let seen = &buf[..n];
        let prefix_len = PREFIX.len().min(n);
        if seen[..prefix_len] != PREFIX[..prefix_len] {
            return None; // SSH (or anything else): not ours
        }
        if let Some(end) = seen.iter().position(|b| *b == b'\n') {
            let mut line = vec![0u8; end + 1];
            tcp.read_exact(&mut line).await.ok()?;
            let text = String::from_utf8_lossy(&line[PREFIX.len()..]).trim().to_string();
            return valid(&text).then_some(text);
        }
        if n == MAX_LINE {
            return None;
        }
        // Part of the line has arrived: wait for the rest.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`.
fn valid(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2].iter().zip(&parts).all(|(len, p)| p.len() == *len && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn preamble_is_read_and_ssh_bytes_are_left() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"PORTCULLIS-TRACE 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nSSH-2.0-x\r\n")
                .await
                .unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        let tp = read(&mut s, Duration::from_secs(1)).await;
        assert_eq!(tp.as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        let mut rest = [0u8; 11];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"SSH-2.0-x\r\n");
        drop(client.await.unwrap());

        // Plain SSH: nothing consumed.
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"SSH-2.0-y\r\n").await.unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        assert_eq!(read(&mut s, Duration::from_secs(1)).await, None);
        let mut rest = [0u8; 11];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"SSH-2.0-y\r\n");
        drop(client.await.unwrap());

        // "No trace": the line is consumed at once, without waiting, and the SSH bytes stay.
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            write_or_none(&mut c).await.unwrap();
            c.write_all(b"SSH-2.0-z\r\n").await.unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        assert_eq!(read(&mut s, Duration::from_secs(5)).await, None);
        let mut rest = [0u8; 11];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"SSH-2.0-z\r\n");
        drop(client.await.unwrap());

        // A silent client: give up after the wait.
        let _c = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        assert_eq!(read(&mut s, Duration::from_millis(50)).await, None);
    }
}
