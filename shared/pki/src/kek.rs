//! The key-encryption key (KEK) that seals CA private keys at rest with AES-256-GCM.
//!
//! The KEK lives in its own file, outside the database, so a copy of the database alone
//! cannot sign anything. The file holds 32 random bytes (or 64 hex digits, so operators can
//! make one with `openssl rand -hex 32`), is 0600, and is created on first start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::Secret;

/// Length of the key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Marks a sealed value and its format: `pcseal1:` then base64 of nonce, ciphertext and tag.
const SEALED_PREFIX: &str = "pcseal1:";

/// What can go wrong with the KEK file or a sealed value. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error(
        "the CA keys in the database were sealed with a different key-encryption key ({file}); \
         start with the key file they were sealed with (auth_service.ca_key_encryption_key_file)"
    )]
    WrongKey { file: String },
    #[error(
        "the CA keys in the database are sealed, but the key-encryption key file {file} does not exist; \
         restore it from your backup (auth_service.ca_key_encryption_key_file): without it the CAs cannot be used"
    )]
    Missing { file: String },
    #[error("key-encryption key file {file} is mode {mode:04o}: group or others can read it; run `chmod 600 {file}`")]
    TooOpen { file: String, mode: u32 },
    #[error("key-encryption key file {file} must hold {KEY_LEN} random bytes or {} hex digits; it holds {len} bytes", KEY_LEN * 2)]
    Malformed { file: String, len: usize },
    #[error("sealed value {what} is malformed: {reason}")]
    BadSealed { what: String, reason: &'static str },
    #[error("key-encryption key file {file}: {context}: {source}")]
    Io { file: String, context: &'static str, source: std::io::Error },
    #[error("the system random number generator failed")]
    Random,
}

/// The key-encryption key and the file it came from. `Debug` shows the file, never the key.
pub struct Kek {
    key: Secret<[u8; KEY_LEN]>,
    path: PathBuf,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Kek {
    /// A KEK from raw bytes (tests and tools); `path` is only used in messages.
    pub fn from_bytes(key: [u8; KEY_LEN], path: impl Into<PathBuf>) -> Self {
        Kek { key: Secret::new(key), path: path.into() }
    }

    /// The file the key came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self) -> String {
        self.path.display().to_string()
    }

    /// Reads the KEK file; `None` when it does not exist. Refuses a file group or others can
    /// read, as they could then unseal a copied database.
    pub fn load(path: &Path) -> Result<Option<Kek>, KekError> {
        let file = path.display().to_string();
        let ioe = |context| {
            let file = file.clone();
            move |source| KekError::Io { file, context, source }
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ioe("cannot read its mode")(e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KekError::TooOpen { file, mode });
        }
        let bytes = Secret::new(std::fs::read(path).map_err(ioe("cannot read it"))?);
        let key = parse_key(bytes.expose()).ok_or(KekError::Malformed { file, len: bytes.expose().len() })?;
        Ok(Some(Kek { key: Secret::new(key), path: path.to_path_buf() }))
    }

    /// Creates the KEK file with fresh random bytes, mode 0600, its directory 0700 when
    /// missing. Never replaces an existing file.
    pub fn create(path: &Path) -> Result<Kek, KekError> {
        let file = path.display().to_string();
        let ioe = |context| {
            let file = file.clone();
            move |source| KekError::Io { file, context, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::datadir::create_private_dir(dir).map_err(ioe("cannot create its directory"))?;
        }
        let key = crate::random_bytes::<KEY_LEN>().map_err(|_| KekError::Random)?;
        // Written whole under a private temporary name, then hard-linked into place: several
        // auth replicas may share one key file, and none may ever read it half-written. The
        // link fails with AlreadyExists if another process got there first.
        let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        tmp_name.push(format!(".tmp-{}-{}", std::process::id(), crate::random_hex::<8>().unwrap_or_default()));
        let tmp = path.with_file_name(tmp_name);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::datadir::FILE_MODE)
                .open(&tmp)
                .map_err(ioe("cannot create it"))?;
            f.write_all(&key).and_then(|_| f.sync_all()).map_err(ioe("cannot write it"))?;
            std::fs::hard_link(&tmp, path).map_err(ioe("cannot create it"))
        })();
        let _ = std::fs::remove_file(&tmp);
        written?;
        Ok(Kek { key: Secret::new(key), path: path.to_path_buf() })
    }

    fn cipher(&self) -> Result<LessSafeKey, KekError> {
        // AES-256 accepts any 32 bytes: this fails only if ring itself is broken.
        UnboundKey::new(&AES_256_GCM, self.key.expose())
            .map(LessSafeKey::new)
            .map_err(|_| KekError::WrongKey { file: self.file() })
    }

    /// Seals `plaintext` with a random nonce; `aad` (the storage key) is bound to it, so a
    /// sealed value moved to another record does not open.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<String, KekError> {
        let nonce = crate::random_bytes::<NONCE_LEN>().map_err(|_| KekError::Random)?;
        let mut buf = plaintext.to_vec();
        self.cipher()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| KekError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    /// Opens a value [`Kek::seal`] made for the same `aad`. Any mismatch (another KEK, a
    /// value moved between records, tampering) is reported as a wrong key.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Secret<Vec<u8>>, KekError> {
        let bad = |reason| KekError::BadSealed { what: aad.to_string(), reason };
        let body = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(|| bad("unknown format"))?;
        let raw = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| bad("not base64"))?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(bad("too short"));
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad("too short"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .cipher()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| KekError::WrongKey { file: self.file() })?;
        Ok(Secret::new(plain.to_vec()))
    }
}

/// Whether `value` looks like something [`Kek::seal`] made.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// 32 raw bytes, or 64 hex digits with optional surrounding whitespace.
fn parse_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    if let Ok(k) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Some(k);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded = hex::decode(text).ok()?;
    <[u8; KEY_LEN]>::try_from(decoded.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/ca-kek");
        assert!(Kek::load(&path).unwrap().is_none());
        let k = Kek::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let sealed = k.seal("cas/tls", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("PRIVATE"), "{sealed}");
        let again = Kek::load(&path).unwrap().unwrap();
        assert_eq!(again.open("cas/tls", &sealed).unwrap().expose(), b"-----BEGIN PRIVATE KEY-----");
        // Random nonces: sealing twice gives different values.
        assert_ne!(sealed, k.seal("cas/tls", b"-----BEGIN PRIVATE KEY-----").unwrap());
        assert!(Kek::create(&path).is_err(), "an existing KEK is never replaced");
    }

    #[test]
    fn wrong_key_or_moved_value_is_a_clear_error() {
        let a = Kek::from_bytes([1; KEY_LEN], "/etc/a-kek");
        let b = Kek::from_bytes([2; KEY_LEN], "/etc/b-kek");
        let sealed = a.seal("cas/ssh_user", b"secret").unwrap();
        let e = b.open("cas/ssh_user", &sealed).unwrap_err().to_string();
        assert!(
            e.contains("sealed with a different key-encryption key (/etc/b-kek)"),
            "{e}"
        );
        assert!(matches!(a.open("cas/ssh_host", &sealed), Err(KekError::WrongKey { .. })), "aad is bound");
        assert!(matches!(a.open("cas/ssh_user", "pcseal1:AAAA"), Err(KekError::BadSealed { .. })));
        assert!(matches!(a.open("cas/ssh_user", "plain"), Err(KekError::BadSealed { .. })));
    }

    #[test]
    fn refuses_a_readable_or_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        Kek::create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Kek::load(&path).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let e = Kek::load(&path).unwrap_err().to_string();
        assert!(e.contains("must hold 32 random bytes"), "{e}");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(Kek::load(&path).unwrap().is_some(), "64 hex digits and a newline are accepted");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let k = Kek::from_bytes([0xAB; KEY_LEN], "/x/kek");
        let d = format!("{k:?}");
        assert!(d.contains("/x/kek") && !d.contains("171") && !d.to_lowercase().contains("ab, "), "{d}");
    }
}
