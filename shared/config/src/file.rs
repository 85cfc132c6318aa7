//! The configuration file schema, modelled on teleport.yaml. Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::ConfigError;

/// The whole file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub teleport: TeleportSection,
    #[serde(default)]
    pub tracing_service: Option<TracingSection>,
    #[serde(default)]
    pub auth_service: Option<AuthSection>,
    #[serde(default)]
    pub proxy_service: Option<ProxySection>,
    #[serde(default)]
    pub ssh_service: Option<SshSection>,
    #[serde(default)]
    pub diag_service: Option<DiagSection>,
}

/// Settings every process shares.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeleportSection {
    pub nodename: Option<String>,
    pub data_dir: Option<String>,
    pub auth_server: Option<String>,
    #[serde(default)]
    pub auth_servers: Vec<String>,
    /// A path to a token file, or the token itself.
    pub auth_token: Option<String>,
    pub ca_pin: Option<OneOrMany>,
    #[serde(default)]
    pub log: LogSection,
    /// Auth only: where its state lives (see `crate::storage`).
    #[serde(default)]
    pub storage: Option<StorageSection>,
}

/// `teleport.storage` as written: `{type: sled|postgresql, conn_string: ...}`.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The PostgreSQL connection string, or the path of a file holding it. It carries a
    /// password: this schema type is never printed; `crate::storage::ConnString` is.
    pub conn_string: Option<String>,
}

impl std::fmt::Debug for StorageSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string holds a password: say only whether one is set.
        f.debug_struct("StorageSection")
            .field("kind", &self.kind)
            .field("conn_string", &self.conn_string.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A value given as one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub output: Option<String>,
    pub severity: Option<String>,
    pub format: Option<LogFormat>,
}

/// `format: text` or `format: {output: json}` as Teleport writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LogFormat {
    Name(String),
    Detailed { output: String },
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    #[serde(default)]
    pub enabled: bool,
    pub exporter_url: Option<String>,
    pub sampling_rate_per_million: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub enabled: Option<bool>,
    pub cluster_name: Option<String>,
    pub listen_addr: Option<String>,
    #[serde(default)]
    pub tokens: Vec<String>,
    pub public_addr: Option<OneOrMany>,
    /// A leaf counts as offline this long after its last live tunnel (e.g. `15s`).
    pub tunnel_offline_after: Option<String>,
    /// PEM CA file that signs the root proxy's HTTPS certificate, for `tctl create` of a
    /// trusted_cluster whose root uses a private CA.
    pub trusted_cluster_ca_file: Option<String>,
    /// The key-encryption key that seals the CA private keys in the database (default
    /// `<data_dir>/ca-kek`, created on first start).
    pub ca_key_encryption_key_file: Option<String>,
    /// Timeouts and connection caps of the gRPC listener.
    pub connection_limits: Option<crate::limits::ConnectionLimitsSection>,
    /// Per-user lockout after failed password logins.
    pub lockout: Option<crate::logins::LockoutSection>,
    /// How many argon2 hashes run at once and may wait.
    pub password_hashing: Option<crate::logins::PasswordHashingSection>,
    /// Per-address token bucket for the unauthenticated `Join` call.
    pub join_rate_limit: Option<crate::logins::RateLimitSection>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub enabled: Option<bool>,
    pub web_listen_addr: Option<String>,
    pub listen_addr: Option<String>,
    pub tunnel_listen_addr: Option<String>,
    pub public_addr: Option<OneOrMany>,
    pub ssh_public_addr: Option<OneOrMany>,
    pub tunnel_public_addr: Option<OneOrMany>,
    #[serde(default)]
    pub https_keypairs: Vec<KeyPairPaths>,
    /// On SIGTERM, how long open sessions may finish before they are cut (e.g. `30s`).
    pub shutdown_drain_timeout: Option<String>,
    /// Timeouts and connection caps of the web, SSH and tunnel listeners.
    pub connection_limits: Option<crate::limits::ConnectionLimitsSection>,
    /// Per-address token bucket for the unauthenticated web routes (login, ping, ...).
    pub rate_limit: Option<crate::logins::RateLimitSection>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPairPaths {
    pub key_file: String,
    pub cert_file: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    pub enabled: Option<bool>,
    pub listen_addr: Option<String>,
    pub public_addr: Option<OneOrMany>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Timeouts and connection caps of the SSH listener.
    pub connection_limits: Option<crate::limits::ConnectionLimitsSection>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagSection {
    pub enabled: Option<bool>,
    pub listen_addr: Option<String>,
}

impl FileConfig {
    /// Reads and checks a YAML file; errors name the file, and the line for syntax errors.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file_err = |reason: String| ConfigError::File { path: path.display().to_string(), reason };
        // Read it ourselves first so a missing file says so plainly.
        std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
        let cfg = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Yaml))
            .build()
            .map_err(|e| file_err(e.to_string()))?;
        cfg.try_deserialize::<FileConfig>().map_err(|e| file_err(e.to_string()))
    }

    /// Parses YAML text (used by tests and `configure` round trips).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| ConfigError::File { path: "<text>".into(), reason: e.to_string() })?;
        cfg.try_deserialize::<FileConfig>()
            .map_err(|e| ConfigError::File { path: "<text>".into(), reason: e.to_string() })
    }
}
