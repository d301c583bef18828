//! The "loses nothing" rule for entries an interrupted restore had not journaled (see the
//! `journal` module doc): an entry below K that the identity log does not list, after the
//! last one it lists (the lost suffix: the entry a killed run was writing, or the lines a
//! power loss took), is taken as tek's interrupted work and replaced when what stands at its
//! path is provably harmless to replace:
//! - a file entry: a regular file with one link whose bytes are a prefix of (or equal to) the
//!   staged file's (an empty file included: killed between the create and the first write),
//!   and whose data attributes (`user.*`, alternate data streams on NTFS, `trusted.*`: data
//!   of someone's) are all the staged entry's, with the staged values. Security labels and
//!   ACLs (`security.*`, `system.*`) are access control, not data, and do not count;
//! - a symlink entry: a symlink whose text is the staged (mapped) one;
//! - a hard-link entry: the inode tek made for the link's target (the log's last identity of
//!   that inode), standing at the target's path too.
//!
//! The occupant is opened `O_NOFOLLOW | O_NONBLOCK` and `fstat`-checked as the writer does
//! (never a FIFO's open that blocks, never a symlink followed). Run only on a resume, only for
//! these entries; the staged bytes are read at their offset ([`StagedData`]).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use xattr::FileExt as _;

use super::journal::{Ident, Made};
use super::split;
use super::staged::StagedData;
use crate::manifest::{Entry, EntryKind};
use crate::sys::{Statx, open_beneath, statx};

/// What an unlisted entry's occupant is checked against.
pub(super) struct Expected<'a> {
    /// The staged entry (its path and link target mapped as restored).
    pub entry: &'a Entry,
    /// Where its content starts in the data stream.
    pub offset: u64,
}

/// True when the occupant `name` in `pfd` (described by `st`) of the unlisted entry `s` is
/// harmless to replace (see the module doc). Any error reading it: not harmless.
#[allow(clippy::too_many_arguments)]
pub(super) fn harmless(
    root: &File,
    pfd: &impl AsFd,
    name: &[u8],
    st: &Statx,
    s: &Expected<'_>,
    made: &Made,
    ntfs3g: bool,
    data: &mut Option<Option<StagedData>>,
    open: &mut dyn FnMut() -> Option<StagedData>,
) -> bool {
    let fmt = st.mode & libc::S_IFMT;
    match s.entry.kind {
        EntryKind::File if fmt == libc::S_IFREG && st.nlink == 1 && st.size <= s.entry.size => {
            let Some(f) = open_occupant(pfd, name, st) else {
                return false;
            };
            if !data_xattrs_staged(&f, s.entry) {
                return false;
            }
            if st.size == 0 {
                return true;
            }
            let Some(d) = data.get_or_insert_with(open).as_mut() else {
                return false;
            };
            d.is_prefix(&f, s.offset, s.entry.size).unwrap_or(false)
        }
        EntryKind::Symlink if fmt == libc::S_IFLNK => {
            nix::fcntl::readlinkat(Some(pfd.as_fd().as_raw_fd()), OsStr::from_bytes(name))
                .is_ok_and(|t| t.as_bytes() == s.entry.target.as_slice())
        }
        EntryKind::Hardlink if fmt != libc::S_IFDIR => {
            let (tp, tn) = split(&s.entry.target);
            let at = match open_beneath(root, tp, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
                Ok(fd) => fd,
                Err(_) => return false,
            };
            let same = statx(&at, tn).is_ok_and(|t| t.ino == st.ino);
            same && made.knows(&Ident::at(&pfd.as_fd().as_raw_fd(), name, st, ntfs3g))
        }
        _ => false,
    }
}

/// The occupant opened for reading, when it still is the regular file with one link `st`
/// describes.
fn open_occupant(pfd: &impl AsFd, name: &[u8], st: &Statx) -> Option<File> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(
        Some(pfd.as_fd().as_raw_fd()),
        OsStr::from_bytes(name),
        flags,
        Mode::empty(),
    )
    .ok()?;
    let f = File::from(crate::sys::owned(fd));
    let now = statx(&f, b"").ok()?;
    (now.mode & libc::S_IFMT == libc::S_IFREG
        && now.nlink == 1
        && now.ino == st.ino
        && now.size == st.size)
        .then_some(f)
}

/// True when every data attribute of `f` (any but the access control of `security.*` and
/// `system.*`: `user.*`, alternate data streams on NTFS, root's `trusted.*`) is one of `e`'s,
/// with its value.
fn data_xattrs_staged(f: &File, e: &Entry) -> bool {
    let Ok(names) = f.list_xattr() else {
        return false;
    };
    names
        .filter(|n| {
            let n = n.as_bytes();
            !n.starts_with(b"security.") && !n.starts_with(b"system.")
        })
        .all(|n| {
            let staged = e.xattrs.iter().find(|x| x.name == n.as_bytes());
            staged.is_some_and(|x| f.get_xattr(&n).ok().flatten().as_deref() == Some(&x.value[..]))
        })
}
