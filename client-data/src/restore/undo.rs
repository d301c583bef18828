//! The cleanup after a failed restore: removes every entry the restore created, and those an
//! unfinished earlier restore of the dataset into the same target had made (see `journal`),
//! and nothing else: directories that were there before stay, a directory that is not empty
//! (something else was put in it) stays and is named.
//!
//! The entries are found again by reading the manifest (mapped as when written), so a failed
//! restore of a million files needs no list of them in memory: non-directories below
//! `created_upto` were all created by this restore (everything in their way was refused or,
//! as asked, replaced), and the directories it made were recorded as it made them.
//!
//! Someone may have replaced an entry since tek made it: each non-directory below
//! `created_upto` is removed only when it still is what this restore made, as the identity log
//! proves (the identity last recorded for it, see `journal`); the entry whose line was not
//! written yet when the restore failed only when it is the inode tek created for it (a file),
//! the staged text (a symlink) or the inode at the link's target (a hard link). Anything else
//! at such a path is left and listed ("holds something else now"). So is anything at the path
//! of an earlier run's entry this restore did not reach that is not what the check before
//! writing found there (its identity then, `Plan::replace`).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::aside::{self, Taken, Verdict};
use super::journal::{Ident, Made};
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
    /// The identity each non-directory among them had when the check before writing took it
    /// as tek's (`Plan::replace`): one the failed run did not reach is removed only if that
    /// still stands there.
    pub seen: &'a std::collections::HashMap<u64, Option<Ident>>,
    /// Directories the failed restore made (mapped paths).
    pub made_dirs: &'a [Vec<u8>],
    /// Directories that were there before, with their times then (the target itself as
    /// the empty path): put back last.
    pub times: &'a [(Vec<u8>, Times)],
    /// What the identity log proves tek made (this restore's lines and earlier ones).
    pub made: &'a Made,
    /// The target is ntfs-3g (identities by NTFS creation time).
    pub ntfs3g: bool,
    /// The last non-directory this restore created and the inode it got, when known: its
    /// line may not be written yet.
    pub pending: Option<(u64, u64)>,
}

/// What [`remove`] found.
enum Gone {
    Removed,
    Missing,
    /// Something that is not what this restore made stands there: left.
    Other,
    /// Swapped in as tek removed its entry, and could not be put back: at this private name.
    Aside(Vec<u8>),
}

fn depth(p: &[u8]) -> usize {
    p.iter().filter(|&&b| b == b'/').count()
}

/// Removes the non-directory `path` when `ours` says what stands there (in the parent, by
/// name) is ours, with no window for a swap in between ([`aside::remove_if`]).
fn remove(
    root: &File,
    path: &[u8],
    ntfs3g: bool,
    ours: impl FnOnce(&std::os::fd::OwnedFd, &[u8]) -> Verdict,
) -> Result<Gone, Errno> {
    let (parent, name) = split(path);
    let pfd = match open_beneath(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Gone::Missing),
        Err(e) => return Err(e),
    };
    Ok(
        match aside::remove_if(&pfd, name, ntfs3g, || ours(&pfd, name))? {
            Taken::Removed => Gone::Removed,
            Taken::Missing => Gone::Missing,
            Taken::Other => Gone::Other,
            Taken::Aside(tmp) => Gone::Aside(tmp),
        },
    )
}

/// Removes the directory `path` if it is empty.
fn remove_dir(root: &File, path: &[u8]) -> Result<Gone, Errno> {
    let (parent, name) = split(path);
    let pfd = match open_beneath(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Gone::Missing),
        Err(e) => return Err(e),
    };
    match unlinkat(
        Some(pfd.as_raw_fd()),
        OsStr::from_bytes(name),
        UnlinkatFlags::RemoveDir,
    ) {
        Ok(()) => Ok(Gone::Removed),
        Err(Errno::ENOENT) => Ok(Gone::Missing),
        Err(e) => Err(e),
    }
}

impl Undo<'_> {
    /// Whether what stands at `name` in `pfd` is entry `e` (number `n`) as this restore made
    /// it (see the module doc).
    fn made_here(
        &self,
        root: &File,
        pfd: &std::os::fd::OwnedFd,
        name: &[u8],
        n: u64,
        e: &Entry,
    ) -> Verdict {
        let st = match crate::sys::statx(pfd, name) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Verdict::Missing,
            Err(_) => return Verdict::Other,
        };
        let id = Ident::at(pfd, name, &st, self.ntfs3g);
        if self.made.proves(n, &id) {
            return Verdict::Ours(id);
        }
        if !self.made.unlisted_tail(n) {
            // Journaled by this run, with another identity now: replaced since.
            return Verdict::Other;
        }
        let fmt = st.mode & libc::S_IFMT;
        let ours = match e.kind {
            EntryKind::File => self.pending == Some((n, st.ino)) && fmt == libc::S_IFREG,
            EntryKind::Symlink => {
                fmt == libc::S_IFLNK
                    && nix::fcntl::readlinkat(Some(pfd.as_raw_fd()), OsStr::from_bytes(name))
                        .is_ok_and(|t| t.as_bytes() == e.target.as_slice())
            }
            EntryKind::Hardlink => {
                let (tp, tn) = split(&e.target);
                open_beneath(root, tp, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
                    .ok()
                    .and_then(|at| crate::sys::statx(&at, tn).ok())
                    .is_some_and(|t| t.ino == st.ino && fmt != libc::S_IFDIR)
            }
            _ => false,
        };
        if ours {
            Verdict::Ours(id)
        } else {
            Verdict::Other
        }
    }
}

impl Undo<'_> {
    /// Whether what stands at `name` in `pfd` has the identity the check before writing found
    /// at entry `n` (an earlier run's entry); `None`: nothing is there.
    fn still_seen(&self, pfd: &std::os::fd::OwnedFd, name: &[u8], n: u64) -> Verdict {
        match Ident::standing(pfd, name, self.ntfs3g) {
            Ok(None) => Verdict::Missing,
            Ok(Some(now)) if matches!(self.seen.get(&n), Some(Some(id)) if *id == now) => {
                Verdict::Ours(now)
            }
            Ok(Some(_)) | Err(_) => Verdict::Other,
        }
    }

    /// Removes the entries; `next` yields the manifest's entries, mapped, in order.
    pub(super) fn run(
        &self,
        root: &File,
        mut next: impl FnMut() -> Result<Option<Entry>, DataError>,
    ) -> Cleanup {
        let mut c = Cleanup::default();
        let fail = |c: &mut Cleanup, path: &[u8], why: String, earlier: bool| {
            c.remaining_count += 1;
            if earlier {
                c.remaining_earlier += 1;
            }
            if c.remaining.len() < SHOWN && c.stopped_answering.is_none() {
                c.remaining.push(format!("{}: {why}", show(path)));
            }
        };
        // A FUSE daemon that is gone answers every call with ENOTCONN: said once, the rest
        // counted without a call each.
        let stopped = |c: &mut Cleanup, err: Errno| {
            if err == Errno::ENOTCONN && c.stopped_answering.is_none() {
                c.stopped_answering = Some(std::io::Error::from(err).to_string());
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
                        false,
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
                let mine = n < self.created_upto;
                if c.stopped_answering.is_some() {
                    fail(&mut c, &e.path, String::new(), !mine);
                    n += 1;
                    continue;
                }
                let r = remove(root, &e.path, self.ntfs3g, |pfd, name| {
                    if mine {
                        self.made_here(root, pfd, name, n, &e)
                    } else {
                        // An earlier run's entry, proved its own by the check before writing,
                        // not reached by this run: only if it is still what the check saw
                        // (a file moved in since is someone's).
                        self.still_seen(pfd, name, n)
                    }
                });
                match r {
                    Ok(Gone::Removed) if mine => c.removed += 1,
                    Ok(Gone::Removed) => c.earlier_removed += 1,
                    Ok(Gone::Missing) if mine => c.missing += 1,
                    Ok(Gone::Missing) => {}
                    Ok(Gone::Other) => {
                        fail(&mut c, &e.path, "it holds something else now".into(), !mine)
                    }
                    Ok(Gone::Aside(tmp)) => fail(
                        &mut c,
                        &e.path,
                        format!(
                            "something else was put there as tek removed its entry, and another \
                             thing then took the path; what tek moved away was left, \
                             untouched, as {} in the same folder",
                            show(&tmp)
                        ),
                        !mine,
                    ),
                    Err(err) => {
                        fail(
                            &mut c,
                            &e.path,
                            std::io::Error::from(err).to_string(),
                            !mine,
                        );
                        stopped(&mut c, err);
                    }
                }
            }
            n += 1;
        }
        // Deepest first, so a directory is empty when its turn comes.
        dirs.sort_by(|a, b| depth(&b.0).cmp(&depth(&a.0)).then_with(|| a.cmp(b)));
        dirs.dedup_by(|a, b| a.0 == b.0);
        for (d, ours) in &dirs {
            if c.stopped_answering.is_some() {
                fail(&mut c, d, String::new(), !*ours);
                continue;
            }
            match remove_dir(root, d) {
                Ok(Gone::Removed) if *ours => c.removed += 1,
                Ok(Gone::Removed) => c.earlier_removed += 1,
                Ok(Gone::Missing) if *ours => c.missing += 1,
                Ok(Gone::Missing | Gone::Other | Gone::Aside(_)) => {}
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => fail(
                    &mut c,
                    d,
                    "the directory holds something else now".into(),
                    !*ours,
                ),
                Err(err) => {
                    fail(&mut c, d, std::io::Error::from(err).to_string(), !*ours);
                    stopped(&mut c, err);
                }
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
