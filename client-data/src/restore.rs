//! Restore (migration): decrypt a dataset under a target directory, flush, read back, compare.
//!
//! Order matters:
//! 1. Authenticate everything before writing anything: the keyed BLAKE3 MACs of both ciphertext
//!    files must match the metadata (a tampered byte anywhere refuses the restore up front), and
//!    the whole manifest is decrypted and checked (normalised relative paths, nothing through a
//!    symlink, totals match).
//! 2. Write: every open goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!    RESOLVE_NO_XDEV)` relative to the target's descriptor ([`RestoreTarget`], never a path
//!    resolved again), so nothing lands outside it even if the target already holds hostile
//!    symlinks or mount points. Files are created `O_EXCL` after unlinking whatever stood at
//!    their name: an existing hard link or FIFO is never opened.
//!    Directory modes and times are applied last, deepest first (creating children would
//!    otherwise bump their mtimes, and a 0555 directory would refuse them).
//!    A thread reads and decrypts the data stream ahead ([`OpenPipe`]) while this one writes.
//!    Owners are set when CAP_CHOWN is effective (decided by capability, not by uid: the agent
//!    runs as user `tek` with ambient capabilities), else counted in the result; a setuid/setgid
//!    mode refused with EPERM (systemd `RestrictSUIDSGID=yes`) is set without those bits and listed.
//! 3. Read back: every 64 MiB or 4096 files, a thread `syncfs`es the target filesystem and hands
//!    the files that flush covered to reader threads, which read each back after
//!    `POSIX_FADV_DONTNEED` (dropping the now-clean pages, so the read comes from the device) and
//!    compare BLAKE3 (`readback`). So every file is read back only after it was flushed, while
//!    later files are still being written. A last flush after the directory metadata, then
//!    directories, symlinks and hard links are checked.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use crate::audit::AuditEvent;
use crate::batch::OpenPipe;
use crate::custody::Custody;
use crate::dataset::{DatasetId, DatasetState, Destination, Migration, rfc3339};
use crate::error::{DataError, io};
use crate::ingest::{DATA_KEY, MAC_KEY, MANIFEST_KEY};
use crate::manifest::{Entry, EntryKind, ManifestReader, SymlinkGuard, check_normalized};
use crate::ownership::{Ownership, set_mode};
use crate::proof::VerifiedRestore;
use crate::readback::{ReadBack, verify_others};
use crate::stream::{DecryptReader, Key, StreamKind, auth_failure, mac_of};
use crate::sys::open_beneath;
use crate::target::RestoreTarget;

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreResult {
    /// Entries written (files, directories, symlinks, hard links).
    pub entries_restored: u64,
    /// File bytes written.
    pub bytes_restored: u64,
    /// Entries read back and found equal.
    pub entries_verified: u64,
    /// File bytes read back and found equal.
    pub bytes_verified: u64,
    /// Entries not restored, e.g. "character device node (entry 17)" (never file names).
    pub skipped: Vec<String>,
    /// Entries that did not read back equal, e.g. "entry 5: content differs".
    pub mismatches: Vec<String>,
    /// Entries whose owner (uid, gid) could not be set: the restoring process lacks CAP_CHOWN,
    /// or the kernel refused. They keep the restoring user's ownership.
    pub owners_not_restored: u64,
    /// Why ownership was not restored, when it was not (e.g. "no CAP_CHOWN in the effective
    /// capability set").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ownership_note: Option<String>,
    /// Entries restored without their setuid/setgid bits because setting them was refused
    /// (systemd's `RestrictSUIDSGID=yes` makes such a chmod fail with EPERM), e.g.
    /// "entry 9: mode 4755 restored as 0755".
    pub setid_dropped: Vec<String>,
    /// The proof a wipe needs, present when the read-back passed (see [`crate::proof`]).
    #[serde(skip)]
    proof: Option<VerifiedRestore>,
}

impl RestoreResult {
    /// True when everything restored was verified and nothing differed.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
            && self.entries_verified == self.entries_restored
            && self.bytes_verified == self.bytes_restored
    }

    /// The proof that this restore was verified, the one [`Custody::wipe`] takes; `None` when
    /// the read-back found a difference.
    pub fn verified(&self) -> Option<&VerifiedRestore> {
        self.proof.as_ref()
    }
}

fn unsafe_path(entry: u64, reason: impl Into<String>) -> DataError {
    DataError::UnsafePath {
        entry,
        reason: reason.into(),
    }
}

pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn ts(sec: i64, nsec: u32) -> TimeSpec {
    TimeSpec::new(sec, i64::from(nsec))
}

/// Writes entries beneath the target directory.
struct Writer {
    root: File,
    target: std::path::PathBuf,
    parent: Option<(Vec<u8>, OwnedFd)>,
    dirs: Vec<(u64, Entry)>,
    own: Ownership,
    owners_not_restored: u64,
    setid_dropped: Vec<String>,
}

impl Writer {
    fn err(
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

    /// Opens (creating with 0700 as needed) directory `rel` beneath the target.
    fn dir(&self, rel: &[u8], n: u64) -> Result<OwnedFd, DataError> {
        match open_beneath(&self.root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
            Ok(fd) => Ok(fd),
            Err(nix::errno::Errno::ENOENT) if !rel.is_empty() => {
                let (parent, name) = split(rel);
                let pfd = self.dir(parent, n)?;
                match mkdirat(
                    Some(pfd.as_raw_fd()),
                    OsStr::from_bytes(name),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(self.err("creating directory", n)(e)),
                }
                open_beneath(&self.root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
                    .map_err(self.err("opening directory", n))
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

    /// Sets the owner of `e` with `chown` (given the ids), or counts it as not restored.
    fn owner(
        &mut self,
        e: &Entry,
        n: u64,
        chown: impl FnOnce(Option<Uid>, Option<Gid>) -> nix::Result<()>,
    ) -> Result<(), DataError> {
        match self.own {
            Ownership::Restore => {
                match chown(Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid))) {
                    Ok(()) => {}
                    // EPERM: capability dropped meanwhile or refused by an LSM; EINVAL: the id
                    // has no mapping in this user namespace. Neither fails the restore.
                    Err(nix::errno::Errno::EPERM | nix::errno::Errno::EINVAL) => {
                        self.owners_not_restored += 1
                    }
                    Err(err) => return Err(self.err("setting owner", n)(err)),
                }
            }
            Ownership::Keep { uid, gid } => {
                if (e.uid, e.gid) != (uid, gid) {
                    self.owners_not_restored += 1;
                }
            }
        }
        Ok(())
    }

    /// Sets the mode of the open `fd` (after its owner: chown clears setuid/setgid bits).
    fn mode(&mut self, fd: i32, mode: u32, n: u64) -> Result<(), DataError> {
        let note = set_mode(mode, n, |m| fchmod(fd, m)).map_err(self.err("setting mode", n))?;
        self.setid_dropped.extend(note);
        Ok(())
    }

    /// Creates a fresh regular file `name` in `pfd`. Whatever already sits at that name in the
    /// target is never opened: a hard link to a file outside the target would have the outside
    /// file rewritten (content, owner, mode), a FIFO would block the open forever. So: `O_EXCL`
    /// (a new inode or nothing; no symlink followed), and on EEXIST the old name is unlinked
    /// (a directory is refused) and the create tried once more. `O_NONBLOCK` and the `fstat`
    /// check stand guard in case something is swapped in between.
    fn create_file(&self, pfd: i32, name: &[u8], n: u64) -> Result<File, DataError> {
        let name = OsStr::from_bytes(name);
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let mut replaced = false;
        let fd = loop {
            match nix::fcntl::openat(Some(pfd), name, flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => break fd,
                Err(nix::errno::Errno::EEXIST) if !replaced => {
                    replaced = true;
                    match nix::unistd::unlinkat(
                        Some(pfd),
                        name,
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    ) {
                        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                        Err(nix::errno::Errno::EISDIR) => {
                            return Err(unsafe_path(
                                n,
                                "a directory already stands where this file goes in the target",
                            ));
                        }
                        Err(e) => {
                            return Err(self.err("removing what stood at a file's path", n)(e));
                        }
                    }
                }
                Err(e) => return Err(self.err("creating file", n)(e)),
            }
        };
        let f = File::from(crate::sys::owned(fd));
        let st = nix::sys::stat::fstat(f.as_raw_fd()).map_err(self.err("checking new file", n))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return Err(unsafe_path(
                n,
                "the file just created is not a fresh regular file (replaced meanwhile?)",
            ));
        }
        Ok(f)
    }

    fn file(&mut self, e: &Entry, n: u64, data: &mut OpenPipe) -> Result<(), DataError> {
        let (pfd, name) = self.parent_of(&e.path, n)?;
        let mut f = self.create_file(pfd, name, n)?;
        let mut write_err = None;
        let r = data.copy_to(e.size, |c| {
            f.write_all(c).map_err(|err| {
                let k = err.kind();
                write_err = Some(err);
                std::io::Error::from(k)
            })
        });
        if let Some(err) = write_err {
            return Err(io("writing restored file under", &self.target)(err));
        }
        r.map_err(|err| data_error(&self.target, err))?;
        let fd = f.as_raw_fd();
        self.owner(e, n, |u, g| fchown(fd, u, g))?;
        self.mode(fd, e.mode, n)?;
        let t = ts(e.mtime, e.mtime_nsec);
        futimens(f.as_raw_fd(), &t, &t).map_err(self.err("setting times", n))?;
        Ok(())
    }

    fn symlink(&mut self, e: &Entry, n: u64) -> Result<(), DataError> {
        let (pfd, name) = self.parent_of(&e.path, n)?;
        let name = OsStr::from_bytes(name);
        let target = OsStr::from_bytes(&e.target);
        match symlinkat(target, Some(pfd), name) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => {
                let _ =
                    nix::unistd::unlinkat(Some(pfd), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
                symlinkat(target, Some(pfd), name).map_err(self.err("creating symlink", n))?;
            }
            Err(e) => return Err(self.err("creating symlink", n)(e)),
        }
        self.owner(e, n, |u, g| {
            fchownat(
                Some(pfd),
                name,
                u,
                g,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        let t = ts(e.mtime, e.mtime_nsec);
        utimensat(Some(pfd), name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(self.err("setting times", n))?;
        Ok(())
    }

    fn hardlink(&mut self, e: &Entry, n: u64) -> Result<(), DataError> {
        let (tparent, tname) = split(&e.target);
        let tfd = self.dir(tparent, n)?;
        let (pfd, name) = self.parent_of(&e.path, n)?;
        let name = OsStr::from_bytes(name);
        let _ = nix::unistd::unlinkat(Some(pfd), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        // Flags 0: a symlink target is linked itself, never followed.
        linkat(
            Some(tfd.as_raw_fd()),
            OsStr::from_bytes(tname),
            Some(pfd),
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(self.err("creating hard link", n))
    }

    fn finish_dirs(&mut self) -> Result<(), DataError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(_, d)| std::cmp::Reverse(d.path.iter().filter(|&&b| b == b'/').count()));
        for (n, d) in &dirs {
            let n = *n;
            let fd = self.dir(&d.path, n)?;
            let raw = fd.as_raw_fd();
            self.owner(d, n, |u, g| fchown(raw, u, g))?;
            self.mode(raw, d.mode, n)?;
            let t = ts(d.mtime, d.mtime_nsec);
            futimens(fd.as_raw_fd(), &t, &t).map_err(self.err("setting times", n))?;
        }
        Ok(())
    }
}

fn data_error(target: &Path, err: std::io::Error) -> DataError {
    match auth_failure(&err) {
        Some(a) => DataError::Tampered {
            id: String::new(),
            what: "ciphertext",
            detail: a.to_string(),
        },
        None => DataError::Io {
            action: "reading staged ciphertext for",
            path: target.to_path_buf(),
            source: err,
        },
    }
}

fn manifest_reader(
    path: &Path,
    key: &Key,
) -> Result<ManifestReader<DecryptReader<File>>, DataError> {
    let f = File::open(path).map_err(io("opening manifest", path))?;
    let r =
        DecryptReader::new(f, key, StreamKind::Manifest).map_err(io("reading manifest", path))?;
    Ok(ManifestReader::new(r))
}

impl Custody {
    /// Restores dataset `id` under the directory `target_dir` (opened once, see
    /// [`RestoreTarget::open`]); see [`Custody::restore_into`].
    pub fn restore(
        &self,
        id: &DatasetId,
        target_dir: &Path,
        dest: &Destination,
    ) -> Result<RestoreResult, DataError> {
        self.restore_into(id, &RestoreTarget::open(target_dir)?, dest)
    }

    /// Restores dataset `id` beneath the open directory `target`, flushes, reads back and
    /// compares. Every open is relative to `target`'s descriptor, never to a path. On success
    /// marks the dataset Migrated (verified) and writes migrate + verify audit entries.
    pub fn restore_into(
        &self,
        id: &DatasetId,
        target: &RestoreTarget,
        dest: &Destination,
    ) -> Result<RestoreResult, DataError> {
        let target_dir = target.label();
        if let Some(job) = &dest.job {
            // Checked before anything is written: the audit entry at the end must not fail.
            crate::dataset::check_ident("job id", job)?;
        }
        let (_lock, mut meta) = self.lock_live(id, "restore")?;
        let kek = self.keys.kek(false)?;
        let key = self.keys.load(&kek, id.as_str())?;
        let dir = self.dataset_dir(id);
        let (data_path, manifest_path) = (dir.join("data.enc"), dir.join("manifest.enc"));
        let tampered = |what: &'static str, detail: String| DataError::Tampered {
            id: id.to_string(),
            what,
            detail,
        };

        // 1. Authenticate everything first.
        let t0 = std::time::Instant::now();
        let mac_key = key.derive(MAC_KEY);
        for (path, expect, what) in [
            (&manifest_path, &meta.manifest_mac, "manifest"),
            (&data_path, &meta.data_mac, "ciphertext"),
        ] {
            let f = File::open(path).map_err(io("opening", path))?;
            if &mac_of(f, &mac_key).map_err(io("reading", path))? != expect {
                return Err(tampered(
                    what,
                    "MAC over the whole file does not match".into(),
                ));
            }
        }
        let mkey = key.derive(MANIFEST_KEY);
        let man_err = |e: std::io::Error| match auth_failure(&e) {
            Some(a) => tampered("manifest", a.to_string()),
            None => tampered("manifest", e.to_string()),
        };
        {
            let mut mr = manifest_reader(&manifest_path, &mkey)?;
            let mut guard = SymlinkGuard::default();
            let (mut n, mut bytes) = (0u64, 0u64);
            while let Some(e) = mr.next_entry().map_err(man_err)? {
                check_normalized(&e.path).map_err(|r| unsafe_path(n, r))?;
                guard.check(&e).map_err(|r| unsafe_path(n, r))?;
                bytes += e.size;
                n += 1;
            }
            if mr.end != Some((n, bytes)) || (n, bytes) != (meta.info.entries, meta.info.bytes) {
                return Err(tampered(
                    "manifest",
                    "entry or byte totals do not match".into(),
                ));
            }
        }

        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "restore: authenticated");
        // 2. Write.
        let root = target
            .dir()
            .try_clone()
            .map_err(io("duplicating descriptor of restore target", target_dir))?;
        let mut w = Writer {
            root,
            target: target_dir.to_path_buf(),
            parent: None,
            dirs: Vec::new(),
            own: Ownership::detect(),
            owners_not_restored: 0,
            setid_dropped: Vec::new(),
        };
        let mut res = RestoreResult::default();
        let dkey = key.derive(DATA_KEY);
        let df = File::open(&data_path).map_err(io("opening", &data_path))?;
        // A thread reads and decrypts ahead while this one writes the files.
        let mut data =
            OpenPipe::start(df, &dkey, StreamKind::Data).map_err(|e| data_error(target_dir, e))?;
        let flush_err = |e: nix::errno::Errno| DataError::Io {
            action: "flushing filesystem of",
            path: target_dir.to_path_buf(),
            source: e.into(),
        };
        // Files are flushed and read back in the background as the restore proceeds.
        let mut rb = ReadBack::start(&w.root).map_err(io("starting read-back of", target_dir))?;
        let mut mr = manifest_reader(&manifest_path, &mkey)?;
        let mut n = 0u64;
        while let Some(e) = mr.next_entry().map_err(man_err)? {
            match e.kind {
                EntryKind::File => {
                    w.file(&e, n, &mut data)?;
                    res.bytes_restored += e.size;
                    rb.written(n, e);
                    res.entries_restored += 1;
                    n += 1;
                    continue;
                }
                EntryKind::Dir => {
                    w.dir(&e.path, n)?;
                    w.dirs.push((n, e.clone()));
                }
                EntryKind::Symlink => w.symlink(&e, n)?,
                EntryKind::Hardlink => w.hardlink(&e, n)?,
                k => {
                    res.skipped.push(format!("{} (entry {n})", k.describe()));
                    n += 1;
                    continue;
                }
            }
            res.entries_restored += 1;
            n += 1;
        }
        data.finish().map_err(|e| data_error(target_dir, e))?;
        w.parent = None;
        w.finish_dirs()?;
        res.owners_not_restored = w.owners_not_restored;
        if res.owners_not_restored > 0 && w.own != Ownership::Restore {
            res.ownership_note = Some("no CAP_CHOWN in the effective capability set".into());
        } else if res.owners_not_restored > 0 {
            res.ownership_note = Some("the kernel refused chown (EPERM or unmapped id)".into());
        }
        res.setid_dropped = std::mem::take(&mut w.setid_dropped);

        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "restore: written");
        // 3. The last flush (covering directory metadata too), the last reads, then the rest.
        let mut v = rb.finish().map_err(flush_err)?;
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "restore: files verified");
        let mut mr = manifest_reader(&manifest_path, &mkey)?;
        let o = verify_others(&w.root, || mr.next_entry().map_err(man_err))?;
        v.entries += o.entries;
        v.mismatches.extend(o.mismatches);
        v.mismatches.sort();
        res.entries_verified = v.entries;
        res.bytes_verified = v.bytes;
        res.mismatches = v
            .mismatches
            .into_iter()
            .map(|(n, m)| format!("entry {n}: {m}"))
            .collect();

        let verified = res.ok();
        if verified {
            meta.migrations.push(Migration {
                at: rfc3339(self.now()),
                dest: dest.clone(),
                entries_verified: res.entries_verified,
                bytes_verified: res.bytes_verified,
            });
            meta.info.state = DatasetState::Migrated;
            meta.save(&dir)?;
            res.proof = Some(VerifiedRestore::after_read_back(id));
        }
        self.audit.append_many([
            AuditEvent::Migrate {
                dataset: id.to_string(),
                client: meta.info.client.clone(),
                ticket: meta.info.ticket.clone(),
                job: dest.job.clone(),
                device: dest.device.sanitized(),
                entries: res.entries_restored,
                bytes: res.bytes_restored,
                skipped: res.skipped.len() as u64,
            },
            AuditEvent::Verify {
                dataset: id.to_string(),
                entries: res.entries_verified,
                bytes: res.bytes_verified,
                mismatches: res.mismatches.len() as u64,
                result: if verified { "passed" } else { "failed" }.into(),
            },
        ])?;
        Ok(res)
    }
}
