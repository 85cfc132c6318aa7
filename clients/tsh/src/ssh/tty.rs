//! The local terminal: raw mode for interactive sessions (restored on drop) and its size.

use std::os::fd::AsFd;

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::error::TshError;

/// Puts standard input's terminal in raw mode; dropping it restores the previous mode,
/// also when the session ends with an error.
pub struct RawMode {
    original: Termios,
}

impl RawMode {
    pub fn enable() -> Result<Self, TshError> {
        let stdin = std::io::stdin();
        let original = tcgetattr(stdin.as_fd())
            .map_err(|e| TshError::Terminal(format!("cannot read mode: {e}")))?;
        let mut raw = original.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)
            .map_err(|e| TshError::Terminal(format!("cannot enter raw mode: {e}")))?;
        Ok(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        if let Err(e) = tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &self.original) {
            tracing::warn!(error = %e, "cannot restore the terminal mode");
        }
    }
}

/// Columns and rows of the terminal on standard input: asked of `stty size` (reading the
/// size directly needs an `ioctl`, i.e. unsafe code), else `COLUMNS`/`LINES`, else 80x24.
pub fn window_size() -> (u32, u32) {
    stty_size().or_else(env_size).unwrap_or((80, 24))
}

fn stty_size() -> Option<(u32, u32)> {
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_stty_size(&String::from_utf8_lossy(&out.stdout))
}

/// `stty size` prints `rows cols`.
fn parse_stty_size(text: &str) -> Option<(u32, u32)> {
    let mut it = text.split_whitespace();
    let rows: u32 = it.next()?.parse().ok()?;
    let cols: u32 = it.next()?.parse().ok()?;
    (rows > 0 && cols > 0).then_some((cols, rows))
}

fn env_size() -> Option<(u32, u32)> {
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|v| *v > 0)
    };
    Some((get("COLUMNS")?, get("LINES")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stty_output_is_rows_then_columns() {
        assert_eq!(parse_stty_size("50 132\n"), Some((132, 50)));
        assert_eq!(parse_stty_size("0 0\n"), None);
        assert_eq!(parse_stty_size(""), None);
    }
}
