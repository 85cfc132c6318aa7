//! SSH plumbing: the russh client with host-certificate checks, the session I/O, the terminal.

pub mod client;
pub mod route;
pub mod session;
pub mod stdio;
pub mod subsystem_stream;
pub mod tty;
