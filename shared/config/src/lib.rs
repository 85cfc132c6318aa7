//! Configuration: the YAML file schema (`file`), command-line flags (`flags`), and the
//! validated settings each service runs with (`settings`).
#![forbid(unsafe_code)]

pub mod file;
pub mod flags;
pub mod limits;
pub mod logins;
pub mod sample;
pub mod settings;
pub mod storage;

pub use file::FileConfig;
pub use flags::CommonFlags;
pub use limits::ConnectionLimits;
pub use logins::{LockoutSettings, LoginLimits, PasswordHashingSettings, RateLimitSettings};
pub use settings::{
    AgentSettings, AuthSettings, Common, LogSettings, NodeSettings, ProxySettings, StaticToken,
    TracingSettings,
};
pub use storage::{ConnString, StorageSettings};

/// Default ports (Teleport's, so guides and firewall rules written for it apply).
pub mod ports {
    pub const AUTH: u16 = 3025;
    pub const PROXY_WEB: u16 = 3080;
    pub const PROXY_SSH: u16 = 3023;
    pub const PROXY_TUNNEL: u16 = 3024;
    pub const NODE_SSH: u16 = 3022;
}

/// A configuration problem, naming the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("config key {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{0}")]
    Missing(String),
}

impl ConfigError {
    pub fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.to_string(), reason: reason.into() }
    }
}
