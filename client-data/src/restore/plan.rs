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
//! - a directory where the dataset has a directory: tek's own when the journal proves it (its
//!   identity log lists the entry with what stands there now: see `journal`), else merged (kept
//!   as it is, its owner, mode and times untouched, never removed on cleanup);
//! - anything else where the dataset puts a file, symlink, hard link, or a non-directory where
//!   it puts a directory: tek's own when the journal proves it: replaced, listed as resumed;
//!   else, with `replace_existing`: replaced, listed; else a conflict. A directory where the
//!   dataset puts a non-directory is a conflict even with `replace_existing` (tek never removes
//!   a tree it did not write).
//! - a path below a symlink, a mount point or a non-directory (tek never writes through one):
//!   refused for that reason, named once for the folder, not counted with the entries the
//!   target holds. Below an entry counted already (a symlink where the dataset has a folder)
//!   nothing more is named; below one that will be replaced, nothing exists yet.
//!
//! Conflicts refuse the restore before anything is written ([`DataError::TargetNotEmpty`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::time::TimeSpec;

use super::journal::{Ident, Made, TargetRecord};
use super::split;
use super::staged::StagedData;
use super::unlisted::{Expected, harmless};
use crate::error::{Conflicts, DataError};
use crate::manifest::EntryKind;
use crate::sys::{Statx, open_beneath, statx};
use crate::winnames::show;

/// Conflicts named in the error (the count is always complete).
const SHOWN: usize = 10;

/// What the check found, for the writer, the cleanup and the result.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Entries whose path holds something the writer removes first, with the identity of what
    /// the check found there when the journal or the loses-nothing rule is the reason (the
    /// writer removes it only if that still stands there: something moved in since is not
    /// tek's); `None` when the caller asked to replace whatever stands there.
    pub replace: HashMap<u64, Option<Ident>>,
    /// Entries replaced at the caller's request ("path (entry n)").
    pub replaced: Vec<String>,
    /// Their entry numbers, in order.
    pub replaced_entries: Vec<u64>,
    /// Entries an earlier, unfinished restore of this dataset made, found again ("path (entry
    /// n)").
    pub resumed: Vec<String>,
    /// Their entry numbers: a cleanup removes them too.
    pub own: Vec<u64>,
    /// Entries the interrupted run had not journaled whose occupant matched the staged data
    /// (see `unlisted`): replaced ("path (entry n)"). Their numbers are in `own` too.
    pub unjournaled: Vec<String>,
    /// Directories of the dataset that already existed (merged: their metadata left as it
    /// is, never removed).
    pub merged: HashSet<u64>,
    /// Their paths as shown ("path (entry n)"), in order.
    pub merged_shown: Vec<String>,
    /// Their mapped paths and times as found, which a cleanup puts back (creating and
    /// removing entries in them moved their modification times).
    pub merged_times: Vec<(Vec<u8>, Times)>,
}

/// Access and modification time of something found in the target.
pub(super) type Times = (TimeSpec, TimeSpec);

/// The times in `st`.
pub(super) fn times_of(st: &Statx) -> Times {
    (
        TimeSpec::new(st.atime.0, i64::from(st.atime.1)),
        TimeSpec::new(st.mtime.0, i64::from(st.mtime.1)),
    )
}

/// Walks the mapped paths of the manifest in order (see the module doc).
pub(super) struct Checker<'a> {
    root: &'a File,
    journal: Option<&'a TargetRecord>,
    made: &'a Made,
    replace_existing: bool,
    /// The target is ntfs-3g (identities by NTFS creation time, see `journal`).
    ntfs3g: bool,
    /// Directories (128-bit hashes of mapped paths) found missing or about to be replaced:
    /// nothing is below them.
    fresh: HashSet<u128>,
    /// Directories below which nothing is checked: counted already, or named as unsafe.
    skipped: HashSet<u128>,
    parent: Option<(Vec<u8>, Result<OwnedFd, Errno>)>,
    /// Opens the data stream, once, for the unlisted entries' check (see `unlisted`).
    open_data: Box<dyn FnMut() -> Option<StagedData> + 'a>,
    data: Option<Option<StagedData>>,
    out: Conflicts,
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
        made: &'a Made,
        replace_existing: bool,
        target: &Path,
        ntfs3g: bool,
        open_data: Box<dyn FnMut() -> Option<StagedData> + 'a>,
    ) -> Self {
        Checker {
            root,
            journal,
            made,
            replace_existing,
            ntfs3g,
            fresh: HashSet::new(),
            skipped: HashSet::new(),
            parent: None,
            open_data,
            data: None,
            out: Conflicts {
                target: target.to_path_buf(),
                replace_asked: replace_existing,
                format1: journal.is_some_and(|j| j.format1),
                ..Default::default()
            },
            plan: Plan::default(),
        }
    }

    fn stat(&mut self, parent: &[u8], name: &[u8]) -> Result<Option<Statx>, Errno> {
        let r = if parent.is_empty() {
            statx(self.root, name)
        } else {
            if !matches!(&self.parent, Some((p, _)) if p.as_slice() == parent) {
                let fd = open_beneath(self.root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0);
                self.parent = Some((parent.to_vec(), fd));
            }
            match &self.parent.as_ref().expect("cached").1 {
                Ok(fd) => statx(fd, name),
                Err(e) => return Err(*e),
            }
        };
        match r {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn conflict(&mut self, n: u64, path: &[u8], what: &str) {
        self.out.count += 1;
        if self.out.first.len() < SHOWN {
            self.out.first.push(format!("{} ({what})", shown(n, path)));
        }
    }

    /// The identity of `st` (`name` in `parent`, whose descriptor `stat` cached).
    fn ident(&self, parent: &[u8], name: &[u8], st: &Statx) -> Option<Ident> {
        if parent.is_empty() {
            Some(Ident::at(self.root, name, st, self.ntfs3g))
        } else {
            match &self.parent {
                Some((_, Ok(fd))) => Some(Ident::at(fd, name, st, self.ntfs3g)),
                _ => None,
            }
        }
    }

    /// The identity of `st` (`name` in `parent`) at entry `n` when the journal proves it is
    /// what tek made there.
    fn own(&self, n: u64, parent: &[u8], name: &[u8], st: &Statx) -> Option<Ident> {
        if !self
            .journal
            .is_some_and(|j| !j.format1 && n < j.intents_below)
        {
            return None;
        }
        self.ident(parent, name, st)
            .filter(|id| self.made.proves(n, id))
    }

    /// The identity of entry `n`'s occupant `st` when the entry is unlisted in the lost suffix
    /// of the log (see `unlisted`) and the occupant is harmless to replace.
    fn harmless(
        &mut self,
        n: u64,
        parent: &[u8],
        name: &[u8],
        st: &Statx,
        s: &Expected,
    ) -> Option<Ident> {
        if !self
            .journal
            .is_some_and(|j| !j.format1 && n < j.intents_below && self.made.unlisted_tail(n))
        {
            return None;
        }
        let pfd = if parent.is_empty() {
            OwnedFd::from(self.root.try_clone().ok()?)
        } else {
            match &self.parent {
                Some((_, Ok(fd))) => fd.try_clone().ok()?,
                _ => return None,
            }
        };
        harmless(
            self.root,
            &pfd,
            name,
            st,
            s,
            self.made,
            self.ntfs3g,
            &mut self.data,
            &mut *self.open_data,
        )
        .then(|| Ident::at(&pfd, name, st, self.ntfs3g))
    }

    /// Checks entry `n` (`s`: the staged entry, mapped) at the mapped `path`.
    pub(super) fn check(
        &mut self,
        n: u64,
        s: &Expected,
        path: &[u8],
        target: &Path,
    ) -> Result<(), DataError> {
        let kind = s.entry.kind;
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
        if !parent.is_empty() {
            let k = key(parent);
            for set in [&mut self.fresh, &mut self.skipped] {
                if set.contains(&k) {
                    if dir {
                        set.insert(key(path));
                    }
                    return Ok(());
                }
            }
        }
        let st = match self.stat(parent, name) {
            Ok(st) => st,
            // The parent is missing (a tar without directory entries): so is everything in it.
            Err(Errno::ENOENT) => {
                self.fresh.insert(key(parent));
                None
            }
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV)) => {
                // Named once for the folder; nothing below it is looked at.
                self.skipped.insert(key(parent));
                if dir {
                    self.skipped.insert(key(path));
                }
                let why = match e {
                    Errno::EXDEV => "it is, or is below, a mount point",
                    // A symlink as the last component is ENOTDIR (O_NOFOLLOW | O_DIRECTORY).
                    _ => "a symlink or a non-directory is on its path",
                };
                self.out.unsafe_count += 1;
                if self.out.unsafe_first.len() < SHOWN {
                    self.out
                        .unsafe_first
                        .push(format!("{} ({why})", show(parent)));
                }
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
        let is_dir = st.mode & libc::S_IFMT == libc::S_IFDIR;
        let own = self.own(n, parent, name, &st);
        // The identity of an occupant the loses-nothing rule takes as tek's.
        let harmless = if !dir && !is_dir && own.is_none() {
            self.harmless(n, parent, name, &st, s)
        } else {
            None
        };
        match (dir, is_dir) {
            (true, true) if own.is_some() => {
                self.plan.own.push(n);
                self.plan.resumed.push(shown(n, path));
            }
            (true, true) => {
                self.plan.merged.insert(n);
                self.plan.merged_shown.push(shown(n, path));
                self.plan.merged_times.push((path.to_vec(), times_of(&st)));
            }
            (false, true) => {
                self.out.directories += 1;
                self.conflict(n, path, "a directory stands where the dataset puts a file");
            }
            (_, false) if own.is_some() => {
                self.plan.replace.insert(n, own);
                self.plan.own.push(n);
                self.plan.resumed.push(shown(n, path));
                if dir {
                    self.fresh.insert(key(path));
                }
            }
            (false, false) if harmless.is_some() => {
                self.plan.replace.insert(n, harmless);
                self.plan.own.push(n);
                self.plan.unjournaled.push(shown(n, path));
            }
            (_, false) if self.replace_existing => {
                self.plan.replace.insert(n, None);
                self.plan.replaced.push(shown(n, path));
                self.plan.replaced_entries.push(n);
                if dir {
                    self.fresh.insert(key(path));
                }
            }
            (_, false) => {
                let what = match st.mode & libc::S_IFMT {
                    libc::S_IFREG if st.nlink > 1 => "a hard-linked file is there",
                    libc::S_IFREG => "a file is there",
                    libc::S_IFLNK => "a symlink is there",
                    _ => "a device node, FIFO or socket is there",
                };
                let intended = self.journal.is_some_and(|j| n < j.intents_below);
                if intended {
                    self.out.unproven += 1;
                }
                if intended && self.made.in_flight(n) {
                    // The entry after the last one journaled: most likely the one the
                    // interrupted run was writing, but nothing proves it.
                    let what = format!(
                        "{what}; the interrupted restore was most likely writing it when it \
                         stopped, before journaling it, but it is not a part of what the \
                         dataset puts there: check it"
                    );
                    self.conflict(n, path, &what);
                } else {
                    self.conflict(n, path, what);
                }
                if dir {
                    self.skipped.insert(key(path));
                }
            }
        }
        Ok(())
    }

    /// The plan, or the refusal naming the conflicts.
    pub(super) fn finish(self) -> Result<Plan, DataError> {
        if self.out.count > 0 || self.out.unsafe_count > 0 {
            return Err(DataError::TargetNotEmpty(Box::new(self.out)));
        }
        Ok(self.plan)
    }
}
