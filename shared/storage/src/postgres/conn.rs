//! Reaching the database: the connection string (with libpq's `sslmode` and `sslrootcert`,
//! which tokio-postgres does not know), TLS through rustls, error mapping that never shows
//! the password, and a small connection pool with per-connection prepared statements.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_pki::verify as pki_verify;
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StorageError;

/// How long one connection attempt may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to connect. `addr` (host:port) is the only part ever shown.
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
    pub(crate) addr: String,
}

/// How the server's certificate is checked, after libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// `disable`, `allow`, `prefer`, `require` without a root file: encrypt, trust any cert.
    None,
    /// `verify-ca` (or `require` with `sslrootcert`, as libpq): the chain, not the name.
    Chain,
    /// `verify-full`: chain and host name.
    Full,
}

fn invalid(msg: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("invalid conn_string: {msg}"))
}

/// Byte spans of the `key=value` words of a libpq keyword string, honouring quotes and
/// backslash escapes (a password may hold spaces).
fn keyword_spans(s: &str) -> Vec<(usize, usize)> {
    let bytes = s.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        let mut quoted = false;
        while i < bytes.len() && (quoted || !bytes[i].is_ascii_whitespace()) {
            match bytes[i] {
                b'\\' => i += 1,
                b'\'' => quoted = !quoted,
                _ => {}
            }
            i += 1;
        }
        spans.push((start, i.min(bytes.len())));
    }
    spans
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = ((b[i + 1] as char).to_digit(16), (b[i + 2] as char).to_digit(16))
        {
            let v = (h * 16 + l) as u8;
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `sslmode` and `sslrootcert` from `conn` (URL or keyword form), returning the rest
/// and their values.
fn split_ssl_options(conn: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let conn = conn.trim();
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else { return (conn.to_string(), None, None) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(percent_decode(v)),
                Some(("sslrootcert", v)) => root = Some(percent_decode(v)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, mode, root);
    }
    let mut kept = Vec::new();
    for (a, b) in keyword_spans(conn) {
        let word = &conn[a..b];
        match word.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
            Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_string()),
            _ => kept.push(word),
        }
    }
    (kept.join(" "), mode, root)
}

/// `host:port` of every host in `config`, for messages.
fn display_addr(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() { format!("localhost:{}", port(0)) } else { hosts.join(",") }
}

impl Target {
    /// Parses a `postgresql://` URL or a libpq keyword string.
    pub(crate) fn parse(conn: &str) -> Result<Target, StorageError> {
        let (rest, mode, root) = split_ssl_options(conn);
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            // Its parser may quote one character of the input, which can be a password's.
            let text = e.to_string();
            let text = text.split(" but got").next().unwrap_or("malformed").to_string();
            invalid(format!(
                "{text} (expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME?sslmode=MODE or key=value words)"
            ))
        })?;
        let (ssl, verify) = match mode.as_deref().unwrap_or("prefer") {
            "disable" => (SslMode::Disable, Verify::None),
            "allow" | "prefer" => (SslMode::Prefer, Verify::None),
            "require" if root.is_some() => (SslMode::Require, Verify::Chain),
            "require" => (SslMode::Require, Verify::None),
            "verify-ca" => (SslMode::Require, Verify::Chain),
            "verify-full" => (SslMode::Require, Verify::Full),
            other => {
                return Err(invalid(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        };
        config.ssl_mode(ssl);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            // tokio-postgres's default (2 h) would leave the change feed deaf for hours
            // after a silent network loss; notice within about a minute instead.
            config.keepalives_idle(Duration::from_secs(30));
            config.keepalives_interval(Duration::from_secs(10));
            config.keepalives_retries(3);
        }
        if config.get_application_name().is_none() {
            config.application_name("portcullis-auth");
        }
        let tls = MakeRustlsConnect::new(tls_config(verify, root.as_deref())?);
        let addr = display_addr(&config);
        Ok(Target { config, tls, addr })
    }

    /// Maps a driver error: lost or refused connections are `Unavailable` (naming host:port
    /// only), statements the server rejected are `Backend`.
    pub(crate) fn map_err(&self, e: tokio_postgres::Error) -> StorageError {
        let unavailable = |reason: String| StorageError::Unavailable { addr: self.addr.clone(), reason };
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                // 08: connection exception, 57: operator intervention (shutdown, starting up),
                // 28: authorization (wrong password): the database is not usable from here.
                if code.starts_with("08") || code.starts_with("57") || code.starts_with("28") || *db.code() == SqlState::TOO_MANY_CONNECTIONS {
                    unavailable(db.message().to_string())
                } else {
                    StorageError::Backend(format!("database error {code}: {}", db.message()))
                }
            }
            None if e.is_closed() => unavailable("the connection closed".into()),
            None => {
                let text = e.to_string();
                let text = text.strip_prefix("error connecting to server: ").unwrap_or(&text).to_string();
                unavailable(text)
            }
        }
    }
}

/// The rustls client configuration for a verification level.
fn tls_config(verify: Verify, root_file: Option<&str>) -> Result<rustls::ClientConfig, StorageError> {
    let builder = rustls::ClientConfig::builder_with_provider(pki_verify::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::Backend(format!("TLS setup: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = if verify == Verify::None {
        // `sslmode=require` as libpq has it: encrypted, but any certificate is accepted (the
        // handshake signature is still checked, so the peer holds the certificate's key).
        Arc::new(pki_verify::InsecureAcceptAnyServer::dangerously_new())
    } else {
        let mut roots = RootCertStore::empty();
        match root_file {
            Some(path) if path != "system" => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| invalid(format!("cannot read sslrootcert {path}: {e}")))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(invalid(format!("sslrootcert {path} holds no usable certificate")));
                }
            }
            _ => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let setup = |e: pki_verify::VerifyError| StorageError::Backend(format!("TLS setup: {e}"));
        // `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
        if verify == Verify::Full {
            pki_verify::server_chain(roots).map_err(setup)?
        } else {
            Arc::new(pki_verify::ChainOnlyVerifier::new(roots).map_err(setup)?)
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// One connection with the statements it has prepared (a prepared statement saves a round
/// trip on every later call).
pub(crate) struct Conn {
    pub(crate) client: Client,
    stmts: HashMap<&'static str, Statement>,
}

impl Conn {
    /// Opens a connection whose driver runs as a task on the current runtime.
    pub(crate) async fn open(target: &Target) -> Result<Conn, StorageError> {
        let (client, connection) = target.config.connect(target.tls.clone()).await.map_err(|e| target.map_err(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "storage: database connection ended");
            }
        });
        Ok(Conn { client, stmts: HashMap::new() })
    }

    pub(crate) async fn prepare(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }
}

/// At most `size` connections, opened on demand and kept while healthy.
pub(crate) struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
}

/// A connection borrowed from the pool; returned on drop unless it broke.
pub(crate) struct Pooled<'a> {
    pub(crate) conn: Option<Conn>,
    pool: &'a Pool,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Pool {
        Pool { idle: Mutex::new(Vec::new()), permits: Arc::new(Semaphore::new(size.max(1))) }
    }

    pub(crate) async fn get(&self, target: &Target) -> Result<Pooled<'_>, StorageError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Backend("the connection pool is closed".into()))?;
        let reused = {
            let mut idle = self.idle.lock().map_err(|_| StorageError::Backend("connection pool lock poisoned".into()))?;
            // A connection whose server went away (a restart) is dropped here, not used.
            idle.retain(|c| !c.client.is_closed());
            idle.pop()
        };
        let conn = match reused {
            Some(c) => c,
            None => Conn::open(target).await?,
        };
        Ok(Pooled { conn: Some(conn), pool: self, _permit: permit })
    }
}

impl Pooled<'_> {
    pub(crate) fn conn(&mut self) -> Result<&mut Conn, StorageError> {
        self.conn.as_mut().ok_or_else(|| StorageError::Backend("connection already released".into()))
    }

    /// Drops the connection instead of returning it (after an error that may have broken it).
    pub(crate) fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !c.client.is_closed()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_options_are_split_off_both_forms() {
        let (rest, mode, root) =
            split_ssl_options("postgresql://u:p%20w@db:5433/x?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3");
        assert_eq!(rest, "postgresql://u:p%20w@db:5433/x?connect_timeout=3");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/tmp/ca.pem")));
        let (rest, mode, root) = split_ssl_options("host=db password='a sslmode=x b' sslmode=require user=u");
        assert_eq!(rest, "host=db password='a sslmode=x b' user=u");
        assert_eq!((mode.as_deref(), root), (Some("require"), None));
    }

    #[test]
    fn the_address_is_host_and_port_and_errors_never_hold_the_password() {
        let t = Target::parse("postgresql://portcullis:hunter2@db.example:6543/p?sslmode=disable").unwrap();
        assert_eq!(t.addr, "db.example:6543");
        let e = Target::parse("postgresql://portcullis:hunter2@db.example:6543/p?sslmode=bogus").err().unwrap();
        assert!(e.to_string().contains("sslmode") && !e.to_string().contains("hunter2"), "{e}");
        let e = Target::parse("host=db password=hunter2 port=notaport").err().unwrap();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Target::parse("postgresql://u:hunter2@db/p?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem") && !e.to_string().contains("hunter2"), "{e}");
    }
}
