//! Owners and modes of restored entries under reduced privileges.
//!
//! The agent runs under systemd as user `tek` with ambient capabilities and
//! `RestrictSUIDSGID=yes`, so "am I root" is the wrong question twice over: whether owners can be
//! set depends on CAP_CHOWN, and a chmod that sets setuid/setgid bits can be refused (EPERM, by
//! the unit's seccomp filter) even with every capability. Neither fails a restore: the result
//! says what could not be restored.

use nix::sys::stat::Mode;

/// Whether, and how, owners are restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// CAP_CHOWN is effective: set every entry's uid and gid.
    Restore,
    /// No CAP_CHOWN: entries get the restoring process's ids; count those that differ.
    Keep {
        /// Effective uid of the restoring process.
        uid: u32,
        /// Effective gid.
        gid: u32,
    },
}

impl Ownership {
    /// Decides by capability, not by uid: the agent runs as user `tek` with ambient
    /// capabilities, and root without CAP_CHOWN (a bounding set drop) cannot chown.
    pub(crate) fn detect() -> Ownership {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if has_cap(&status, CAP_CHOWN) {
            Ownership::Restore
        } else {
            Ownership::Keep {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        }
    }
}

/// `CAP_CHOWN` from `<linux/capability.h>` (libc does not export capability numbers).
const CAP_CHOWN: u32 = 0;

/// True when capability `cap` is in the `CapEff:` mask of a `/proc/<pid>/status` text.
pub(crate) fn has_cap(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1u64 << cap) != 0)
}

/// Sets `mode` with `chmod`; when that is refused with EPERM and the mode has setuid/setgid
/// bits (systemd's `RestrictSUIDSGID=yes` filters exactly those chmods), sets it without them
/// and says so. Returns the note for the result, if bits were dropped.
pub(crate) fn set_mode(
    mode: u32,
    n: u64,
    mut chmod: impl FnMut(Mode) -> nix::Result<()>,
) -> nix::Result<Option<String>> {
    const SETID: u32 = 0o6000;
    match chmod(Mode::from_bits_truncate(mode)) {
        Err(nix::errno::Errno::EPERM) if mode & SETID != 0 => {
            chmod(Mode::from_bits_truncate(mode & !SETID))?;
            Ok(Some(format!(
                "entry {n}: mode {mode:04o} restored as {:04o} (setting setuid/setgid refused)",
                mode & !SETID
            )))
        }
        r => r.map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_mask_parsing() {
        let status = "Name:\ttek\nCapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\n";
        assert!(has_cap(status, CAP_CHOWN));
        let status = "CapEff:\t00000000a80425fa\n";
        assert!(!has_cap(status, CAP_CHOWN));
        assert!(has_cap(status, 1));
        assert!(!has_cap("no such line", CAP_CHOWN));
        assert!(!has_cap("CapEff:\tzz\n", CAP_CHOWN));
    }

    #[test]
    fn setid_bits_dropped_on_eperm_only() {
        // What RestrictSUIDSGID does: refuse exactly the chmods that set S_ISUID or S_ISGID.
        let mut seen = Vec::new();
        let mut restricted = |m: Mode| {
            seen.push(m.bits());
            if m.bits() & 0o6000 != 0 {
                Err(nix::errno::Errno::EPERM)
            } else {
                Ok(())
            }
        };
        let note = set_mode(0o4755, 7, &mut restricted).unwrap().unwrap();
        assert!(
            note.starts_with("entry 7: mode 4755 restored as 0755"),
            "{note}"
        );
        assert_eq!(
            set_mode(0o2775, 8, &mut restricted).unwrap().unwrap()[..8],
            *"entry 8:"
        );
        assert_eq!(set_mode(0o644, 9, &mut restricted).unwrap(), None);
        assert_eq!(seen, [0o4755, 0o755, 0o2775, 0o775, 0o644]);
        // EPERM on a mode without those bits is a real error; other errors pass through.
        let mut refuse = |_: Mode| Err(nix::errno::Errno::EPERM);
        assert_eq!(
            set_mode(0o644, 1, &mut refuse),
            Err(nix::errno::Errno::EPERM)
        );
        let mut io = |_: Mode| Err(nix::errno::Errno::EIO);
        assert_eq!(set_mode(0o4755, 1, &mut io), Err(nix::errno::Errno::EIO));
    }

    #[test]
    fn detect_matches_this_process() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let want = if has_cap(&status, CAP_CHOWN) {
            Ownership::Restore
        } else {
            Ownership::Keep {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        };
        assert_eq!(Ownership::detect(), want);
    }
}
