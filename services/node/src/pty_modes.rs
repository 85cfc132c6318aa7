//! Applies the terminal modes a client sends with `pty-req` (RFC 4254 §8) to a new pty.

use std::os::fd::AsFd;

use nix::sys::termios::{
    InputFlags, LocalFlags, OutputFlags, SetArg, SpecialCharacterIndices as Cc, tcgetattr, tcsetattr,
};
use russh::Pty;

/// Sets the modes the client asked for; modes this platform lacks are skipped, because a
/// terminal that differs in a rarely used flag is better than no session at all.
pub fn apply(fd: impl AsFd, modes: &[(Pty, u32)]) -> nix::Result<()> {
    if modes.is_empty() {
        return Ok(());
    }
    let mut t = tcgetattr(fd.as_fd())?;
    for &(mode, value) in modes {
        let on = value != 0;
        if let Some(cc) = control_char(mode) {
            // The client sends 255 for "disabled"; termios spells that _POSIX_VDISABLE (0).
            let v = if value > 254 { 0 } else { value as u8 };
            t.control_chars[cc as usize] = v;
        } else if let Some(f) = local_flag(mode) {
            t.local_flags.set(f, on);
        } else if let Some(f) = input_flag(mode) {
            t.input_flags.set(f, on);
        } else if let Some(f) = output_flag(mode) {
            t.output_flags.set(f, on);
        }
    }
    tcsetattr(fd.as_fd(), SetArg::TCSANOW, &t)
}

fn control_char(mode: Pty) -> Option<Cc> {
    Some(match mode {
        Pty::VINTR => Cc::VINTR,
        Pty::VQUIT => Cc::VQUIT,
        Pty::VERASE => Cc::VERASE,
        Pty::VKILL => Cc::VKILL,
        Pty::VEOF => Cc::VEOF,
        Pty::VEOL => Cc::VEOL,
        Pty::VEOL2 => Cc::VEOL2,
        Pty::VSTART => Cc::VSTART,
        Pty::VSTOP => Cc::VSTOP,
        Pty::VSUSP => Cc::VSUSP,
        Pty::VREPRINT => Cc::VREPRINT,
        Pty::VWERASE => Cc::VWERASE,
        Pty::VLNEXT => Cc::VLNEXT,
        Pty::VDISCARD => Cc::VDISCARD,
        _ => return None,
    })
}

fn local_flag(mode: Pty) -> Option<LocalFlags> {
    Some(match mode {
        Pty::ISIG => LocalFlags::ISIG,
        Pty::ICANON => LocalFlags::ICANON,
        Pty::ECHO => LocalFlags::ECHO,
        Pty::ECHOE => LocalFlags::ECHOE,
        Pty::ECHOK => LocalFlags::ECHOK,
        Pty::ECHONL => LocalFlags::ECHONL,
        Pty::NOFLSH => LocalFlags::NOFLSH,
        Pty::TOSTOP => LocalFlags::TOSTOP,
        Pty::IEXTEN => LocalFlags::IEXTEN,
        Pty::ECHOCTL => LocalFlags::ECHOCTL,
        Pty::ECHOKE => LocalFlags::ECHOKE,
        Pty::PENDIN => LocalFlags::PENDIN,
        _ => return None,
    })
}

fn input_flag(mode: Pty) -> Option<InputFlags> {
    Some(match mode {
        Pty::IGNPAR => InputFlags::IGNPAR,
        Pty::PARMRK => InputFlags::PARMRK,
        Pty::INPCK => InputFlags::INPCK,
        Pty::ISTRIP => InputFlags::ISTRIP,
        Pty::INLCR => InputFlags::INLCR,
        Pty::IGNCR => InputFlags::IGNCR,
        Pty::ICRNL => InputFlags::ICRNL,
        Pty::IXON => InputFlags::IXON,
        Pty::IXANY => InputFlags::IXANY,
        Pty::IXOFF => InputFlags::IXOFF,
        Pty::IMAXBEL => InputFlags::IMAXBEL,
        Pty::IUTF8 => InputFlags::IUTF8,
        _ => return None,
    })
}

fn output_flag(mode: Pty) -> Option<OutputFlags> {
    Some(match mode {
        Pty::OPOST => OutputFlags::OPOST,
        Pty::ONLCR => OutputFlags::ONLCR,
        Pty::OCRNL => OutputFlags::OCRNL,
        Pty::ONOCR => OutputFlags::ONOCR,
        Pty::ONLRET => OutputFlags::ONLRET,
        _ => return None,
    })
}
