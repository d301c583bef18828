//! The restore's look at the target before anything is written: is anything already where the
//! dataset puts an entry? Run in the authenticate pass, entry by entry, on the mapped paths.
//!
//! One `fstatat(AT_SYMLINK_NOFOLLOW)` per path, relative to its parent opened with `openat2`
//! beneath the target (a symlink or mount on the way is refused, never followed), and none at
//! all below a directory found missing: everything the dataset puts inside a directory that
//! does not exist yet cannot exist either. Restoring into an empty folder thus costs one
//! `fstatat` per top-level entry (on ntfs-3g each is a FUSE round trip).
//!
//! What is found decides, per entry:
//! - a directory where the dataset has a directory: merged (kept, never removed on cleanup);
//! - anything else where the dataset puts a file, symlink, hard link, or a non-directory where
//!   it puts a directory: an entry this dataset's earlier restore made (number below the
//!   journal's K): replaced, listed as resumed; else, with `replace_existing`: replaced,
//!   listed; else a conflict. A directory where the dataset puts a non-directory is a conflict
//!   even with `replace_existing` (tek never removes a tree it did not write).
//!
//! Conflicts refuse the restore before anything is written ([`DataError::TargetNotEmpty`]).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, fstatat};
use nix::sys::time::TimeSpec;

use super::journal::TargetRecord;
use super::split;
use crate::error::DataError;
use crate::manifest::EntryKind;
use crate::sys::open_beneath;
use crate::winnames::show;

/// Conflicts named in the error (the count is always complete).
const SHOWN: usize = 10;

/// What the check found, for the writer, the cleanup and the result.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Entries whose path holds something the writer removes first.
    pub replace: HashSet<u64>,
    /// Entries replaced at the caller's request ("path (entry n)").
    pub replaced: Vec<String>,
    /// Their entry numbers, in order.
    pub replaced_entries: Vec<u64>,
    /// Entries an earlier, unfinished restore of this dataset made, found again ("path (entry
    /// n)").
    pub resumed: Vec<String>,
    /// Their entry numbers: a cleanup removes them too.
    pub own: Vec<u64>,
    /// Directories of the dataset that already existed (merged, never removed).
    pub merged: Vec<u64>,
    /// Their mapped paths and times as found, which a cleanup puts back (creating and
    /// removing entries in them moved their modification times).
    pub merged_times: Vec<(Vec<u8>, Times)>,
}

/// Access and modification time of something found in the target.
pub(super) type Times = (TimeSpec, TimeSpec);

/// The times in `st`.
pub(super) fn times_of(st: &FileStat) -> Times {
    (
        TimeSpec::new(st.st_atime, st.st_atime_nsec),
        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
}

/// Walks the mapped paths of the manifest in order (see the module doc).
pub(super) struct Checker<'a> {
    root: &'a File,
    journal: Option<&'a TargetRecord>,
    replace_existing: bool,
    /// Directories (128-bit hashes of mapped paths) found missing.
    fresh: HashSet<u128>,
    parent: Option<(Vec<u8>, Result<OwnedFd, Errno>)>,
    conflicts: Vec<String>,
    conflict_count: u64,
    dirs_in_the_way: u64,
    pub plan: Plan,
}

fn key(p: &[u8]) -> u128 {
    let h = blake3::hash(p);
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
}

fn shown(n: u64, path: &[u8]) -> String {
    format!("{} (entry {n})", show(path))
}

impl<'a> Checker<'a> {
    pub(super) fn new(
        root: &'a File,
        journal: Option<&'a TargetRecord>,
        replace_existing: bool,
    ) -> Self {
        Checker {
            root,
            journal,
            replace_existing,
            fresh: HashSet::new(),
            parent: None,
            conflicts: Vec::new(),
            conflict_count: 0,
            dirs_in_the_way: 0,
            plan: Plan::default(),
        }
    }

    fn stat(&mut self, parent: &[u8], name: &[u8]) -> Result<Option<FileStat>, Errno> {
        let at = if parent.is_empty() {
            self.root.as_raw_fd()
        } else {
            if !matches!(&self.parent, Some((p, _)) if p.as_slice() == parent) {
                let fd = open_beneath(self.root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0);
                self.parent = Some((parent.to_vec(), fd));
            }
            match &self.parent.as_ref().expect("cached").1 {
                Ok(fd) => fd.as_raw_fd(),
                Err(e) => return Err(*e),
            }
        };
        match fstatat(
            Some(at),
            OsStr::from_bytes(name),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn conflict(&mut self, n: u64, path: &[u8], what: &str) {
        self.conflict_count += 1;
        if self.conflicts.len() < SHOWN {
            self.conflicts.push(format!("{} ({what})", shown(n, path)));
        }
    }

    /// Checks entry `n` of kind `kind` at the mapped `path`.
    pub(super) fn check(
        &mut self,
        n: u64,
        kind: EntryKind,
        path: &[u8],
        target: &Path,
    ) -> Result<(), DataError> {
        let dir = kind == EntryKind::Dir;
        if !dir
            && !matches!(
                kind,
                EntryKind::File | EntryKind::Symlink | EntryKind::Hardlink
            )
        {
            return Ok(()); // skipped at restore
        }
        let (parent, name) = split(path);
        if !parent.is_empty() && self.fresh.contains(&key(parent)) {
            if dir {
                self.fresh.insert(key(path));
            }
            return Ok(());
        }
        let st = match self.stat(parent, name) {
            Ok(st) => st,
            // The parent is missing (a tar without directory entries): so is everything in it.
            Err(Errno::ENOENT) => {
                self.fresh.insert(key(parent));
                None
            }
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {
                self.conflict(
                    n,
                    path,
                    "a symlink, mount point or non-directory stands on its path",
                );
                return Ok(());
            }
            Err(e) => {
                return Err(DataError::Io {
                    action: "checking what already stands at an entry's path in",
                    path: target.join(show(path)),
                    source: e.into(),
                });
            }
        };
        let Some(st) = st else {
            if dir {
                self.fresh.insert(key(path));
            }
            return Ok(());
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let own = self.journal.is_some_and(|j| n < j.entries_below);
        let merged_before = self.journal.is_some_and(|j| j.merged_dirs.contains(&n));
        match (dir, is_dir) {
            (true, true) if own && !merged_before => {
                self.plan.own.push(n);
                self.plan.resumed.push(shown(n, path));
            }
            (true, true) => {
                self.plan.merged.push(n);
                self.plan.merged_times.push((path.to_vec(), times_of(&st)));
            }
            (false, true) => {
                self.dirs_in_the_way += 1;
                self.conflict(n, path, "a directory stands where the dataset puts a file");
            }
            (_, false) if own => {
                self.plan.replace.insert(n);
                self.plan.own.push(n);
                self.plan.resumed.push(shown(n, path));
            }
            (_, false) if self.replace_existing => {
                self.plan.replace.insert(n);
                self.plan.replaced.push(shown(n, path));
                self.plan.replaced_entries.push(n);
            }
            (_, false) => {
                let what = match st.st_mode & libc::S_IFMT {
                    libc::S_IFREG => "a file is there",
                    libc::S_IFLNK => "a symlink is there",
                    _ => "a device node, FIFO or socket is there",
                };
                self.conflict(n, path, what);
            }
        }
        Ok(())
    }

    /// The plan, or the refusal naming the conflicts.
    pub(super) fn finish(self, target: &Path) -> Result<Plan, DataError> {
        if self.conflict_count > 0 {
            return Err(DataError::TargetNotEmpty {
                target: target.to_path_buf(),
                count: self.conflict_count,
                first: self.conflicts,
                directories: self.dirs_in_the_way,
            });
        }
        Ok(self.plan)
    }
}
