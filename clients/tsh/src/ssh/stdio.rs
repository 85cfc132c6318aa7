//! Standard input and output of a session read and written on the runtime's own threads
//! (non-blocking descriptors polled by tokio) instead of tokio's blocking pool, which costs
//! a thread hand-off and a copy per read and per write: the bulk of tsh's CPU per message
//! when hundreds of sessions echo small lines.
//!
//! Only pipes and sockets qualify. A terminal stays with tokio's blocking stdio, because
//! `O_NONBLOCK` is a property of the open file description, shared with the user's shell;
//! regular files cannot be polled. Standard output also stays blocking when standard error
//! is the same file (`2>&1`): errors printed with `eprintln!` must not meet `EAGAIN`. The
//! original flags are put back when the session ends.

use std::io::{self, IsTerminal};
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Puts a descriptor's original status flags back on drop.
struct Restore<T: AsFd> {
    fd: T,
    flags: OFlag,
}

impl<T: AsFd> Drop for Restore<T> {
    fn drop(&mut self) {
        let _ = fcntl(&self.fd, FcntlArg::F_SETFL(self.flags));
    }
}

/// A standard stream (`io::Stdin`, `io::Stdout`: handles to descriptors 0 and 1) switched
/// to non-blocking mode and registered with tokio.
pub struct Polled<T: AsFd + AsRawFd> {
    fd: AsyncFd<T>,
    _restore: Restore<T>,
}

impl<T: AsFd + AsRawFd + IsTerminal> Polled<T> {
    /// `fd` in non-blocking mode, when it is a pipe or socket that tokio can poll; `again`
    /// is a second handle to the same stream, kept to restore its flags.
    fn new(fd: T, again: T) -> Option<Polled<T>> {
        if fd.is_terminal() {
            return None;
        }
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).ok()?);
        let restore = Restore { fd: again, flags };
        if !flags.contains(OFlag::O_NONBLOCK) {
            fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).ok()?;
        }
        // Regular files and /dev/null cannot be registered (EPERM): `restore` undoes the flag.
        // `new` is deprecated for lacking I/O safety (the descriptor could be closed while
        // registered; its replacement is `unsafe`): the handles here own nothing, and the
        // descriptors behind them stay open for the whole process.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd).ok()?;
        Some(Polled {
            fd,
            _restore: restore,
        })
    }
}

impl<T: AsFd + AsRawFd + Unpin> AsyncRead for Polled<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: readiness was cleared, poll again.
                Err(_would_block) => continue,
            }
        }
    }
}

impl<T: AsFd + AsRawFd + Unpin> AsyncWrite for Polled<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes go straight to the descriptor: nothing is buffered here.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The status flags of standard input and output as they were, put back when dropped: the
/// session holds it until its end, so the flags are back before tsh exits even though the
/// aborted stdin task may drop its reader later.
pub struct SavedFlags {
    _saved: Vec<Restore<std::os::fd::OwnedFd>>,
}

pub fn save_flags() -> SavedFlags {
    let mut saved = Vec::new();
    for fd in [
        io::stdin().as_fd().try_clone_to_owned(),
        io::stdout().as_fd().try_clone_to_owned(),
    ] {
        // A duplicate shares the open file description, and with it the flags.
        if let Ok(fd) = fd
            && let Ok(bits) = fcntl(&fd, FcntlArg::F_GETFL)
        {
            saved.push(Restore {
                fd,
                flags: OFlag::from_bits_truncate(bits),
            });
        }
    }
    SavedFlags { _saved: saved }
}

/// Standard input: polled when possible, else tokio's (blocking-pool) stdin.
pub fn stdin() -> Box<dyn AsyncRead + Send + Unpin> {
    match Polled::new(io::stdin(), io::stdin()) {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdin()),
    }
}

/// Standard output: polled when possible and not the same file as standard error, else
/// tokio's (blocking-pool) stdout.
pub fn stdout() -> Box<dyn AsyncWrite + Send + Unpin> {
    let polled = if same_file(io::stdout(), io::stderr()) {
        None
    } else {
        Polled::new(io::stdout(), io::stdout())
    };
    match polled {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdout()),
    }
}

/// Whether two descriptors are the same file (pipe, socket, terminal...); unknown counts as same.
fn same_file(a: impl AsFd, b: impl AsFd) -> bool {
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_pipe_is_polled_and_its_flags_come_back() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let before = fcntl(&r, FcntlArg::F_GETFL).unwrap();
        {
            let mut reader = Polled::new(r.try_clone().unwrap(), r.try_clone().unwrap())
                .expect("a pipe can be polled");
            let mut writer = Polled::new(w.try_clone().unwrap(), w.try_clone().unwrap())
                .expect("a pipe can be polled");
            assert!(
                OFlag::from_bits_truncate(fcntl(&r, FcntlArg::F_GETFL).unwrap())
                    .contains(OFlag::O_NONBLOCK)
            );
            let read = tokio::spawn(async move {
                let mut got = vec![0u8; 5];
                reader.read_exact(&mut got).await.unwrap();
                got
            });
            writer.write_all(b"hello").await.unwrap();
            assert_eq!(read.await.unwrap(), b"hello");
        }
        assert_eq!(fcntl(&r, FcntlArg::F_GETFL).unwrap(), before);
    }

    #[test]
    fn a_regular_file_is_not_polled() {
        let f = tempfile::tempfile().unwrap();
        let before = fcntl(&f, FcntlArg::F_GETFL).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert!(Polled::new(f.try_clone().unwrap(), f.try_clone().unwrap()).is_none());
        assert_eq!(fcntl(&f, FcntlArg::F_GETFL).unwrap(), before);
    }
}
