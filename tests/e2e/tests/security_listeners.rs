//! Issue 11 item 6, end to end: every listener closes clients that never finish the TLS or
//! SSH handshake or never authenticate, and refuses connections beyond its per-address cap,
//! so idle connections cannot exhaust a service (`tctl status` still answers). Floods come
//! from other loopback addresses (127.0.0.2 and up) than the legitimate clients.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_e2e::*;

const TOKEN: &str = "listener-test-static-token";

/// Limits every test service runs with: short timeouts so the test waits seconds, not minutes.
const LIMITS: &str = "  connection_limits:\n    handshake_timeout: 2s\n    pre_auth_timeout: 3s\n    max_connections_per_address: 4\n    max_connections: 64\n";

/// An auth service with low connection limits (`per_address` for its listener).
fn start_auth(dir: &Path, per_address: usize, handshake: &str, diag_port: u16) -> (Proc, u16) {
    let port = free_port();
    let cfg = format!(
        "version: v3\nteleport:\n  nodename: limits-auth\n  data_dir: {data}\n  log: {{severity: DEBUG}}\nauth_service:\n  cluster_name: limits.example.com\n  listen_addr: 127.0.0.1:{port}\n  tokens: [\"node,proxy:{TOKEN}\"]\n  connection_limits:\n    handshake_timeout: {handshake}\n    max_connections_per_address: {per_address}\n    max_connections: 1000\n",
        data = dir.join("auth").display(),
    );
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("auth.yaml"), cfg).expect("auth config");
    let p = Proc::spawn(
        "auth",
        Command::new(bin("portcullis-auth"))
            .args(["start", "-c"])
            .arg(dir.join("auth.yaml"))
            .arg(format!("--diag-addr=127.0.0.1:{diag_port}")),
        dir.join("auth.log"),
    );
    wait_port(port);
    wait_for("admin identity", Duration::from_secs(30), || dir.join("auth/admin-identity.json").exists().then_some(()));
    (p, port)
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `src`.
fn connect_from(src: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{src}:0").parse().expect("source address");
    sock.bind(&from.into()).unwrap_or_else(|e| panic!("binding {src}: {e}"));
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    sock.connect(&to.into()).unwrap_or_else(|e| panic!("connecting from {src} to {to}: {e}"));
    sock.into()
}

/// What a connection received until the server closed it, and when, or `None` if it was
/// still open after `within`.
struct Closed {
    bytes: Vec<u8>,
    after: Duration,
}

fn wait_closed(s: &mut TcpStream, within: Duration) -> Option<Closed> {
    let start = Instant::now();
    let mut bytes = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(Closed { bytes, after: start.elapsed() }),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(Closed { bytes, after: start.elapsed() }),
        }
    }
    None
}

/// Reads the SSH version line the server sends first.
fn read_banner(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 255 {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// `portcullis_listener_refused_connections_total` of `listener` on a diagnostic port.
fn refused(diag_port: u16, listener: &str) -> f64 {
    metric(&scrape(diag_port), "portcullis_listener_refused_connections_total", &[("listener", listener), ("reason", "per_address")])
}

#[test]
fn auth_closes_silent_clients_and_caps_each_address_while_tctl_still_answers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let diag = free_port();
    let (mut auth, port) = start_auth(tmp.path(), 8, "3s", diag);
    let tctl = |args: &[&str]| run_cmd(Command::new(bin("tctl")).arg("-c").arg(tmp.path().join("auth.yaml")).args(args), None);

    // A flood of idle connections from one address: 8 are held, the other 200 closed at once.
    let mut held: Vec<TcpStream> = (0..8).map(|_| connect_from("127.0.0.2", port)).collect();
    let flood_started = Instant::now();
    let mut extra: Vec<TcpStream> = (0..200).map(|_| connect_from("127.0.0.2", port)).collect();
    for s in &mut extra {
        let c = wait_closed(s, Duration::from_secs(5)).expect("a connection beyond the per-address cap is closed");
        assert!(c.bytes.is_empty(), "a refused connection gets no TLS bytes");
    }
    assert!(flood_started.elapsed() < Duration::from_secs(2), "refusals took {:?}", flood_started.elapsed());

    // tctl (from 127.0.0.1) is not held up by them, and answers quickly.
    let started = Instant::now();
    let status = tctl(&["status"]).ok();
    assert!(status.stdout.contains("limits.example.com"), "{}", status.stdout);
    assert!(started.elapsed() < Duration::from_secs(5), "tctl status took {:?}", started.elapsed());

    // The held ones never sent a ClientHello: closed after the handshake timeout (3 s).
    let waited = Instant::now();
    for s in &mut held {
        wait_closed(s, Duration::from_secs(8)).expect("an idle connection is closed after the handshake timeout");
    }
    let closed_after = flood_started.elapsed();
    assert!(closed_after >= Duration::from_millis(2500), "closed before the handshake timeout: {closed_after:?}");
    assert!(waited.elapsed() < Duration::from_secs(8));

    // Their places are free again; the refusals are counted and logged once per address.
    let mut again = connect_from("127.0.0.2", port);
    assert!(wait_closed(&mut again, Duration::from_millis(1500)).is_none(), "a freed place admits the address again");
    assert!(refused(diag, "auth") >= 200.0, "refusals are counted in /metrics");
    let log = std::fs::read_to_string(&auth.log).unwrap_or_default();
    assert_eq!(
        log.matches("127.0.0.2 already holds 8 connections (connection_limits.max_connections_per_address)").count(),
        1,
        "one log line for 200 refusals of one address:\n{log}"
    );
    auth.stop();
}

#[test]
fn proxy_listeners_close_clients_that_never_handshake_or_authenticate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (_auth, auth_port) = start_auth(dir, 512, "10s", free_port());
    let (web, ssh, tunnel) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "version: v3\nteleport:\n  nodename: limits-proxy\n  data_dir: {data}\n  auth_server: 127.0.0.1:{auth_port}\n  auth_token: {TOKEN}\n  log: {{severity: DEBUG}}\nproxy_service:\n  web_listen_addr: 127.0.0.1:{web}\n  listen_addr: 127.0.0.1:{ssh}\n  tunnel_listen_addr: 127.0.0.1:{tunnel}\n{LIMITS}",
        data = dir.join("proxy").display(),
    );
    std::fs::write(dir.join("proxy.yaml"), cfg).expect("proxy config");
    let _proxy = Proc::spawn(
        "proxy",
        Command::new(bin("portcullis-proxy")).args(["start", "--insecure", "-c"]).arg(dir.join("proxy.yaml")),
        dir.join("proxy.log"),
    );
    for p in [web, ssh, tunnel] {
        wait_port(p);
    }
    ssh_listener_checks("proxy", ssh);

    // The TLS listeners (web and tunnel) close a client that never sends a ClientHello.
    for (what, port, src) in [("web", web, "127.0.0.6"), ("tunnel", tunnel, "127.0.0.7")] {
        let mut silent = connect_from(src, port);
        let c = wait_closed(&mut silent, Duration::from_secs(8))
            .unwrap_or_else(|| panic!("the {what} listener keeps a silent client beyond its handshake timeout"));
        assert!(c.after >= Duration::from_millis(1500), "{what}: closed after {:?}", c.after);
    }
}

#[test]
fn node_closes_clients_that_never_handshake_or_authenticate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (_auth, auth_port) = start_auth(dir, 512, "10s", free_port());
    let port = free_port();
    std::fs::write(dir.join("node.yaml"), format!("version: v3\nssh_service:\n  listen_addr: 127.0.0.1:{port}\n{LIMITS}"))
        .expect("node config");
    let _node = Proc::spawn(
        "node",
        Command::new(bin("portcullis-node"))
            .args(["start", "--debug", "--insecure", "--nodename=limits-node"])
            .arg(format!("--token={TOKEN}"))
            .arg(format!("--auth-server=127.0.0.1:{auth_port}"))
            .arg("--data-dir")
            .arg(dir.join("node"))
            .arg("-c")
            .arg(dir.join("node.yaml")),
        dir.join("node.log"),
    );
    wait_port(port);
    ssh_listener_checks("node", port);
}

/// The SSH listener on `port` (limits from [`LIMITS`]): a client that sends nothing is closed
/// after the handshake timeout, one that never authenticates after the pre-authentication
/// timeout with a reason, and a fifth connection from one address is refused.
fn ssh_listener_checks(what: &str, port: u16) {
    // Never sends its version line: closed after the 2 s handshake timeout.
    let mut silent = connect_from("127.0.0.3", port);
    assert!(read_banner(&mut silent).starts_with("SSH-2.0-Portcullis"), "{what}: banner");
    let c = wait_closed(&mut silent, Duration::from_secs(8))
        .unwrap_or_else(|| panic!("{what}: a client that sends no version line is never closed"));
    assert!(c.after >= Duration::from_millis(1500), "{what}: closed after {:?}", c.after);

    // Sends its version line, then stalls the key exchange: cut after the 3 s pre-auth timeout.
    let started = Instant::now();
    let mut lingering = connect_from("127.0.0.4", port);
    lingering.write_all(b"SSH-2.0-OpenSSH_9.6 idle-client\r\n").expect("version line");
    wait_closed(&mut lingering, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{what}: a client that stalls the key exchange is never disconnected"));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2500), "{what}: disconnected after {elapsed:?}");

    // Completes the key exchange, tries "none", then idles: disconnected after 3 s, told why.
    let (why, after) = idle_after_key_exchange(port);
    assert!(after >= Duration::from_millis(2500), "{what}: disconnected after {after:?}");
    assert_eq!(why, "authentication timed out (connection_limits.pre_auth_timeout)", "{what}: the disconnect says why");

    // Four connections from one address are served; the fifth is closed without a banner,
    // and other addresses are not affected.
    let mut four: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.2", port)).collect();
    for s in &mut four {
        assert!(read_banner(s).starts_with("SSH-2.0-"), "{what}: one of the first four connections");
    }
    let mut fifth = connect_from("127.0.0.2", port);
    let c = wait_closed(&mut fifth, Duration::from_secs(1)).unwrap_or_else(|| panic!("{what}: the fifth is kept"));
    assert!(c.bytes.is_empty(), "{what}: the fifth connection got {:?}", String::from_utf8_lossy(&c.bytes));
    let mut other = connect_from("127.0.0.5", port);
    assert!(read_banner(&mut other).starts_with("SSH-2.0-"), "{what}: another address is still served");
}

/// An SSH client that stops after a refused "none" login, recording why it was disconnected.
struct IdleClient(Option<tokio::sync::oneshot::Sender<String>>);

impl russh::client::Handler for IdleClient {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(&mut self, reason: russh::client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        let why = match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(info) => info.message,
            russh::client::DisconnectReason::Error(e) => format!("no disconnect message, the connection failed: {e}"),
        };
        if let Some(tx) = self.0.take() {
            let _ = tx.send(why);
        }
        Ok(())
    }
}

/// Connects to the SSH server on `port`, completes the key exchange and a refused "none"
/// login, then waits to be disconnected: (the server's reason, time from connecting).
fn idle_after_key_exchange(port: u16) -> (String, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let config = std::sync::Arc::new(russh::client::Config {
            preferred: portcullis_pki::transport::preferred(),
            ..Default::default()
        });
        let started = Instant::now();
        let mut handle = russh::client::connect(config, ("127.0.0.1", port), IdleClient(Some(tx)))
            .await
            .expect("SSH connection");
        let none = handle.authenticate_none("nobody").await;
        assert!(!matches!(none, Ok(russh::client::AuthResult::Success)), "\"none\" must not log in");
        let why = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("disconnected within 10 s")
            .unwrap_or_else(|_| "the client went away without a reason".into());
        (why, started.elapsed())
    })
}
