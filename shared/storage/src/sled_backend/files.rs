//! The files of a sled data directory: private modes, and the rewrite that drops old bytes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::StorageError;

/// `dir` with `suffix` appended to its last component, beside it.
pub(crate) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Backend(format!("{what} {}: {e}", path.display()))
}

pub(crate) fn remove_dir_if_present(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove", path, e)),
    }
}

/// Lowers the database's directories to 0700 and files to 0600: they hold the CAs and
/// password hashes, and sled creates its files with the process umask.
pub(crate) fn restrict_modes(dir: &Path) -> Result<(), StorageError> {
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err("cannot restrict", p, e))
    };
    set(dir, 0o700)?;
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))? {
        let entry = entry.map_err(|e| io_err("cannot list", dir, e))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_err("cannot read", &path, e))?;
        if meta.is_dir() {
            restrict_modes(&path)?;
        } else if meta.is_file() && meta.permissions().mode() & 0o777 != 0o600 {
            set(&path, 0o600)?;
        }
    }
    Ok(())
}
