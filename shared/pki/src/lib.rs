//! Key material for Portcullis: SSH and X.509 certificate authorities, identities, secrets.
#![forbid(unsafe_code)]

pub mod datadir;
pub mod error;
pub mod identity;
pub mod kek;

pub mod ssh;
pub mod transport;
pub mod verify;
pub mod x509;

pub use error::PkiError;
pub use identity::Identity;
/// One secret newtype for the workspace; it lives in types so the web API bodies use it too.
pub use portcullis_types::Secret;

/// Seconds since the Unix epoch, the unit of SSH certificate validity.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| PkiError::Random)?;
    Ok(buf)
}

/// A random hex string of `2 * N` characters, for tokens and ids.
pub fn random_hex<const N: usize>() -> Result<String, PkiError> {
    Ok(hex::encode(random_bytes::<N>()?))
}
