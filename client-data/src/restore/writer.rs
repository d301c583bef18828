//! The restore's writer: creates each entry beneath the target's descriptor and sets its
//! metadata (owner, mode, extended attributes, times; on NTFS the inherited security
//! descriptor, creation time and DOS attributes), counting what the target cannot hold.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, UtimensatFlags, mkdirat, utimensat};
use nix::unistd::{fchown, fchownat, linkat, symlinkat};
use xattr::FileExt as _;

use super::aside;
use super::journal::{Ident, Log};
use super::watchdog::Progress;
use super::{data_error, split, ts, unsafe_path};
use crate::batch::OpenPipe;
use crate::error::{DataError, io};
use crate::manifest::Entry;
use crate::ownership::Ownership;
use crate::sparse::{Holes, all_zero};
use crate::sys::{open_beneath, statx};
use crate::target::TargetFs;

mod meta;

/// Bytes gathered per write(2) on ntfs-3g (see [`Writer::file`]).
const WRITE_BUF: usize = 1 << 20;

/// Security descriptors for new entries by depth below the target (index 0: the target's
/// direct children): (for a directory, for a file).
pub(super) type Descriptors = Vec<(Arc<Vec<u8>>, Arc<Vec<u8>>)>;

/// Writes entries beneath the target directory.
pub(super) struct Writer {
    pub root: File,
    pub target: std::path::PathBuf,
    pub parent: Option<(Vec<u8>, OwnedFd)>,
    pub dirs: Vec<(u64, Entry)>,
    pub own: Ownership,
    pub owners_not_restored: u64,
    pub setid_dropped: Vec<String>,
    pub fs: TargetFs,
    /// NTFS: the descriptors new entries get (empty: leave the filesystem's default).
    pub sds: Descriptors,
    /// What could not be set: (what) -> (entries, why).
    pub not_restored: BTreeMap<String, (u64, String)>,
    /// Directories as written (mapped, with the attributes actually set) and their
    /// descriptor, for the read-back.
    pub dirs_written: Vec<(u64, Entry, crate::readback::Sd)>,
    /// The write buffer of [`Writer::file`] on ntfs-3g, kept between files.
    pub wbuf: Vec<u8>,
    /// Entries whose path holds something to remove first, with the identity it must still
    /// have (see `plan`, [`Writer::clear`]).
    pub replace: std::collections::HashMap<u64, Option<Ident>>,
    /// Directories this restore made (mapped paths, in order), for a cleanup.
    pub made_dirs: Vec<Vec<u8>>,
    /// Entries below this number that are not directories were created by this restore.
    pub created_upto: u64,
    /// Ticked after every write (the watchdog watches it).
    pub progress: Arc<Progress>,
    /// The journal's identity log: every entry made is recorded in it (see `journal`).
    pub log: Log,
    /// Entries this restore created (for the cleanup's account).
    pub created: u64,
    /// Directories of the dataset that were there before (merged): their metadata is left
    /// as it is.
    pub merged: std::collections::HashSet<u64>,
    /// The caller asked to replace what stands in the way (for the wording of a refusal).
    pub replace_asked: bool,
    /// The last file this restore created, (entry, inode), for a cleanup: its identity may
    /// not be journaled yet (see `undo`).
    pub pending: Option<(u64, u64)>,
}

/// Something appeared at an entry's path after the check before writing.
fn appeared(n: u64, path: &[u8], target: &std::path::Path, replace_asked: bool) -> DataError {
    DataError::TargetNotEmpty(Box::new(crate::error::Conflicts {
        target: target.to_path_buf(),
        count: 1,
        first: vec![format!(
            "{} (entry {n}) (something is there)",
            crate::winnames::show(path)
        )],
        replace_asked,
        while_writing: true,
        ..Default::default()
    }))
}

impl Writer {
    pub(super) fn err(
        &self,
        action: &'static str,
        n: u64,
    ) -> impl FnOnce(nix::errno::Errno) -> DataError + '_ {
        move |e| match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV | nix::errno::Errno::ENOTDIR => {
                unsafe_path(
                    n,
                    format!("{action}: would go through a symlink or leave the target"),
                )
            }
            e => DataError::Io {
                action,
                path: self.target.join(format!("<entry {n}>")),
                source: e.into(),
            },
        }
    }

    /// Records entry `n` as what `at`/`name` is now (an empty `name`: `at` itself), unless
    /// `only_unstable` and its identity does not change with later changes.
    fn journal(
        &mut self,
        at: &impl AsRawFd,
        name: &[u8],
        n: u64,
        only_unstable: bool,
    ) -> Result<(), DataError> {
        let st = statx(at, name).map_err(self.err("reading the identity of", n))?;
        let id = Ident::at(at, name, &st, self.fs == TargetFs::Ntfs3g);
        if only_unstable && id.stable() {
            return Ok(());
        }
        self.log.record(n, &id)
    }

    fn skip(&mut self, what: &str, why: &str) {
        let s = self
            .not_restored
            .entry(what.to_string())
            .or_insert((0, why.to_string()));
        s.0 += 1;
    }

    /// The descriptor an entry at `path` gets, when descriptors are set.
    fn descriptor(&self, path: &[u8], dir: bool) -> Option<Arc<Vec<u8>>> {
        let depth = path.iter().filter(|&&b| b == b'/').count();
        let (d, f) = self.sds.get(depth)?;
        Some(if dir { d.clone() } else { f.clone() })
    }

    /// Directory entry `n` at `rel`: what stands there first removed when the plan says so
    /// (a non-directory replaced or resumed), then opened or made as [`Writer::dir`].
    pub(super) fn dir_entry(&mut self, e: &Entry, n: u64) -> Result<OwnedFd, DataError> {
        let rel = &e.path[..];
        if self.replace.contains_key(&n) {
            let (parent, name) = split(rel);
            let pfd = self.dir(parent, n)?;
            self.clear(pfd.as_raw_fd(), OsStr::from_bytes(name), n, rel)?;
        }
        self.dir_born(rel, n, e.btime)
    }

    /// On ntfs-3g, gives the entry just created at `f` its final NTFS creation time, `btime`
    /// (none in the dataset: the one ntfs-3g gave it stays), so that its identity in the
    /// journal (`Ident::Created`) holds from now on: tek sets the same value with the other
    /// times at the end, and writes, chmod, chown, extended attributes (alternate data
    /// streams), DOS attributes, times set, links and entries made inside leave it as it is
    /// (checked on ntfs-3g 2022.10). One setxattr; the journal's getxattr reads it back.
    fn stable_crtime(
        &self,
        f: &File,
        btime: Option<crate::manifest::Time>,
    ) -> Result<(), DataError> {
        let (Some(bt), TargetFs::Ntfs3g) = (btime, self.fs) else {
            return Ok(());
        };
        let v = crate::ntfs::to_ntfs_time(bt).to_be_bytes();
        f.set_xattr(crate::xattrs::NTFS_CRTIME, &v)
            .map_err(io("setting the creation time under", &self.target))
    }

    /// Opens (creating with 0700 as needed) directory `rel` beneath the target.
    pub(super) fn dir(&mut self, rel: &[u8], n: u64) -> Result<OwnedFd, DataError> {
        self.dir_born(rel, n, None)
    }

    /// [`Writer::dir`], `rel` (when made here) getting the NTFS creation time `btime` on
    /// ntfs-3g before it is journaled (see [`Writer::stable_crtime`]).
    fn dir_born(
        &mut self,
        rel: &[u8],
        n: u64,
        btime: Option<crate::manifest::Time>,
    ) -> Result<OwnedFd, DataError> {
        match open_beneath(&self.root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
            Ok(fd) => Ok(fd),
            Err(nix::errno::Errno::ENOENT) if !rel.is_empty() => {
                let (parent, name) = split(rel);
                let pfd = self.dir(parent, n)?;
                let mut made = false;
                match mkdirat(
                    Some(pfd.as_raw_fd()),
                    OsStr::from_bytes(name),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) => made = true,
                    Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(self.err("creating directory", n)(e)),
                }
                let fd = open_beneath(&self.root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
                    .map_err(self.err("opening directory", n))?;
                if made {
                    self.made_dirs.push(rel.to_vec());
                    self.created += 1;
                    let f = File::from(fd.try_clone().map_err(io("duplicating", &self.target))?);
                    self.stable_crtime(&f, btime)?;
                    self.journal(&f, b"", n, false)?;
                }
                // A new directory gets its inherited descriptor before anything is made in it.
                if let (Some(sd), Some(name)) =
                    (self.descriptor(rel, true), self.fs.security_xattr())
                {
                    File::from(fd.try_clone().map_err(io("duplicating", &self.target))?)
                        .set_xattr(name, &sd)
                        .map_err(io("setting security descriptor under", &self.target))?;
                }
                Ok(fd)
            }
            Err(e) => Err(self.err("opening directory", n)(e)),
        }
    }

    /// The parent directory of `path`, cached for runs of entries in one directory.
    fn parent_of<'a>(&mut self, path: &'a [u8], n: u64) -> Result<(i32, &'a [u8]), DataError> {
        let (parent, name) = split(path);
        let hit = matches!(&self.parent, Some((p, _)) if p.as_slice() == parent);
        if !hit {
            let fd = self.dir(parent, n)?;
            self.parent = Some((parent.to_vec(), fd));
        }
        Ok((
            self.parent.as_ref().expect("cached parent").1.as_raw_fd(),
            name,
        ))
    }

    /// Removes what stands at `name` in `pfd` before entry `n` is created there, when the
    /// plan says so (replaced as asked, or taken as tek's: resumed or unjournaled); else what
    /// stands there appeared after the check. Where the plan took it as tek's, it is removed
    /// only while it still has the identity the plan saw ([`aside::remove_if`]: moved to a
    /// private name, checked there, then unlinked): a file someone moved in during the minutes
    /// the restore took to reach this entry is theirs, and stays. Nothing there is fine.
    fn clear(&self, pfd: i32, name: &OsStr, n: u64, path: &[u8]) -> Result<(), DataError> {
        let expected = match self.replace.get(&n) {
            None => return Err(appeared(n, path, &self.target, self.replace_asked)),
            Some(None) => {
                // The caller asked to replace whatever stands there.
                return match nix::unistd::unlinkat(
                    Some(pfd),
                    name,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                ) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
                    Err(nix::errno::Errno::EISDIR) => Err(unsafe_path(
                        n,
                        "a directory already stands where this entry goes in the target",
                    )),
                    Err(e) => Err(self.err("removing what stood at an entry's path", n)(e)),
                };
            }
            Some(Some(id)) => *id,
        };
        let ntfs3g = self.fs == TargetFs::Ntfs3g;
        let mut failed = None;
        let taken = aside::remove_if(&pfd, name.as_bytes(), ntfs3g, || {
            match Ident::standing(&pfd, name.as_bytes(), ntfs3g) {
                Ok(None) => aside::Verdict::Missing,
                Ok(Some(now)) if now == expected => aside::Verdict::Ours(now),
                Ok(Some(_)) => aside::Verdict::Other,
                Err(e) => {
                    failed = Some(e);
                    aside::Verdict::Other
                }
            }
        });
        if let Some(e) = failed {
            return Err(self.err("checking what stands at an entry's path", n)(e));
        }
        match taken {
            Ok(aside::Taken::Removed | aside::Taken::Missing) => Ok(()),
            Ok(aside::Taken::Other) => Err(appeared(n, path, &self.target, self.replace_asked)),
            Ok(aside::Taken::Aside(tmp)) => Err(unsafe_path(
                n,
                format!(
                    "something else was put at this path at the moment tek moved its own \
                     entry away to remove it, and another thing then took the path; what tek \
                     moved was left, untouched, as {} in the same folder: look at both",
                    crate::winnames::show(&tmp)
                ),
            )),
            Err(e) => Err(self.err("removing what stood at an entry's path", n)(e)),
        }
    }

    /// Creates a fresh regular file `name` in `pfd`. Whatever already sits at that name in the
    /// target is never opened: a hard link to a file outside the target would have the outside
    /// file rewritten (content, owner, mode), a FIFO would block the open forever. So: `O_EXCL`
    /// (a new inode or nothing; no symlink followed), and on EEXIST the old name is unlinked
    /// when the plan allows it ([`Writer::clear`]) and the create tried once more. `O_NONBLOCK`
    /// and the `fstat` check stand guard in case something is swapped in between. Returns the
    /// file and whether it was journaled already (its identity holds from its create on).
    fn create_file(
        &mut self,
        pfd: i32,
        name: &[u8],
        n: u64,
        path: &[u8],
        btime: Option<crate::manifest::Time>,
    ) -> Result<(File, bool), DataError> {
        let name = OsStr::from_bytes(name);
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let mut cleared = false;
        let fd = loop {
            match nix::fcntl::openat(Some(pfd), name, flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => break fd,
                Err(nix::errno::Errno::EEXIST) if !cleared => {
                    cleared = true;
                    self.clear(pfd, name, n, path)?;
                }
                Err(nix::errno::Errno::EEXIST) => {
                    return Err(appeared(n, path, &self.target, self.replace_asked));
                }
                Err(e) => return Err(self.err("creating file", n)(e)),
            }
        };
        self.created_upto = n + 1;
        self.created += 1;
        let f = File::from(crate::sys::owned(fd));
        let st = crate::sys::statx_cached(&f, b"").map_err(self.err("checking new file", n))?;
        if st.mode & libc::S_IFMT != libc::S_IFREG || st.nlink != 1 {
            return Err(unsafe_path(
                n,
                "the file just created is not a fresh regular file (replaced meanwhile?)",
            ));
        }
        self.pending = Some((n, st.ino));
        // A birth time, or on ntfs-3g the creation time set now, stays: journaled now,
        // before any data. Else after the last change (`file`).
        self.stable_crtime(&f, btime)?;
        let ntfs3g = self.fs == TargetFs::Ntfs3g;
        let id = match (btime, st.btime) {
            // The creation time just set is the identity's (NTFS keeps the 100 ns value as
            // given): no getxattr to read it back. Were it stored otherwise, a resume would
            // find another identity and refuse the file as a conflict, never take a file
            // that is not tek's.
            (Some(bt), None) if ntfs3g => Ident::Created {
                ino: st.ino,
                at: crate::ntfs::to_ntfs_time(bt),
            },
            _ => Ident::at(&f, b"", &st, ntfs3g),
        };
        if id.stable() {
            self.log.record(n, &id)?;
        }
        Ok((f, id.stable()))
    }

    /// Writes file `e` (path already mapped); returns its descriptor for the read-back, and
    /// leaves in `e` what was set.
    pub(super) fn file(
        &mut self,
        e: &mut Entry,
        n: u64,
        data: &mut OpenPipe,
    ) -> Result<Option<Arc<Vec<u8>>>, DataError> {
        let path = e.path.clone();
        let (pfd, name) = self.parent_of(&path, n)?;
        let (mut f, journaled) = self.create_file(pfd, name, n, &path, e.btime)?;
        let mut write_err = None;
        // The data stream's 64 KiB segments do not start where files start. On ntfs-3g every
        // write(2) costs FUSE round trips of its own (the kernel asks for
        // `security.capability` first, and a write not starting on a page boundary is split
        // at one more), so there the pieces are gathered into whole WRITE_BUF writes.
        let gather = self.fs == TargetFs::Ntfs3g && e.size > 0;
        // A sparse source: zero pieces inside its holes are skipped (seeked over) and the
        // length set at the end, so the holes stay holes (see `sparse`).
        let mut holes = e.extents.as_deref().map(Holes::new);
        let positional = gather || holes.is_some();
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        let (mut pos, mut bstart) = (0u64, 0u64);
        let progress = &self.progress;
        let mut put = |c: &[u8]| -> std::io::Result<()> {
            progress.tick();
            if !positional {
                return f.write_all(c);
            }
            let mut c = c;
            while !c.is_empty() {
                let (k, hole) = match &mut holes {
                    Some(h) => h.next_piece(c.len()),
                    None => (c.len(), false),
                };
                let (mut piece, rest) = c.split_at(k);
                c = rest;
                if hole && all_zero(piece) {
                    pos += k as u64;
                    continue;
                }
                if !gather {
                    f.write_all_at(piece, pos)?;
                    pos += k as u64;
                    continue;
                }
                if bstart + buf.len() as u64 != pos {
                    f.write_all_at(&buf, bstart)?;
                    buf.clear();
                    bstart = pos;
                }
                pos += k as u64;
                while !piece.is_empty() {
                    let m = piece.len().min(WRITE_BUF - buf.len());
                    buf.extend_from_slice(&piece[..m]);
                    piece = &piece[m..];
                    if buf.len() == WRITE_BUF {
                        f.write_all_at(&buf, bstart)?;
                        bstart += buf.len() as u64;
                        buf.clear();
                    }
                }
            }
            Ok(())
        };
        let r = data
            .copy_to(e.size, |c| {
                put(c).map_err(|err| {
                    let k = err.kind();
                    write_err = Some(err);
                    std::io::Error::from(k)
                })
            })
            .map(|()| {
                // The length set only after a hole (no write reached the end); one round
                // trip less per file on ntfs-3g.
                let end = if positional {
                    f.write_all_at(&buf, bstart).and_then(|()| {
                        if holes.is_some() {
                            f.set_len(e.size)
                        } else {
                            Ok(())
                        }
                    })
                } else {
                    Ok(())
                };
                if let Err(err) = end {
                    write_err = Some(err);
                }
            });
        self.wbuf = buf;
        if let Some(err) = write_err {
            return Err(io("writing restored file under", &self.target)(err));
        }
        r.map_err(|err| data_error(&self.target, err))?;
        let fd = f.as_raw_fd();
        self.owner(e, n, |u, g| fchown(fd, u, g))?;
        self.mode(fd, e.mode, n)?;
        let sd = self.xattrs(&f, e, false)?;
        self.times(&f, e, n)?;
        self.finish_ntfs(&f, e)?;
        // Journaled at its create when its identity holds (no statx, no getxattr again).
        if !journaled {
            self.journal(&f, b"", n, false)?;
        }
        Ok(sd)
    }

    pub(super) fn symlink(&mut self, e: &Entry, n: u64) -> Result<(), DataError> {
        let (pfd, name) = self.parent_of(&e.path, n)?;
        let name = OsStr::from_bytes(name);
        let target = OsStr::from_bytes(&e.target);
        match symlinkat(target, Some(pfd), name) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => {
                self.clear(pfd, name, n, &e.path)?;
                symlinkat(target, Some(pfd), name).map_err(self.err("creating symlink", n))?;
            }
            Err(e) => return Err(self.err("creating symlink", n)(e)),
        }
        self.created_upto = n + 1;
        self.created += 1;
        self.owner(e, n, |u, g| {
            fchownat(
                Some(pfd),
                name,
                u,
                g,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        let m = ts(e.mtime, e.mtime_nsec);
        let a = e.atime.map_or(m, |t| ts(t.sec, t.nsec));
        utimensat(Some(pfd), name, &a, &m, UtimensatFlags::NoFollowSymlink)
            .map_err(self.err("setting times", n))?;
        self.journal(&pfd, name.as_bytes(), n, false)
    }

    pub(super) fn hardlink(&mut self, e: &Entry, n: u64) -> Result<(), DataError> {
        let (tparent, tname) = split(&e.target);
        let tfd = self.dir(tparent, n)?;
        let (pfd, name) = self.parent_of(&e.path, n)?;
        let name = OsStr::from_bytes(name);
        if self.replace.contains_key(&n) {
            self.clear(pfd, name, n, &e.path)?;
        }
        // Flags 0: a symlink target is linked itself, never followed.
        match linkat(
            Some(tfd.as_raw_fd()),
            OsStr::from_bytes(tname),
            Some(pfd),
            name,
            nix::fcntl::AtFlags::empty(),
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => {
                return Err(appeared(n, &e.path, &self.target, self.replace_asked));
            }
            Err(err) => return Err(self.err("creating hard link", n)(err)),
        }
        self.created_upto = n + 1;
        self.created += 1;
        // The inode's status change time moved with the link: recorded again, for both.
        self.journal(&pfd, name.as_bytes(), n, false)
    }

    /// Directory metadata, deepest first (creating children would otherwise bump their
    /// mtimes, and a 0555 or read-only directory would refuse them). A directory that was
    /// there before (merged) keeps its owner, mode and times.
    pub(super) fn finish_dirs(&mut self) -> Result<(), DataError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.retain(|(n, _)| !self.merged.contains(n));
        dirs.sort_by_key(|(_, d)| std::cmp::Reverse(d.path.iter().filter(|&&b| b == b'/').count()));
        for (n, mut d) in dirs {
            let fd = self.dir(&d.path, n)?;
            let raw = fd.as_raw_fd();
            self.owner(&d, n, |u, g| fchown(raw, u, g))?;
            self.mode(raw, d.mode, n)?;
            let f = File::from(fd);
            let sd = self.xattrs(&f, &mut d, true)?;
            self.times(&f, &d, n)?;
            self.finish_ntfs(&f, &mut d)?;
            self.journal(&f, b"", n, true)?;
            self.dirs_written.push((n, d, sd));
        }
        Ok(())
    }
}
