//! Errors of the benchmark harness, each naming the step that failed.

/// Why a benchmark run stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is missing: build the binaries first (cargo build --release --workspace --bins)")]
    MissingBinary(String),
    #[error("{cmd} failed (exit {code}):\nstdout: {stdout}\nstderr: {stderr}")]
    Command { cmd: String, code: i32, stdout: String, stderr: String },
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("{what} printed something unreadable: {reason}")]
    Parse { what: String, reason: String },
    #[error("trust with the root for simulated leaf {leaf} failed: {reason}")]
    Trust { leaf: String, reason: String },
    #[error("key material: {0}")]
    Pki(#[from] portcullis_pki::PkiError),
    #[error("gRPC set-up: {0}")]
    Rpc(#[from] portcullis_rpc::RpcError),
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io { what: what.into(), source }
    }

    pub fn parse(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        BenchError::Parse { what: what.into(), reason: reason.to_string() }
    }
}
