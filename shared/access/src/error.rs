//! Why an access question could not be answered, or was answered no.

/// An access refusal or a failure to decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The input (a certificate, a host name) is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The caller's credentials are not valid here.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials, but no access.
    #[error("{0}")]
    Denied(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
}
