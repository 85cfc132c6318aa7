//! One SSH session on a node: PTY, exec or shell, and the byte pumps between the local
//! terminal and the channel; ends with the remote exit status.

use std::sync::Arc;

use russh::client::{Handle, Handler};
use russh::{ChannelMsg, Sig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::TshError;
use crate::ssh::tty::{self, RawMode};

/// How to run the session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Command line to exec; `None` for a login shell.
    pub command: Option<String>,
    /// Ask the node for a pseudo-terminal.
    pub pty: bool,
    /// Put the local terminal in raw mode and forward window changes (stdin is a terminal).
    pub raw: bool,
    /// `TERM` to announce with the PTY request.
    pub term: String,
}

/// The replies the node owes us, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Pty,
    Start,
}

/// Runs the session and returns the remote exit status.
pub async fn run<H: Handler>(handle: &Handle<H>, opts: &SessionOptions) -> Result<i32, TshError> {
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| TshError::Ssh(format!("the node refused a session channel: {e}")))?;
    let mut pending = Vec::new();
    let send_err = |e: russh::Error| TshError::Ssh(format!("session request failed: {e}"));
    if opts.pty {
        let (cols, rows) = tty::window_size();
        channel
            .request_pty(true, &opts.term, cols, rows, 0, 0, &[])
            .await
            .map_err(send_err)?;
        pending.push(Pending::Pty);
    }
    match &opts.command {
        Some(cmd) => channel.exec(true, cmd.as_bytes()).await.map_err(send_err)?,
        None => channel.request_shell(true).await.map_err(send_err)?,
    }
    pending.push(Pending::Start);

    let raw = if opts.raw {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let (mut reader, writer) = channel.split();
    let writer = Arc::new(writer);
    let _flags = crate::ssh::stdio::save_flags();

    let stdin_task = {
        let w = writer.clone();
        tokio::spawn(async move {
            let mut stdin = crate::ssh::stdio::stdin();
            // 64 KiB: bulk input (`tsh ssh node cmd < file`) goes out in fewer, fuller packets.
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = w.eof().await;
                        break;
                    }
                    Ok(n) => {
                        if w.data(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    };
    let winch_task = if opts.raw {
        let w = writer.clone();
        Some(tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut sig) = signal(SignalKind::window_change()) else {
                return;
            };
            while sig.recv().await.is_some() {
                let (cols, rows) = tokio::task::spawn_blocking(tty::window_size)
                    .await
                    .unwrap_or((80, 24));
                if w.window_change(cols, rows, 0, 0).await.is_err() {
                    break;
                }
            }
        }))
    } else {
        None
    };

    let result = pump_output(&mut reader, &mut pending).await;

    stdin_task.abort();
    if let Some(t) = winch_task {
        t.abort();
    }
    // Restore the terminal before anything else is printed.
    drop(raw);
    let (status, signal_note) = result?;
    if let Some(note) = signal_note {
        eprintln!("{note}");
    }
    status.ok_or(TshError::NoExitStatus)
}

/// Copies channel output to stdout/stderr until the channel closes; returns the exit status
/// and a note to print when the remote process died of a signal.
async fn pump_output(
    reader: &mut russh::ChannelReadHalf,
    pending: &mut Vec<Pending>,
) -> Result<(Option<i32>, Option<String>), TshError> {
    let mut stdout = crate::ssh::stdio::stdout();
    let mut stderr = tokio::io::stderr();
    let mut status = None;
    let mut note = None;
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                // A closed local stdout (e.g. `| head`) ends our interest in the output.
                let written = write_out(&mut stdout, &data).await;
                if written.is_err() {
                    break;
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                let _ = write_out(&mut stderr, &data).await;
            }
            ChannelMsg::ExitStatus { exit_status } => {
                status = Some(i32::try_from(exit_status).unwrap_or(255));
            }
            ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            } => {
                status = Some(128 + signal_number(&signal_name));
                let msg = if error_message.is_empty() {
                    String::new()
                } else {
                    format!(": {error_message}")
                };
                note = Some(format!(
                    "remote process killed by signal {signal_name:?}{msg}"
                ));
            }
            ChannelMsg::Success if !pending.is_empty() => {
                pending.remove(0);
            }
            ChannelMsg::Failure => {
                let what = if pending.is_empty() {
                    Pending::Start
                } else {
                    pending.remove(0)
                };
                match what {
                    Pending::Pty => tracing::warn!("the node refused a pseudo-terminal"),
                    Pending::Start => {
                        return Err(TshError::Ssh(
                            "the node refused to start the shell or command".into(),
                        ));
                    }
                }
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = stdout.flush().await;
    Ok((status, note))
}

async fn write_out<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// Signal numbers as Linux has them, for the conventional `128 + n` exit status.
fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 127,
    }
}
