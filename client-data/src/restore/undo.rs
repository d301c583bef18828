//! The cleanup after a failed restore: removes every entry the restore created, and those an
//! unfinished earlier restore of the dataset into the same target had made (see `journal`),
//! and nothing else: directories that were there before stay, a directory that is not empty
//! (something else was put in it) stays and is named.
//!
//! The entries are found again by reading the manifest (mapped as when written), so a failed
//! restore of a million files needs no list of them in memory: non-directories below
//! `created_upto` were all created by this restore (everything in their way was refused or,
//! as asked, replaced), and the directories it made were recorded as it made them.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::plan::Times;
use super::split;
use crate::error::{Cleanup, DataError};
use crate::manifest::{Entry, EntryKind};
use crate::sys::open_beneath;
use crate::winnames::show;

/// Entries that could not be removed named in the error (the count is complete).
const SHOWN: usize = 10;

/// What to remove.
pub(super) struct Undo<'a> {
    /// Non-directory entries below this number were created by the failed restore.
    pub created_upto: u64,
    /// Entries of an earlier restore found in the target (sorted).
    pub own: &'a [u64],
    /// Directories the failed restore made (mapped paths).
    pub made_dirs: &'a [Vec<u8>],
    /// Directories that were there before, with their times then (the target itself as
    /// the empty path): put back last.
    pub times: &'a [(Vec<u8>, Times)],
}

fn depth(p: &[u8]) -> usize {
    p.iter().filter(|&&b| b == b'/').count()
}

fn remove(root: &File, path: &[u8], dir: bool) -> Result<bool, Errno> {
    let (parent, name) = split(path);
    let pfd = match open_beneath(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    let flag = if dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    match unlinkat(Some(pfd.as_raw_fd()), OsStr::from_bytes(name), flag) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Undo<'_> {
    /// Removes the entries; `next` yields the manifest's entries, mapped, in order.
    pub(super) fn run(
        &self,
        root: &File,
        mut next: impl FnMut() -> Result<Option<Entry>, DataError>,
    ) -> Cleanup {
        let mut c = Cleanup::default();
        let fail = |c: &mut Cleanup, path: &[u8], why: String| {
            c.remaining_count += 1;
            if c.remaining.len() < SHOWN {
                c.remaining.push(format!("{}: {why}", show(path)));
            }
        };
        // (path, made by this restore)
        let mut dirs: Vec<(Vec<u8>, bool)> =
            self.made_dirs.iter().map(|d| (d.clone(), true)).collect();
        let last_own = self.own.last().copied();
        let mut n = 0u64;
        loop {
            if n >= self.created_upto && last_own.is_none_or(|l| n > l) {
                break;
            }
            let e = match next() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(err) => {
                    fail(
                        &mut c,
                        b"(the rest)",
                        format!("reading the manifest again: {err}"),
                    );
                    break;
                }
            };
            let own = self.own.binary_search(&n).is_ok();
            let other = matches!(
                e.kind,
                EntryKind::File | EntryKind::Symlink | EntryKind::Hardlink
            );
            if e.kind == EntryKind::Dir && own {
                dirs.push((e.path, false));
            } else if other && (n < self.created_upto || own) {
                match remove(root, &e.path, false) {
                    Ok(true) if n < self.created_upto => c.removed += 1,
                    Ok(true) => c.earlier_removed += 1,
                    Ok(false) => {}
                    Err(err) => fail(&mut c, &e.path, std::io::Error::from(err).to_string()),
                }
            }
            n += 1;
        }
        // Deepest first, so a directory is empty when its turn comes.
        dirs.sort_by(|a, b| depth(&b.0).cmp(&depth(&a.0)).then_with(|| a.cmp(b)));
        dirs.dedup_by(|a, b| a.0 == b.0);
        for (d, ours) in &dirs {
            match remove(root, d, true) {
                Ok(true) if *ours => c.removed += 1,
                Ok(true) => c.earlier_removed += 1,
                Ok(false) => {}
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    fail(&mut c, d, "the directory holds something else now".into())
                }
                Err(err) => fail(&mut c, d, std::io::Error::from(err).to_string()),
            }
        }
        // Best effort: a time not put back is no data lost.
        for (p, (a, m)) in self.times {
            let _ = match open_beneath(root, p, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
                Ok(fd) => nix::sys::stat::futimens(fd.as_raw_fd(), a, m),
                Err(e) => Err(e),
            };
        }
        c
    }
}
