//! Removing what stands at a name only when it is what a check found there, with no window
//! between the check and the removal.
//!
//! A check by name (`statx`, then the identity) followed by `unlinkat` by name leaves a window:
//! a `rename(RENAME_EXCHANGE)` by another process in between puts someone's file at the name,
//! and the unlink removes it (found by an outside attack: a tight exchange loop won it about
//! one time in three). Linux has no unlink of a descriptor, so the entry is first moved to a
//! private name in the same directory (one rename: whatever stood at the name at that instant
//! now stands at the private name, and nothing else can), checked again there, and only then
//! unlinked. If the check fails there, it is put back without replacing anything
//! (`RENAME_NOREPLACE`, else a hard link and an unlink); if even that finds something new at
//! the name, it stays at the private name and the caller names it ([`Taken::Aside`]).
//!
//! The private name is `.tek-removing-<pid>-<n>-<random>` (`n` counts per process): a crash between the
//! two steps leaves tek's own entry (or, in the race above, the swapped-in file) under it, in
//! plain sight in the target folder.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, RenameFlags, renameat, renameat2};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

use super::journal::Ident;

/// What [`remove_if`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    Removed,
    /// Nothing stood at the name.
    Missing,
    /// What stands there is not what the check wants: left where it is.
    Other,
    /// What stood there was swapped in between the check and the move and could not be put
    /// back (something new stands at the name): it stays at this private name.
    Aside(Vec<u8>),
}

/// The verdict of a check on what stands at a name: `Ours(id)` with the identity it judged.
pub(super) enum Verdict {
    Missing,
    Other,
    Ours(Ident),
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// `.tek-removing-<pid>-<n>-<16 random hex>`: the random part so that nobody can put
/// something at the name before tek's rename (where the fallback is a plain rename).
fn private_name() -> Vec<u8> {
    let mut r = [0u8; 8];
    let _ = getrandom::getrandom(&mut r);
    format!(
        ".tek-removing-{}-{}-{:016x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        u64::from_le_bytes(r)
    )
    .into_bytes()
}

/// Puts `from` back at `to` in `dir` unless something stands at `to`: `RENAME_NOREPLACE`, else
/// (a filesystem without it, such as ntfs-3g: EINVAL) a hard link and an unlink of `from` (the
/// private name); a directory (no hard links) only by a plain rename after a look, which can
/// replace at most an empty directory put there in between.
fn rename_noreplace(dir: i32, from: &[u8], to: &[u8]) -> Result<(), Errno> {
    let (f, t) = (OsStr::from_bytes(from), OsStr::from_bytes(to));
    match renameat2(Some(dir), f, Some(dir), t, RenameFlags::RENAME_NOREPLACE) {
        Err(Errno::EINVAL | Errno::ENOSYS) => {}
        r => return r,
    }
    match linkat(Some(dir), f, Some(dir), t, AtFlags::empty()) {
        Ok(()) => {
            let _ = unlinkat(Some(dir), f, UnlinkatFlags::NoRemoveDir);
            Ok(())
        }
        Err(Errno::EPERM | Errno::EOPNOTSUPP) => {
            match nix::sys::stat::fstatat(Some(dir), t, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) => renameat(Some(dir), f, Some(dir), t),
                Ok(_) => Err(Errno::EEXIST),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// True when `after` (read at the private name) is the entry `before` describes: the same
/// inode, and where the identity does not change with a rename (a birth or NTFS creation
/// time), the same identity. A status change time does change with the rename.
fn same(before: &Ident, after: &Ident) -> bool {
    before.ino() == after.ino() && (!before.stable() || before == after)
}

/// Removes the non-directory `name` in `pfd` when `check` (run on what stands at `name`)
/// says it is what the caller may remove, with no window for a swap (see the module doc).
pub(super) fn remove_if(
    pfd: &impl AsRawFd,
    name: &[u8],
    ntfs3g: bool,
    check: impl FnOnce() -> Verdict,
) -> Result<Taken, Errno> {
    let before = match check() {
        Verdict::Missing => return Ok(Taken::Missing),
        Verdict::Other => return Ok(Taken::Other),
        Verdict::Ours(id) => id,
    };
    let dir = pfd.as_raw_fd();
    let tmp = private_name();
    // One rename, whatever the filesystem: a hard link and an unlink by name (the put-back's
    // fallback) would reopen the very window this closes. Without RENAME_NOREPLACE a plain
    // rename, which could replace only something put at the fresh private name meanwhile.
    let (n, t) = (OsStr::from_bytes(name), OsStr::from_bytes(&tmp));
    let moved = match renameat2(Some(dir), n, Some(dir), t, RenameFlags::RENAME_NOREPLACE) {
        Err(Errno::EINVAL | Errno::ENOSYS) => renameat(Some(dir), n, Some(dir), t),
        r => r,
    };
    match moved {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(Taken::Missing),
        Err(e) => return Err(e),
    }
    let after = match Ident::standing(pfd, &tmp, ntfs3g) {
        Ok(Some(id)) => id,
        Ok(None) => return Ok(Taken::Missing), // someone moved it on from the private name
        Err(e) => {
            // Not known what it is: back where it stood, and the error said.
            let _ = rename_noreplace(dir, &tmp, name);
            return Err(e);
        }
    };
    if same(&before, &after) {
        return match unlinkat(
            Some(dir),
            OsStr::from_bytes(&tmp),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => Ok(Taken::Removed),
            // Moved on from the private name by someone: tek removed nothing.
            Err(Errno::ENOENT) => Ok(Taken::Missing),
            Err(e) => Err(e),
        };
    }
    // Swapped in between the check and the move: back where it stood.
    match rename_noreplace(dir, &tmp, name) {
        Ok(()) => Ok(Taken::Other),
        Err(Errno::ENOENT) => Ok(Taken::Missing),
        Err(_) => Ok(Taken::Aside(tmp)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn ident(dir: &File, name: &[u8]) -> Ident {
        Ident::standing(dir, name, false).unwrap().unwrap()
    }

    #[test]
    fn removes_what_the_check_saw_and_nothing_swapped_in_after_it() {
        let t = tempfile::tempdir().unwrap();
        let dir = File::open(t.path()).unwrap();
        std::fs::write(t.path().join("a"), b"tek's").unwrap();
        std::fs::write(t.path().join("mine"), b"someone's").unwrap();
        // The plain case: checked, removed.
        let id = ident(&dir, b"a");
        assert_eq!(
            remove_if(&dir, b"a", false, || Verdict::Ours(id)).unwrap(),
            Taken::Removed
        );
        assert!(!t.path().join("a").exists());
        // A swap between the check and the removal: the check saw tek's file, then someone's
        // file took its name. It stays, at its name, and tek's is left too.
        std::fs::write(t.path().join("a"), b"tek's").unwrap();
        let id = ident(&dir, b"a");
        let r = remove_if(&dir, b"a", false, || {
            renameat2(
                Some(dir.as_raw_fd()),
                "a",
                Some(dir.as_raw_fd()),
                "mine",
                RenameFlags::RENAME_EXCHANGE,
            )
            .unwrap();
            Verdict::Ours(id)
        })
        .unwrap();
        assert_eq!(r, Taken::Other);
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"someone's");
        assert_eq!(std::fs::read(t.path().join("mine")).unwrap(), b"tek's");
        // Nothing there, a refusing check: nothing done.
        assert_eq!(
            remove_if(&dir, b"none", false, || Verdict::Missing).unwrap(),
            Taken::Missing
        );
        assert_eq!(
            remove_if(&dir, b"a", false, || Verdict::Other).unwrap(),
            Taken::Other
        );
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no private name left: {names:?}");
    }

    #[test]
    fn the_fallback_without_noreplace_never_replaces() {
        let t = tempfile::tempdir().unwrap();
        let dir = File::open(t.path()).unwrap();
        std::fs::write(t.path().join("x"), b"1").unwrap();
        std::fs::write(t.path().join("y"), b"2").unwrap();
        assert_eq!(
            rename_noreplace(dir.as_raw_fd(), b"x", b"y"),
            Err(Errno::EEXIST)
        );
        rename_noreplace(dir.as_raw_fd(), b"x", b"z").unwrap();
        assert_eq!(std::fs::read(t.path().join("z")).unwrap(), b"1");
        assert_eq!(std::fs::read(t.path().join("y")).unwrap(), b"2");
    }
}
