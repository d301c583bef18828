//! Restore (migration): decrypt a dataset under a target directory, flush, read back, compare.
//!
//! Order matters:
//! 1. Authenticate everything before writing anything: the keyed BLAKE3 MACs of both ciphertext
//!    files must match the metadata (a tampered byte anywhere refuses the restore up front), and
//!    the whole manifest is decrypted and checked (normalised relative paths, nothing through a
//!    symlink, totals match).
//! 2. Write: every open goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to
//!    the target, so nothing lands outside it even if the target already holds hostile symlinks.
//!    Directory modes and times are applied last, deepest first (creating children would
//!    otherwise bump their mtimes, and a 0555 directory would refuse them).
//! 3. `syncfs` the target filesystem, then read every file back after `POSIX_FADV_DONTNEED`
//!    (which drops the now-clean pages, so the read comes from the device) and compare BLAKE3.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{OFlag, PosixFadviseAdvice, posix_fadvise};
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use crate::audit::AuditEvent;
use crate::custody::Custody;
use crate::dataset::{DatasetId, DatasetState, Destination, Migration, rfc3339};
use crate::error::{DataError, io};
use crate::ingest::{DATA_KEY, MAC_KEY, MANIFEST_KEY};
use crate::manifest::{Entry, EntryKind, ManifestReader, SymlinkGuard, check_normalized};
use crate::stream::{DecryptReader, Key, StreamKind, auth_failure, mac_of};
use crate::sys::open_beneath;

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
}

impl RestoreResult {
    /// True when everything restored was verified and nothing differed.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
            && self.entries_verified == self.entries_restored
            && self.bytes_verified == self.bytes_restored
    }
}

fn unsafe_path(entry: u64, reason: impl Into<String>) -> DataError {
    DataError::UnsafePath {
        entry,
        reason: reason.into(),
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
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
    dirs: Vec<Entry>,
    chown: bool,
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

    fn owner(&self, e: &Entry) -> (Option<Uid>, Option<Gid>) {
        (Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))
    }

    fn file(
        &mut self,
        e: &Entry,
        n: u64,
        data: &mut impl Read,
        buf: &mut [u8],
    ) -> Result<(), DataError> {
        let (pfd, name) = self.parent_of(&e.path, n)?;
        let pfile = pfd;
        let fd = nix::fcntl::openat(
            Some(pfile),
            OsStr::from_bytes(name),
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(self.err("creating file", n))?;
        let mut f = File::from(crate::sys::owned(fd));
        let mut left = e.size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            data.read_exact(&mut buf[..want])
                .map_err(|err| data_error(&self.target, err))?;
            f.write_all(&buf[..want])
                .map_err(io("writing restored file under", &self.target))?;
            left -= want as u64;
        }
        if self.chown {
            let (u, g) = self.owner(e);
            fchown(f.as_raw_fd(), u, g).map_err(self.err("setting owner", n))?;
        }
        // chmod after chown: chown clears setuid/setgid bits.
        fchmod(f.as_raw_fd(), Mode::from_bits_truncate(e.mode))
            .map_err(self.err("setting mode", n))?;
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
        if self.chown {
            let (u, g) = self.owner(e);
            fchownat(
                Some(pfd),
                name,
                u,
                g,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(self.err("setting owner", n))?;
        }
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
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.iter().filter(|&&b| b == b'/').count()));
        for (i, d) in dirs.iter().enumerate() {
            let n = i as u64;
            let fd = self.dir(&d.path, n)?;
            if self.chown {
                let (u, g) = self.owner(d);
                fchown(fd.as_raw_fd(), u, g).map_err(self.err("setting owner", n))?;
            }
            fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(d.mode))
                .map_err(self.err("setting mode", n))?;
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
    /// Restores dataset `id` under `target_dir`, flushes, reads back and compares. On success
    /// marks the dataset Migrated (verified) and writes migrate + verify audit entries.
    pub fn restore(
        &self,
        id: &DatasetId,
        target_dir: &Path,
        dest: &Destination,
    ) -> Result<RestoreResult, DataError> {
        let _lock = self.lock(id)?;
        let mut meta = self.meta(id)?;
        if !meta.info.state.is_live() {
            return Err(DataError::BadState {
                id: id.to_string(),
                state: meta.info.state.to_string(),
                action: "restore",
            });
        }
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

        // 2. Write.
        let root = File::open(target_dir).map_err(io("opening restore target", target_dir))?;
        let mut w = Writer {
            root,
            target: target_dir.to_path_buf(),
            parent: None,
            dirs: Vec::new(),
            chown: nix::unistd::geteuid().is_root(),
        };
        let mut res = RestoreResult::default();
        let dkey = key.derive(DATA_KEY);
        let df = File::open(&data_path).map_err(io("opening", &data_path))?;
        let mut data = DecryptReader::new(df, &dkey, StreamKind::Data)
            .map_err(|e| data_error(target_dir, e))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut mr = manifest_reader(&manifest_path, &mkey)?;
        let mut n = 0u64;
        while let Some(e) = mr.next_entry().map_err(man_err)? {
            match e.kind {
                EntryKind::File => {
                    w.file(&e, n, &mut data, &mut buf)?;
                    res.bytes_restored += e.size;
                }
                EntryKind::Dir => {
                    w.dir(&e.path, n)?;
                    w.dirs.push(e.clone());
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
        w.parent = None;
        w.finish_dirs()?;

        // 3. Flush, drop the cache, read back.
        nix::unistd::syncfs(w.root.as_raw_fd()).map_err(|e| DataError::Io {
            action: "flushing filesystem of",
            path: target_dir.to_path_buf(),
            source: e.into(),
        })?;
        // Files are read back by a few threads (hashing is CPU-bound, the reads mostly come from
        // the device's cache); the rest is checked inline.
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Entry)>(256);
        let rx = std::sync::Mutex::new(rx);
        let files = std::sync::Mutex::new((0u64, 0u64, Vec::<(u64, String)>::new()));
        let root = &w.root;
        std::thread::scope(|s| -> Result<(), DataError> {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let item = rx.lock().expect("verify queue").recv();
                        let Ok((n, e)) = item else { break };
                        let r = match read_back(root, &e.path, &mut buf) {
                            Ok((len, h)) if len == e.size && h == e.blake3 => Ok(()),
                            Ok(_) => Err(format!("entry {n}: content differs")),
                            Err(err) => Err(format!("entry {n}: cannot read back ({err})")),
                        };
                        let mut g = files.lock().expect("verify results");
                        match r {
                            Ok(()) => {
                                g.0 += 1;
                                g.1 += e.size;
                            }
                            Err(m) => g.2.push((n, m)),
                        }
                    }
                });
            }
            let tx = tx;
            let mut mr = manifest_reader(&manifest_path, &mkey)?;
            let mut n = 0u64;
            while let Some(e) = mr.next_entry().map_err(man_err)? {
                let ok = match e.kind {
                    EntryKind::File => {
                        let _ = tx.send((n, e));
                        n += 1;
                        continue;
                    }
                    EntryKind::Symlink => {
                        let (parent, name) = split(&e.path);
                        let got = w.dir(parent, n).ok().and_then(|p| {
                            nix::fcntl::readlinkat(Some(p.as_raw_fd()), OsStr::from_bytes(name))
                                .ok()
                        });
                        let ok = got.as_deref().map(|g| g.as_bytes()) == Some(&e.target[..]);
                        if !ok {
                            res.mismatches.push(format!("entry {n}: symlink differs"));
                        }
                        ok
                    }
                    EntryKind::Dir | EntryKind::Hardlink => {
                        let flags = if e.kind == EntryKind::Dir {
                            OFlag::O_DIRECTORY
                        } else {
                            OFlag::O_PATH
                        };
                        let ok = open_beneath(&w.root, &e.path, OFlag::O_RDONLY | flags, 0).is_ok();
                        if !ok {
                            res.mismatches.push(format!("entry {n}: missing"));
                        }
                        ok
                    }
                    _ => {
                        n += 1;
                        continue;
                    }
                };
                if ok {
                    res.entries_verified += 1;
                    res.bytes_verified += e.size;
                }
                n += 1;
            }
            Ok(())
        })?;
        let (fe, fb, mut fm) = files.into_inner().expect("verify results");
        res.entries_verified += fe;
        res.bytes_verified += fb;
        fm.sort();
        res.mismatches.extend(fm.into_iter().map(|(_, m)| m));
        res.mismatches.sort_by_key(|m| {
            m.trim_start_matches("entry ")
                .split(':')
                .next()
                .and_then(|x| x.parse::<u64>().ok())
        });

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
        }
        self.audit.append_many([
            AuditEvent::Migrate {
                dataset: id.to_string(),
                client: meta.info.client.clone(),
                ticket: meta.info.ticket.clone(),
                job: dest.job.clone(),
                device: dest.device.clone(),
                device_serial: dest.device_serial.clone(),
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

/// Reads a restored file back from the device: drop its (clean, just synced) pages first.
fn read_back(root: &File, path: &[u8], buf: &mut [u8]) -> Result<(u64, [u8; 32]), std::io::Error> {
    let fd = open_beneath(root, path, OFlag::O_RDONLY, 0)?;
    let _ = posix_fadvise(
        fd.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let mut f = File::from(fd);
    let mut h = blake3::Hasher::new();
    let mut len = 0u64;
    loop {
        let k = f.read(buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        len += k as u64;
    }
    Ok((len, *h.finalize().as_bytes()))
}
