//! Errors of certificate and key handling.

/// Anything that can go wrong making, reading or checking keys and certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("the system random number generator failed")]
    Random,
    #[error("SSH key error: {0}")]
    SshKey(String),
    #[error("X.509 error: {0}")]
    X509(String),
    #[error("certificate is not a {expected} certificate")]
    WrongCertType { expected: &'static str },
    #[error("certificate is signed by an authority this cluster does not trust (CA {fingerprint})")]
    UntrustedAuthority { fingerprint: String },
    #[error("certificate expired at {expired_at} (UTC); run 'tsh login' to get a new one")]
    Expired { expired_at: String },
    #[error("certificate is not valid before {valid_after} (UTC)")]
    NotYetValid { valid_after: String },
    #[error("certificate signature is invalid")]
    BadSignature,
    #[error("certificate extension {name} is malformed: {reason}")]
    BadExtension { name: &'static str, reason: String },
    #[error("identity file {path}: {reason}")]
    IdentityFile { path: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Kek(#[from] crate::kek::KekError),
}

impl From<russh::keys::ssh_key::Error> for PkiError {
    fn from(e: russh::keys::ssh_key::Error) -> Self {
        PkiError::SshKey(e.to_string())
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::X509(e.to_string())
    }
}
