//! Validated runtime settings, built from the file and the flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis_pki::Secret;
use portcullis_types::HostPort;

use crate::file::{FileConfig, LogFormat, OneOrMany};
use crate::{CommonFlags, ConfigError, ports};

/// Logging choices.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// A tracing filter directive such as `info` or `debug`.
    pub severity: String,
    pub json: bool,
    /// `stderr`, `stdout`, or a file path.
    pub output: String,
}

/// Settings every process has.
#[derive(Debug, Clone)]
pub struct Common {
    pub nodename: String,
    pub data_dir: PathBuf,
    pub auth_servers: Vec<String>,
    pub token: Option<Secret<String>>,
    pub ca_pins: Vec<String>,
    pub insecure: bool,
    pub labels: BTreeMap<String, String>,
    pub log: LogSettings,
    pub diag_addr: Option<SocketAddr>,
    pub tracing: TracingSettings,
}

/// `tracing_service`: where spans go. Off unless enabled (or the `OTEL_*` environment asks).
#[derive(Debug, Clone, Default)]
pub struct TracingSettings {
    pub enabled: bool,
    /// OTLP/gRPC endpoint, e.g. `grpc://jaeger:4317`.
    pub exporter_url: Option<String>,
    /// Share of new traces recorded, in millionths (1000000 = all).
    pub sampling_rate_per_million: u32,
}

/// A token from `auth_service.tokens` (`roles:value`).
#[derive(Debug, Clone)]
pub struct StaticToken {
    /// Lower-case role names: `node`, `proxy`, `trusted_cluster`, `agent`.
    pub roles: Vec<String>,
    pub value: Secret<String>,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub common: Common,
    pub cluster_name: String,
    pub listen_addr: SocketAddr,
    pub static_tokens: Vec<StaticToken>,
    /// A leaf is offline this long after the last live tunnel report.
    pub tunnel_offline_after: std::time::Duration,
    pub trusted_cluster_ca_file: Option<PathBuf>,
    /// `auth_service.ca_key_encryption_key_file`: seals the CA private keys at rest; kept
    /// outside the database so a copy of the database alone cannot sign anything.
    pub ca_key_encryption_key_file: PathBuf,
    /// `auth_service.connection_limits`.
    pub limits: crate::ConnectionLimits,
    /// `auth_service.lockout`, `password_hashing` and `join_rate_limit`.
    pub logins: crate::LoginLimits,
    /// `teleport.storage`: sled under data_dir, or a shared PostgreSQL database.
    pub storage: crate::StorageSettings,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub common: Common,
    pub web_listen_addr: SocketAddr,
    pub ssh_listen_addr: SocketAddr,
    pub tunnel_listen_addr: SocketAddr,
    pub public_addr: Option<String>,
    pub ssh_public_addr: Option<String>,
    pub tunnel_public_addr: Option<String>,
    /// (key file, cert file) pairs; empty means self-signed.
    pub https_keypairs: Vec<(PathBuf, PathBuf)>,
    /// On SIGTERM, how long open sessions may finish before they are cut.
    pub drain_timeout: std::time::Duration,
    /// `proxy_service.connection_limits`, for the web, SSH and tunnel listeners.
    pub limits: crate::ConnectionLimits,
    /// `proxy_service.rate_limit`: unauthenticated web requests per client address.
    pub rate_limit: crate::RateLimitSettings,
}

#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub common: Common,
    pub listen_addr: SocketAddr,
    pub public_addr: Option<String>,
    /// `ssh_service.connection_limits`.
    pub limits: crate::ConnectionLimits,
}

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub common: Common,
}

fn load_file(flags: &CommonFlags) -> Result<FileConfig, ConfigError> {
    match &flags.config {
        Some(p) => FileConfig::load(p),
        None => Ok(FileConfig::default()),
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("{value:?} is not an ip:port address")))
}

fn first(v: Option<OneOrMany>) -> Option<String> {
    v.and_then(|v| v.into_vec().into_iter().next())
}

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::invalid("labels", format!("{part:?} is not key=value")))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Appends the default port when `addr` has none (bracketing a bare IPv6 address).
pub fn with_default_port(addr: &str, port: u16) -> String {
    match HostPort::parse_with_default(addr, port) {
        Ok(a) => a.to_string(),
        // Not an address: kept as written (with the port) so the dial error shows it.
        Err(_) => format!("{}:{port}", addr.trim()),
    }
}

/// The auth servers to use: `--auth-server` (repeated or comma-separated) replaces the
/// file's `teleport.auth_server` and `auth_servers`; each gets the default port when it has
/// none, and a repeated address counts once.
fn auth_server_list(one: Option<&str>, many: &[String], flags: &[String]) -> Result<Vec<String>, ConfigError> {
    let (key, given): (&str, Vec<&str>) = if flags.is_empty() {
        ("teleport.auth_servers", one.into_iter().chain(many.iter().map(String::as_str)).collect())
    } else {
        ("--auth-server", flags.iter().map(String::as_str).collect())
    };
    let mut out: Vec<String> = Vec::new();
    for a in given {
        let a = a.trim();
        if a.is_empty() {
            return Err(ConfigError::invalid(key, "an empty address (expected host:port)"));
        }
        if a.contains(char::is_whitespace) || a.contains('/') {
            return Err(ConfigError::invalid(key, format!("{a:?} is not a host:port address")));
        }
        let Ok(full) = HostPort::parse_with_default(a, ports::AUTH).map(|h| h.to_string()) else {
            return Err(ConfigError::invalid(key, format!("{a:?} is not a host:port address")));
        };
        if !out.contains(&full) {
            out.push(full);
        }
    }
    Ok(out)
}

/// A token value, or the contents of the file it names.
fn read_token(v: &str) -> Result<Secret<String>, ConfigError> {
    let p = std::path::Path::new(v);
    if v.starts_with('/') || v.starts_with("./") {
        let text = std::fs::read_to_string(p)
            .map_err(|e| ConfigError::invalid("auth_token", format!("cannot read token file {v}: {e}")))?;
        return Ok(Secret::new(text.trim().to_string()));
    }
    Ok(Secret::new(v.trim().to_string()))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

fn common(file: &FileConfig, flags: &CommonFlags, default_dir: &str) -> Result<Common, ConfigError> {
    let t = &file.teleport;
    let severity = if flags.debug {
        "debug".to_string()
    } else {
        t.log.severity.clone().unwrap_or_else(|| "info".into()).to_lowercase()
    };
    if !["trace", "debug", "info", "warn", "warning", "error"].contains(&severity.as_str()) {
        return Err(ConfigError::invalid("teleport.log.severity", format!("unknown severity {severity:?}")));
    }
    let severity = if severity == "warning" { "warn".into() } else { severity };
    let json = match &t.log.format {
        Some(LogFormat::Name(n)) | Some(LogFormat::Detailed { output: n }) => n == "json",
        None => false,
    };
    let auth_servers = auth_server_list(t.auth_server.as_deref(), &t.auth_servers, &flags.auth_server)?;
    let token = match flags.token.as_deref().or(t.auth_token.as_deref()) {
        Some(v) => Some(read_token(v)?),
        None => None,
    };
    let mut ca_pins = t.ca_pin.clone().map(OneOrMany::into_vec).unwrap_or_default();
    if let Some(p) = &flags.ca_pin {
        ca_pins = vec![p.clone()];
    }
    for pin in &ca_pins {
        if !pin.starts_with("sha256:") {
            return Err(ConfigError::invalid("teleport.ca_pin", format!("{pin:?} must start with sha256:")));
        }
    }
    let mut labels = file.ssh_service.as_ref().map(|s| s.labels.clone()).unwrap_or_default();
    if let Some(l) = &flags.labels {
        labels.extend(parse_labels(l)?);
    }
    // `--diag-addr` wins; the file's address counts unless the section says `enabled: false`.
    let file_diag = file.diag_service.as_ref().filter(|d| d.enabled != Some(false)).and_then(|d| d.listen_addr.clone());
    let diag_addr = match (flags.diag_addr, file_diag) {
        (Some(a), _) => Some(a),
        (None, Some(a)) => Some(parse_addr("diag_service.listen_addr", &a)?),
        (None, None) => None,
    };
    Ok(Common {
        nodename: flags.nodename.clone().or_else(|| t.nodename.clone()).unwrap_or_else(hostname),
        data_dir: flags
            .data_dir
            .clone()
            .or_else(|| t.data_dir.clone().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(default_dir)),
        auth_servers,
        token,
        ca_pins,
        insecure: flags.insecure,
        labels,
        log: LogSettings {
            severity,
            json,
            output: t.log.output.clone().unwrap_or_else(|| "stderr".into()),
        },
        diag_addr,
        tracing: TracingSettings {
            enabled: file.tracing_service.as_ref().is_some_and(|t| t.enabled),
            exporter_url: file.tracing_service.as_ref().and_then(|t| t.exporter_url.clone()),
            sampling_rate_per_million: file
                .tracing_service
                .as_ref()
                .and_then(|t| t.sampling_rate_per_million)
                .unwrap_or(1_000_000)
                .min(1_000_000),
        },
    })
}

const DEFAULT_DATA_DIR: &str = "/var/lib/portcullis";

impl AuthSettings {
    pub fn load(flags: &CommonFlags) -> Result<Self, ConfigError> {
        Self::from_parts(&load_file(flags)?, flags)
    }

    pub fn from_parts(file: &FileConfig, flags: &CommonFlags) -> Result<Self, ConfigError> {
        let common = common(file, flags, DEFAULT_DATA_DIR)?;
        let a = file.auth_service.clone().unwrap_or_default();
        let cluster_name = a.cluster_name.clone().unwrap_or_else(|| common.nodename.clone());
        if cluster_name.is_empty() {
            return Err(ConfigError::invalid("auth_service.cluster_name", "must not be empty"));
        }
        let listen_addr = parse_addr(
            "auth_service.listen_addr",
            a.listen_addr.as_deref().unwrap_or("0.0.0.0:3025"),
        )?;
        let mut static_tokens = Vec::new();
        for (i, t) in a.tokens.iter().enumerate() {
            let key = format!("auth_service.tokens[{i}]");
            let (roles, value) = t
                .split_once(':')
                .ok_or_else(|| ConfigError::invalid(&key, "expected roles:token, e.g. node,proxy:secret"))?;
            let roles: Vec<String> = roles.split(',').map(|r| r.trim().to_lowercase()).collect();
            for r in &roles {
                if !["node", "proxy", "trusted_cluster", "trustedcluster", "agent"].contains(&r.as_str()) {
                    return Err(ConfigError::invalid(&key, format!("unknown role {r:?}")));
                }
            }
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(&key, "token value is empty"));
            }
            static_tokens.push(StaticToken { roles, value: Secret::new(value.trim().to_string()) });
        }
        let tunnel_offline_after = match &a.tunnel_offline_after {
            Some(v) => humantime::parse_duration(v)
                .map_err(|e| ConfigError::invalid("auth_service.tunnel_offline_after", format!("{v:?}: {e}")))?,
            None => std::time::Duration::from_secs(15),
        };
        let ca_key_encryption_key_file = match a.ca_key_encryption_key_file.as_deref().map(str::trim) {
            Some("") => return Err(ConfigError::invalid("auth_service.ca_key_encryption_key_file", "must not be empty")),
            Some(p) => PathBuf::from(p),
            None => common.data_dir.join("ca-kek"),
        };
        let storage = crate::StorageSettings::from_section(file.teleport.storage.as_ref(), &common.data_dir)?;
        Ok(AuthSettings {
            storage,
            common,
            cluster_name,
            listen_addr,
            static_tokens,
            tunnel_offline_after,
            trusted_cluster_ca_file: a.trusted_cluster_ca_file.clone().map(PathBuf::from),
            ca_key_encryption_key_file,
            limits: crate::ConnectionLimits::from_section(
                "auth_service.connection_limits",
                a.connection_limits.as_ref(),
                crate::ConnectionLimits::AUTH,
            )?,
            logins: crate::LoginLimits {
                lockout: crate::LockoutSettings::parse("auth_service.lockout", a.lockout.as_ref())?,
                hashing: crate::PasswordHashingSettings::parse("auth_service.password_hashing", a.password_hashing.as_ref())?,
                join_rate_limit: crate::RateLimitSettings::parse("auth_service.join_rate_limit", a.join_rate_limit.as_ref())?,
            },
        })
    }
}

impl ProxySettings {
    pub fn load(flags: &CommonFlags) -> Result<Self, ConfigError> {
        Self::from_parts(&load_file(flags)?, flags)
    }

    pub fn from_parts(file: &FileConfig, flags: &CommonFlags) -> Result<Self, ConfigError> {
        let common = common(file, flags, DEFAULT_DATA_DIR)?;
        let p = file.proxy_service.clone().unwrap_or_default();
        Ok(ProxySettings {
            web_listen_addr: parse_addr(
                "proxy_service.web_listen_addr",
                p.web_listen_addr.as_deref().unwrap_or("0.0.0.0:3080"),
            )?,
            ssh_listen_addr: parse_addr(
                "proxy_service.listen_addr",
                p.listen_addr.as_deref().unwrap_or("0.0.0.0:3023"),
            )?,
            tunnel_listen_addr: parse_addr(
                "proxy_service.tunnel_listen_addr",
                p.tunnel_listen_addr.as_deref().unwrap_or("0.0.0.0:3024"),
            )?,
            public_addr: first(p.public_addr).map(|a| with_default_port(&a, ports::PROXY_WEB)),
            ssh_public_addr: first(p.ssh_public_addr).map(|a| with_default_port(&a, ports::PROXY_SSH)),
            tunnel_public_addr: first(p.tunnel_public_addr)
                .map(|a| with_default_port(&a, ports::PROXY_TUNNEL)),
            drain_timeout: match &p.shutdown_drain_timeout {
                Some(v) => humantime::parse_duration(v)
                    .map_err(|e| ConfigError::invalid("proxy_service.shutdown_drain_timeout", format!("{v:?}: {e}")))?,
                None => std::time::Duration::from_secs(30),
            },
            https_keypairs: p
                .https_keypairs
                .iter()
                .map(|k| (PathBuf::from(&k.key_file), PathBuf::from(&k.cert_file)))
                .collect(),
            limits: crate::ConnectionLimits::from_section(
                "proxy_service.connection_limits",
                p.connection_limits.as_ref(),
                crate::ConnectionLimits::PROXY,
            )?,
            rate_limit: crate::RateLimitSettings::parse("proxy_service.rate_limit", p.rate_limit.as_ref())?,
            common,
        })
    }
}

impl NodeSettings {
    pub fn load(flags: &CommonFlags) -> Result<Self, ConfigError> {
        Self::from_parts(&load_file(flags)?, flags)
    }

    pub fn from_parts(file: &FileConfig, flags: &CommonFlags) -> Result<Self, ConfigError> {
        let common = common(file, flags, DEFAULT_DATA_DIR)?;
        let s = file.ssh_service.clone().unwrap_or_default();
        Ok(NodeSettings {
            listen_addr: parse_addr(
                "ssh_service.listen_addr",
                s.listen_addr.as_deref().unwrap_or("0.0.0.0:3022"),
            )?,
            limits: crate::ConnectionLimits::from_section(
                "ssh_service.connection_limits",
                s.connection_limits.as_ref(),
                crate::ConnectionLimits::NODE,
            )?,
            public_addr: first(s.public_addr).map(|a| with_default_port(&a, ports::NODE_SSH)),
            common,
        })
    }
}

impl AgentSettings {
    pub fn load(flags: &CommonFlags) -> Result<Self, ConfigError> {
        let file = load_file(flags)?;
        Ok(AgentSettings { common: common(&file, flags, DEFAULT_DATA_DIR)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
version: v3
teleport:
  nodename: node-1
  data_dir: /tmp/x
  auth_server: auth.example.com
  auth_token: the-token
  ca_pin: "sha256:abcd"
  log: {output: stderr, severity: DEBUG, format: text}
tracing_service: {enabled: true, exporter_url: "grpc://jaeger:4317", sampling_rate_per_million: 1000000}
auth_service:
  cluster_name: rootcluster.example.com
  listen_addr: 0.0.0.0:3025
  tokens: ["trusted_cluster:join-token", "node,proxy:other-token"]
proxy_service:
  web_listen_addr: 0.0.0.0:3080
  listen_addr: 0.0.0.0:3023
  tunnel_listen_addr: 0.0.0.0:3024
  public_addr: rootcluster.example.com:3080
  ssh_public_addr: rootcluster.example.com:3023
  tunnel_public_addr: rootcluster.example.com:3024
ssh_service:
  listen_addr: 0.0.0.0:3022
  public_addr: 10.0.5.2:3022
  labels: {env: staging}
"#;

    #[test]
    fn spec_sample_parses_into_every_service() {
        let f = FileConfig::from_yaml(FULL).unwrap();
        let flags = CommonFlags::default();
        let a = AuthSettings::from_parts(&f, &flags).unwrap();
        assert_eq!(a.cluster_name, "rootcluster.example.com");
        assert_eq!(a.static_tokens.len(), 2);
        assert_eq!(a.static_tokens[1].roles, vec!["node", "proxy"]);
        assert_eq!(a.common.auth_servers, vec!["auth.example.com:3025"]);
        assert_eq!(a.common.log.severity, "debug");
        let p = ProxySettings::from_parts(&f, &flags).unwrap();
        assert_eq!(p.ssh_public_addr.as_deref(), Some("rootcluster.example.com:3023"));
        let n = NodeSettings::from_parts(&f, &flags).unwrap();
        assert_eq!(n.common.labels["env"], "staging");
        assert_eq!(n.common.nodename, "node-1");
    }

    #[test]
    fn flags_override_file() {
        let f = FileConfig::from_yaml(FULL).unwrap();
        let flags = CommonFlags {
            nodename: Some("other".into()),
            auth_server: vec!["127.0.0.1:9999".into()],
            labels: Some("a=b,env=prod".into()),
            ..Default::default()
        };
        let n = NodeSettings::from_parts(&f, &flags).unwrap();
        assert_eq!(n.common.nodename, "other");
        assert_eq!(n.common.auth_servers, vec!["127.0.0.1:9999"]);
        assert_eq!(n.common.labels["env"], "prod");
        assert_eq!(n.common.labels["a"], "b");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = FileConfig::from_yaml("teleport:\n  nodname: x\n").unwrap_err().to_string();
        assert!(e.contains("nodname"), "{e}");
        let f = FileConfig::from_yaml("auth_service:\n  listen_addr: nowhere\n").unwrap();
        let e = AuthSettings::from_parts(&f, &CommonFlags::default()).unwrap_err().to_string();
        assert!(e.contains("auth_service.listen_addr"), "{e}");
        let f = FileConfig::from_yaml("auth_service:\n  tokens: [\"bogus\"]\n").unwrap();
        let e = AuthSettings::from_parts(&f, &CommonFlags::default()).unwrap_err().to_string();
        assert!(e.contains("tokens[0]"), "{e}");
    }

    #[test]
    fn token_secret_is_not_in_debug_output() {
        let f = FileConfig::from_yaml(FULL).unwrap();
        let a = AuthSettings::from_parts(&f, &CommonFlags::default()).unwrap();
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("join-token") && !dbg.contains("the-token"), "{dbg}");
    }

    #[test]
    fn diag_addr_from_file_or_flag() {
        let n = NodeSettings::from_parts(&FileConfig::from_yaml(FULL).unwrap(), &CommonFlags::default()).unwrap();
        assert_eq!(n.common.diag_addr, None, "no diagnostic listener unless asked for");
        let f = FileConfig::from_yaml("diag_service:\n  listen_addr: 127.0.0.1:3000\n").unwrap();
        let n = NodeSettings::from_parts(&f, &CommonFlags::default()).unwrap();
        assert_eq!(n.common.diag_addr, Some("127.0.0.1:3000".parse().unwrap()));
        let flags = CommonFlags { diag_addr: Some("127.0.0.1:3001".parse().unwrap()), ..Default::default() };
        let n = NodeSettings::from_parts(&f, &flags).unwrap();
        assert_eq!(n.common.diag_addr, Some("127.0.0.1:3001".parse().unwrap()));
        let off = FileConfig::from_yaml("diag_service:\n  enabled: false\n  listen_addr: 127.0.0.1:3000\n").unwrap();
        assert_eq!(NodeSettings::from_parts(&off, &CommonFlags::default()).unwrap().common.diag_addr, None);
        let f = FileConfig::from_yaml("diag_service:\n  listen_addr: nowhere\n").unwrap();
        let e = NodeSettings::from_parts(&f, &CommonFlags::default()).unwrap_err().to_string();
        assert!(e.contains("diag_service.listen_addr"), "{e}");
    }

    #[test]
    fn default_ports() {
        assert_eq!(with_default_port("h", 3080), "h:3080");
        assert_eq!(with_default_port("h:1", 3080), "h:1");
        assert_eq!(with_default_port("[::1]:5", 3080), "[::1]:5");
        assert_eq!(with_default_port("::1", 3080), "[::1]:3080");
    }
}
