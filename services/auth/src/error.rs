//! The auth service's errors, and the one place they become gRPC statuses.

use portcullis_pki::PkiError;
use portcullis_storage::StorageError;
use portcullis_types::TypesError;
use tonic::Status;

/// What can go wrong in the auth service. Messages are safe to show users: they never
/// contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotImplemented(String),
    /// Too many calls (a login flood, a per-address rate limit): refused before any work.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: std::time::Duration },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Types(#[from] TypesError),
    #[error(transparent)]
    Config(#[from] portcullis_config::ConfigError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    pub fn denied(msg: impl Into<String>) -> Self {
        AuthError::AccessDenied(msg.into())
    }
    pub fn bad(msg: impl Into<String>) -> Self {
        AuthError::BadRequest(msg.into())
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AuthError::Io { context: context.into(), source }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match &e {
            AuthError::AccessDenied(m) => Status::permission_denied(m.clone()),
            AuthError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
            AuthError::NotFound(m) => Status::not_found(m.clone()),
            AuthError::AlreadyExists(m) => Status::already_exists(m.clone()),
            AuthError::BadRequest(m) => Status::invalid_argument(m.clone()),
            AuthError::NotImplemented(m) => Status::unimplemented(m.clone()),
            AuthError::TooManyRequests { message, retry_after } => {
                let mut st = Status::resource_exhausted(message.clone());
                // Whole seconds, as HTTP's Retry-After.
                let secs = portcullis_rpc::rate_limit::retry_after_secs(*retry_after);
                if let Ok(v) = secs.to_string().parse() {
                    st.metadata_mut().insert("retry-after", v);
                }
                st
            }
            AuthError::Types(t) => Status::invalid_argument(t.to_string()),
            // The database is down: clients may retry, or try another auth server.
            AuthError::Storage(StorageError::Unavailable { .. }) => {
                tracing::error!(error = %e, "storage unavailable");
                Status::unavailable(format!("the auth service cannot reach its database: {e}"))
            }
            AuthError::Pki(p) => Status::invalid_argument(p.to_string()),
            AuthError::Storage(_)
            | AuthError::Config(_)
            | AuthError::Io { .. }
            | AuthError::Transport(_)
            | AuthError::Internal(_) => {
                tracing::error!(error = %e, "internal error");
                Status::internal(format!("internal error in the auth service: {e}"))
            }
        }
    }
}
