//! Private data directories: every service keeps its `data_dir` 0700 and each file in it 0600.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a directory holding keys: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a file holding keys, identities or records: the owner only.
pub const FILE_MODE: u32 = 0o600;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data_dir {dir} is mode {mode:04o}: group or others can read or enter it, and it already holds \
         data (keys, identities, records); run `chmod 700 {dir}` and start again"
    )]
    TooOpen { dir: String, mode: u32 },
    #[error("data_dir {dir} is not a directory")]
    NotADirectory { dir: String },
    #[error("data_dir {path}: {context}: {source}")]
    Io { path: String, context: &'static str, source: std::io::Error },
}

fn io(path: &Path, context: &'static str) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.display().to_string();
    move |source| DataDirError::Io { path, context, source }
}

/// Sets the process umask to 077, so whatever a service (or a library it uses, such as the
/// database) creates from now on is private to its user. Services call it first thing.
pub fn restrict_umask() {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o077));
}

/// What [`prepare`] changed, for the caller to log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The directory was new, or existed empty with a looser mode, and is now 0700.
    pub tightened_empty_dir: bool,
    /// Entries inside whose mode was lowered to 0700 (directories) or 0600 (files).
    pub fixed: Vec<PathBuf>,
}

/// Makes `dir` ready to hold secrets: creates it 0700 when missing, tightens an existing
/// empty directory (a fresh Docker volume is 0755 and empty), refuses one that already holds
/// data while group or others can read or enter it, and lowers the modes of everything
/// inside to 0700/0600. Symbolic links are left alone, never followed.
pub fn prepare(dir: &Path) -> Result<Prepared, DataDirError> {
    let mut out = Prepared::default();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io(dir, "cannot create it"))?;
            // The builder's mode is filtered by the umask; make sure of 0700 itself.
            set_mode(dir, DIR_MODE)?;
            out.tightened_empty_dir = true;
            return Ok(out);
        }
        Err(e) => return Err(io(dir, "cannot read its mode")(e)),
    };
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory { dir: dir.display().to_string() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let empty = std::fs::read_dir(dir).map_err(io(dir, "cannot list it"))?.next().is_none();
        if !empty {
            // Whatever it holds may have been copied already: the operator must look, not us.
            return Err(DataDirError::TooOpen { dir: dir.display().to_string(), mode });
        }
        set_mode(dir, DIR_MODE)?;
        out.tightened_empty_dir = true;
        return Ok(out);
    }
    fix_tree(dir, &mut out.fixed)?;
    Ok(out)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DataDirError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path, "cannot change its mode"))
}

/// Lowers modes below `dir` (which is private already) to 0700 for directories and 0600 for
/// files, so older data directories and files a library made with its own mode end up private.
fn fix_tree(dir: &Path, fixed: &mut Vec<PathBuf>) -> Result<(), DataDirError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir, "cannot list it"))? {
        let entry = entry.map_err(io(dir, "cannot list it"))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path, "cannot read its mode"))?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            if mode != DIR_MODE {
                set_mode(&path, DIR_MODE)?;
                fixed.push(path.clone());
            }
            fix_tree(&path, fixed)?;
        } else if meta.is_file() && mode != FILE_MODE {
            set_mode(&path, FILE_MODE)?;
            fixed.push(path);
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents 0700 (whatever the umask). Existing ones keep
/// their mode: a parent outside the data directory is the operator's to choose.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_a_missing_dir_0700_whatever_the_umask() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        let p = prepare(&dir).unwrap();
        assert!(p.tightened_empty_dir);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn tightens_an_empty_open_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("vol");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare(&dir).unwrap().tightened_empty_dir);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn refuses_an_open_dir_holding_data_and_says_how_to_fix_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("admin-identity.json"), "{}").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = prepare(&dir).unwrap_err().to_string();
        let shown = dir.display().to_string();
        assert!(e.contains(&shown) && e.contains("0755") && e.contains(&format!("chmod 700 {shown}")), "{e}");
        // Refused means untouched: the operator decides.
        assert_eq!(mode(&dir), 0o755);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let e = prepare(&dir).unwrap_err().to_string();
        assert!(e.contains("0750"), "{e}");
    }

    #[test]
    fn lowers_modes_inside_and_leaves_symlinks_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("backend/blobs")).unwrap();
        std::fs::write(dir.join("backend/db"), "x").unwrap();
        std::fs::write(dir.join("backend/blobs/1"), "x").unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        for (p, m) in [("backend", 0o755), ("backend/blobs", 0o755), ("backend/db", 0o644), ("backend/blobs/1", 0o666)] {
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let p = prepare(&dir).unwrap();
        assert_eq!(p.fixed.len(), 4, "{:?}", p.fixed);
        assert_eq!(mode(&dir.join("backend")), 0o700);
        assert_eq!(mode(&dir.join("backend/blobs")), 0o700);
        assert_eq!(mode(&dir.join("backend/db")), 0o600);
        assert_eq!(mode(&dir.join("backend/blobs/1")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is not ours to change");
        assert!(prepare(&dir).unwrap().fixed.is_empty());
    }

    #[test]
    fn refuses_a_file_as_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let e = prepare(&f).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
