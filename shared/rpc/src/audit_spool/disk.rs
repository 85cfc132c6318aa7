//! The audit spool's files: the 0700 directory, 0600 segment files, the delivery cursor, and loading what an earlier run left.

use std::collections::VecDeque;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Segment, SpoolError, State};

const SEGMENT_SUFFIX: &str = ".jsonl";
const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const LOCK_FILE: &str = "lock";

/// Where delivery stands: the next line starts at `offset` of segment `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    pub seq: u64,
    pub offset: u64,
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A new, empty segment file (0600) opened for appending.
pub(super) fn create_segment(dir: &Path, seq: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, seq);
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SpoolError::io("creating", &path, e))
}

/// Makes a new directory entry durable; a failure only weakens crash safety, so it is logged.
pub(super) fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!("audit spool: cannot sync the directory {}: {e}", dir.display());
    }
}

/// Records the cursor: written aside, then renamed over the old one, so it is always whole.
pub(super) fn write_cursor(dir: &Path, cursor: Cursor) -> Result<(), SpoolError> {
    let tmp = dir.join(CURSOR_TMP);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| SpoolError::io("writing", &tmp, e))?;
    f.write_all(format!("{} {}\n", cursor.seq, cursor.offset).as_bytes())
        .map_err(|e| SpoolError::io("writing", &tmp, e))?;
    let path = dir.join(CURSOR_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| SpoolError::io("renaming into", &path, e))
}

/// The saved cursor; none when there is no file or it is unreadable (then delivery starts
/// at the oldest event kept, and auth drops the resent ones by id).
fn read_cursor(dir: &Path) -> Option<Cursor> {
    let path = dir.join(CURSOR_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("audit spool: cannot read {}: {e}; resending from the oldest event kept", path.display());
            return None;
        }
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(seq)), Some(Ok(offset)), None) => Some(Cursor { seq, offset }),
        _ => {
            tracing::warn!("audit spool: {} is damaged; resending from the oldest event kept", path.display());
            None
        }
    }
}

/// Counts the lines in the first `limit` bytes of `path`: every newline, plus a last line
/// without one (a write torn by a crash, which delivery will skip).
fn count_lines(path: &Path, limit: u64) -> Result<u64, SpoolError> {
    let f = File::open(path).map_err(|e| SpoolError::io("reading", path, e))?;
    let mut r = BufReader::with_capacity(64 * 1024, f.take(limit));
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let buf = r.fill_buf().map_err(|e| SpoolError::io("reading", path, e))?;
        if buf.is_empty() {
            break;
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[buf.len() - 1];
        let n = buf.len();
        r.consume(n);
    }
    Ok(if last == b'\n' { lines } else { lines + 1 })
}

/// Creates `dir` (0700; an existing one is narrowed to 0700) and loads what it holds:
/// segments still to deliver and the cursor. Segments before the cursor and empty ones
/// are removed. A new segment is always started, so nothing is appended after a line
/// that a crash may have torn. The returned lock file holds the spool for this process
/// until it is closed.
pub(super) fn load(dir: &Path) -> Result<(State, File), SpoolError> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| SpoolError::io("creating", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| SpoolError::io("restricting to 0700", dir, e))?;
    let lock = lock(dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| SpoolError::io("listing", dir, e))? {
        let entry = entry.map_err(|e| SpoolError::io("listing", dir, e))?;
        let Some(seq) = entry.file_name().to_str().and_then(segment_seq) else { continue };
        let path = entry.path();
        let bytes = entry.metadata().map_err(|e| SpoolError::io("reading", &path, e))?.len();
        found.push(Segment { seq, bytes, events: 0 });
    }
    found.sort_by_key(|s| s.seq);

    let saved = read_cursor(dir);
    let mut segments = VecDeque::new();
    for mut seg in found {
        let path = segment_path(dir, seg.seq);
        let delivered = saved.is_some_and(|c| seg.seq < c.seq || (seg.seq == c.seq && c.offset >= seg.bytes));
        if seg.bytes == 0 || delivered {
            remove(&path);
            continue;
        }
        seg.events = count_lines(&path, seg.bytes)?;
        segments.push_back(seg);
    }
    let next = segments.back().map_or(1, |s: &Segment| s.seq + 1);
    let (cursor, delivered_in_cursor) = match (saved, segments.front()) {
        (Some(c), Some(first)) if c.seq == first.seq => {
            let before = count_lines(&segment_path(dir, c.seq), c.offset)?;
            // A cursor inside a line (damage) counts that line as delivered: it will be
            // read from the middle, fail to parse, and be skipped.
            (c, before)
        }
        (_, Some(first)) => (super::Cursor { seq: first.seq, offset: 0 }, 0),
        (_, None) => (super::Cursor { seq: next, offset: 0 }, 0),
    };
    let writer = create_segment(dir, next)?;
    sync_dir(dir);
    segments.push_back(Segment { seq: next, bytes: 0, events: 0 });
    let total_bytes = segments.iter().map(|s| s.bytes).sum();
    let mut state = State {
        segments,
        writer,
        cursor,
        delivered_in_cursor,
        total_bytes,
        queued: 0,
        dirty: false,
    };
    state.queued = state.segments.iter().map(|s| state.undelivered_in(s)).sum();
    Ok((state, lock))
}

/// Takes the spool for this process: two writers would interleave segments and deliver
/// every event twice.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SpoolError::io("opening", &path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Busy(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(SpoolError::io("locking", &path, e)),
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("audit spool: cannot remove {}: {e}", path.display());
    }
}
