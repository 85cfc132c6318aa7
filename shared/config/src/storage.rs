//! `teleport.storage`: where the auth service keeps its state (embedded sled, or PostgreSQL
//! shared by several auth replicas), validated from the file's schema.

use std::path::{Path, PathBuf};

use portcullis_pki::Secret;
use portcullis_types::HostPort;

use crate::ConfigError;
use crate::file::StorageSection;

const KEY: &str = "teleport.storage";

/// A PostgreSQL connection string. It holds a password, so `Debug` and [`ConnString::addr`]
/// show only where it points (host:port), never the string itself.
#[derive(Clone)]
pub struct ConnString(Secret<String>);

impl ConnString {
    pub fn new(value: impl Into<String>) -> Self {
        ConnString(Secret::new(value.into()))
    }

    /// The whole string, password included: for the database driver only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// `host:port` (comma-separated when several hosts are given), safe to print.
    pub fn addr(&self) -> String {
        conn_addr(self.expose())
    }
}

impl std::fmt::Debug for ConnString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnString({})", self.addr())
    }
}

/// The validated storage choice.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    /// One auth process per data directory; the database lives in `dir`.
    Sled { dir: PathBuf },
    /// Any number of auth processes of one cluster share this database.
    Postgres { conn: ConnString },
}

impl StorageSettings {
    /// Validates `section`; without one, sled under `data_dir/backend`.
    pub fn from_section(section: Option<&StorageSection>, data_dir: &Path) -> Result<Self, ConfigError> {
        let sled = || StorageSettings::Sled { dir: data_dir.join("backend") };
        let Some(s) = section else { return Ok(sled()) };
        let conn = s.conn_string.as_deref().map(str::trim).filter(|c| !c.is_empty());
        let kind = s.kind.as_deref().map(|k| k.trim().to_ascii_lowercase());
        match kind.as_deref() {
            None | Some("") if conn.is_none() => Ok(sled()),
            None | Some("") => Err(ConfigError::invalid(
                &format!("{KEY}.type"),
                "is missing: a conn_string is given, so set type: postgresql (or remove conn_string for the embedded sled)",
            )),
            Some("sled") => match conn {
                None => Ok(sled()),
                Some(_) => Err(ConfigError::invalid(
                    &format!("{KEY}.conn_string"),
                    "is only used with type: postgresql; sled keeps its files under data_dir",
                )),
            },
            Some("postgresql") | Some("postgres") => {
                let conn = conn.ok_or_else(|| {
                    ConfigError::invalid(
                        &format!("{KEY}.conn_string"),
                        "is required with type: postgresql, e.g. \"postgresql://user:pass@db:5432/portcullis?sslmode=verify-full\" \
                         (or the path of a file holding it)",
                    )
                })?;
                Ok(StorageSettings::Postgres { conn: read_conn_string(conn)? })
            }
            Some(other) => Err(ConfigError::invalid(
                &format!("{KEY}.type"),
                format!("unknown storage type {other:?}: expected sled or postgresql"),
            )),
        }
    }

    /// What the state lives in, for messages: never the connection string itself.
    pub fn describe(&self) -> String {
        match self {
            StorageSettings::Sled { dir } => format!("the sled database in {}", dir.display()),
            StorageSettings::Postgres { conn } => format!("the PostgreSQL database at {}", conn.addr()),
        }
    }
}

/// The string itself, or the contents of the file it names (a mounted Kubernetes Secret).
fn read_conn_string(v: &str) -> Result<ConnString, ConfigError> {
    if v.starts_with('/') || v.starts_with("./") {
        let text = std::fs::read_to_string(v).map_err(|e| {
            ConfigError::invalid(&format!("{KEY}.conn_string"), format!("cannot read connection string file {v}: {e}"))
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(ConfigError::invalid(&format!("{KEY}.conn_string"), format!("connection string file {v} is empty")));
        }
        return Ok(ConnString::new(text));
    }
    Ok(ConnString::new(v))
}

/// Where a connection string points, without user or password: `host:port` for the URL form
/// (`postgresql://user:pass@host:port/db?...`) and the key/value form (`host=h port=p ...`).
fn conn_addr(conn: &str) -> String {
    let conn = conn.trim();
    let rest = conn.strip_prefix("postgresql://").or_else(|| conn.strip_prefix("postgres://"));
    let Some(rest) = rest else { return kv_addr(conn) };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    // The password may hold '@' only percent-encoded; the last '@' ends the credentials.
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hosts: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| HostPort::parse_with_default(h, 5432).map_or_else(|_| h.to_string(), |a| a.to_string()))
        .collect();
    if hosts.is_empty() { "localhost:5432".into() } else { hosts.join(",") }
}

fn kv_addr(conn: &str) -> String {
    let mut host = "localhost".to_string();
    let mut port = "5432".to_string();
    for part in conn.split_whitespace() {
        match part.split_once('=') {
            Some(("host", v)) => host = v.trim_matches('\'').to_string(),
            Some(("port", v)) => port = v.trim_matches('\'').to_string(),
            _ => {}
        }
    }
    match port.parse::<u16>() {
        Ok(p) => HostPort::new(host, p).to_string(),
        Err(_) => format!("{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthSettings, CommonFlags, FileConfig};

    fn auth(yaml: &str) -> Result<AuthSettings, String> {
        let file = FileConfig::from_yaml(yaml).map_err(|e| e.to_string())?;
        AuthSettings::from_parts(&file, &CommonFlags::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn default_is_sled_under_the_data_dir() {
        let a = auth("teleport:\n  data_dir: /d\n").unwrap();
        assert!(matches!(&a.storage, StorageSettings::Sled { dir } if dir == Path::new("/d/backend")), "{:?}", a.storage);
        let a = auth("teleport:\n  data_dir: /d\n  storage: {type: sled}\n").unwrap();
        assert!(matches!(&a.storage, StorageSettings::Sled { dir } if dir == Path::new("/d/backend")));
        assert_eq!(a.storage.describe(), "the sled database in /d/backend");
    }

    #[test]
    fn postgresql_keeps_the_password_out_of_debug_and_messages() {
        let yaml = "teleport:\n  storage:\n    type: postgresql\n    conn_string: \"postgresql://portcullis:s3cr3t-pw@db.internal:6543/portcullis?sslmode=verify-full\"\n";
        let a = auth(yaml).unwrap();
        let StorageSettings::Postgres { conn } = &a.storage else { panic!("{:?}", a.storage) };
        assert!(conn.expose().contains("s3cr3t-pw"), "the driver gets the whole string");
        assert_eq!(conn.addr(), "db.internal:6543");
        assert_eq!(a.storage.describe(), "the PostgreSQL database at db.internal:6543");
        for shown in [format!("{a:?}"), format!("{:?}", a.storage), a.storage.describe()] {
            assert!(!shown.contains("s3cr3t-pw") && !shown.contains("portcullis:"), "{shown}");
        }
    }

    #[test]
    fn missing_or_unknown_values_are_named() {
        let e = auth("teleport:\n  storage: {type: postgresql}\n").unwrap_err();
        assert!(e.contains("teleport.storage.conn_string") && e.contains("is required with type: postgresql"), "{e}");
        let e = auth("teleport:\n  storage: {type: postgresql, conn_string: \"  \"}\n").unwrap_err();
        assert!(e.contains("is required"), "{e}");
        let e = auth("teleport:\n  storage: {type: etcd}\n").unwrap_err();
        assert!(e.contains("teleport.storage.type") && e.contains("unknown storage type \"etcd\": expected sled or postgresql"), "{e}");
        let e = auth("teleport:\n  storage: {conn_string: \"postgresql://u:pw@h/db\"}\n").unwrap_err();
        assert!(e.contains("teleport.storage.type") && e.contains("set type: postgresql") && !e.contains("pw@"), "{e}");
        let e = auth("teleport:\n  storage: {type: sled, conn_string: \"postgresql://u:pw@h/db\"}\n").unwrap_err();
        assert!(e.contains("only used with type: postgresql") && !e.contains("pw@"), "{e}");
        let e = auth("teleport:\n  storage: {type: postgresql, conn_strin: x}\n").unwrap_err();
        assert!(e.contains("conn_strin"), "{e}");
    }

    #[test]
    fn the_string_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg");
        std::fs::write(&path, "postgresql://u:hidden@pg-0.pg:5432/p\n").unwrap();
        let a = auth(&format!("teleport:\n  storage: {{type: postgresql, conn_string: {}}}\n", path.display())).unwrap();
        let StorageSettings::Postgres { conn } = &a.storage else { panic!() };
        assert_eq!(conn.expose(), "postgresql://u:hidden@pg-0.pg:5432/p");
        let gone = dir.path().join("gone");
        let e = auth(&format!("teleport:\n  storage: {{type: postgresql, conn_string: {}}}\n", gone.display())).unwrap_err();
        assert!(e.contains("cannot read connection string file") && e.contains("gone"), "{e}");
    }

    #[test]
    fn addresses_of_every_form() {
        assert_eq!(conn_addr("postgresql://u:p@h/db"), "h:5432");
        assert_eq!(conn_addr("postgres://h1:1,h2/db"), "h1:1,h2:5432");
        assert_eq!(conn_addr("postgresql://u:p@[::1]:7/db"), "[::1]:7");
        assert_eq!(conn_addr("postgresql:///db"), "localhost:5432");
        assert_eq!(conn_addr("host=db port=5433 user=u password=secret"), "db:5433");
        assert_eq!(conn_addr("user=u password=secret"), "localhost:5432");
        assert_eq!(conn_addr("host=::1 port=5433"), "[::1]:5433");
    }
}
