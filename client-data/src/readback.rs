//! Read-back verification of a restore: every restored file is read again from the device (after
//! a flush, its clean pages dropped first) and its BLAKE3 compared with the manifest, and its
//! metadata with what was set (times at the filesystem's granularity, extended attributes, and
//! on NTFS the creation time, DOS attributes and security descriptor); directories are checked
//! the same way, symlinks for their target, hard links for being the same inode as their target.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{OFlag, PosixFadviseAdvice, posix_fadvise};

use crate::manifest::{Entry, EntryKind, Time};
use crate::restore::watchdog::Progress;
use crate::sys::open_beneath;
use crate::target::TargetFs;
use crate::xattrs::{NTFS_ATTRIB, NTFS_CRTIME};

/// The descriptor an entry was given (NTFS), shared between entries of one depth.
pub(crate) type Sd = Option<Arc<Vec<u8>>>;

/// Totals of a read-back pass.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    /// Entries found equal.
    pub entries: u64,
    /// File bytes found equal.
    pub bytes: u64,
    /// (entry number, what differs), in entry order.
    pub mismatches: Vec<(u64, String)>,
    /// Files whose times the read-back set again (ntfs-3g moved them), as they are now: their
    /// status change time moved, so the restore journals them again.
    pub retimed: Vec<(u64, crate::sys::Statx)>,
}

/// Files restored since the last flush trigger a flush (and their read-back) at this size...
const FLUSH_BYTES: u64 = 64 << 20;
/// ...or at this many files.
const FLUSH_FILES: usize = 4096;
/// Reader threads.
const READERS: usize = 4;
/// The writer blocks (instead of letting the list grow) past this many unflushed files.
const MAX_PENDING: usize = 4 * FLUSH_FILES;

type Pending = Vec<(u64, Entry, Sd)>;

/// Reads restored files back while the restore goes on: the writer hands over each file once
/// written ([`ReadBack::written`]); a thread flushes the filesystem (`syncfs`) every 64 MiB or
/// 4096 files and passes the files that flush covered to four reader threads. A file is thus
/// only read back after it reached the device, as in a flush-then-verify pass, but the flushes
/// and reads overlap the writing instead of following it. Hashing is CPU-bound and the reads of
/// small files are latency-bound, so several readers help both.
pub(crate) struct ReadBack {
    pending: Pending,
    pending_bytes: u64,
    tx: Option<crossbeam_channel::Sender<Pending>>,
    flusher: Option<std::thread::JoinHandle<nix::Result<Verified>>>,
    abort: Arc<AtomicBool>,
}

impl ReadBack {
    /// Starts the flusher and readers on the (restore target) directory `root`.
    /// Ticks `progress` after every read (the restore's watchdog watches it).
    pub(crate) fn start(
        root: &File,
        fs: TargetFs,
        progress: Arc<Progress>,
    ) -> std::io::Result<ReadBack> {
        let root = Arc::new(root.try_clone()?);
        let abort = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<Pending>(1);
        let stop = abort.clone();
        let flusher = std::thread::Builder::new()
            .name("tek-flush".into())
            .spawn(move || flush_and_read(&root, fs, rx, &stop, &progress))?;
        Ok(ReadBack {
            pending: Vec::new(),
            pending_bytes: 0,
            tx: Some(tx),
            flusher: Some(flusher),
            abort,
        })
    }

    /// Entry `n`, a regular file, has been written and closed (`e` as written: mapped path,
    /// the attributes set; `sd` the descriptor it was given).
    pub(crate) fn written(&mut self, n: u64, e: Entry, sd: Sd) {
        self.pending_bytes += e.size;
        self.pending.push((n, e, sd));
        if self.pending_bytes >= FLUSH_BYTES || self.pending.len() >= FLUSH_FILES {
            let tx = self.tx.as_ref().expect("read-back already finished");
            let batch = std::mem::take(&mut self.pending);
            // While the flusher is busy, keep collecting (up to a bound) rather than wait.
            let back = match tx.try_send(batch) {
                Ok(()) => None,
                Err(crossbeam_channel::TrySendError::Full(b)) if b.len() < MAX_PENDING => Some(b),
                Err(crossbeam_channel::TrySendError::Full(b)) => tx.send(b).err().map(|e| e.0),
                Err(crossbeam_channel::TrySendError::Disconnected(b)) => Some(b),
            };
            match back {
                Some(b) => self.pending = b,
                None => self.pending_bytes = 0,
            }
        }
    }

    /// Flushes what is left (call after the last write, directory metadata included), waits
    /// for the reads and returns the files' results.
    pub(crate) fn finish(mut self) -> nix::Result<Verified> {
        let tx = self.tx.take().expect("read-back already finished");
        let _ = tx.send(std::mem::take(&mut self.pending));
        drop(tx);
        match self.flusher.take().map(|f| f.join()) {
            Some(Ok(r)) => r,
            _ => Err(nix::errno::Errno::EIO),
        }
    }
}

impl Drop for ReadBack {
    fn drop(&mut self) {
        // Dropped on an error path: stop reading, let the threads drain and end.
        self.abort.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
    }
}

/// The flusher thread: syncfs, then hand the files that flush covered to the readers.
fn flush_and_read(
    root: &Arc<File>,
    fs: TargetFs,
    rx: crossbeam_channel::Receiver<Pending>,
    abort: &AtomicBool,
    progress: &Progress,
) -> nix::Result<Verified> {
    // Four readers whatever the core count: each small-file read waits for the device (a
    // round trip through the loop worker in the benchmark), so more reads in flight shorten
    // the tail after the last write. Measured on 2 cores, tail after the last write: 1 reader
    // 0.2-1.1 s, 2 readers 0.1-0.7 s, 4 readers 0.04-0.2 s, same CPU time.
    let workers = READERS;
    // On a `noatime` mount reading changes no access time, so the times need no setting again
    // after the read, only a check (see `read_back`).
    let noatime = nix::sys::statvfs::fstatvfs(root.as_ref())
        .is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOATIME));
    let out = Mutex::new(Verified::default());
    let (vtx, vrx) = crossbeam_channel::bounded::<(u64, Entry, Sd)>(256);
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (vrx, out) = (vrx.clone(), &out);
            s.spawn(move || {
                let mut buf = ReadBuf::new();
                for (n, e, sd) in vrx {
                    if abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    let sd = sd.as_deref().map(Vec::as_slice);
                    let r = match read_back(root, &e, sd, (fs, noatime), &mut buf, progress) {
                        Ok((_, _, Some(m), _)) => Err(m),
                        Ok((len, h, None, st)) if len == e.size && h == e.blake3 => Ok(st),
                        Ok(_) => Err("content differs".to_string()),
                        Err(err) => Err(format!("cannot read back ({err})")),
                    };
                    let mut g = out.lock().expect("verify results");
                    match r {
                        Ok(st) => {
                            g.entries += 1;
                            g.bytes += e.size;
                            g.retimed.extend(st.map(|st| (n, st)));
                        }
                        Err(m) => g.mismatches.push((n, m)),
                    }
                }
            });
        }
        drop(vrx);
        for batch in rx {
            if abort.load(Ordering::Relaxed) {
                continue;
            }
            nix::unistd::syncfs(root.as_raw_fd())?;
            progress.tick();
            for item in batch {
                let _ = vtx.send(item);
            }
        }
        drop(vtx);
        Ok(())
    })?;
    Ok(out.into_inner().expect("verify results"))
}

/// Checks the entries other than regular files that `entries` yields (numbered in manifest
/// order): directories and hard links exist, symlinks have their target. Run after the last
/// flush.
pub(crate) fn verify_others<E>(
    root: &File,
    mut entries: impl FnMut() -> Result<Option<Entry>, E>,
) -> Result<Verified, E> {
    let mut v = Verified::default();
    let mut n = 0u64;
    while let Some(e) = entries()? {
        let this = n;
        n += 1;
        let (ok, what) = match e.kind {
            EntryKind::Symlink => (symlink_matches(root, &e), "symlink differs"),
            EntryKind::Dir => (exists(root, &e.path, OFlag::O_DIRECTORY), "missing"),
            EntryKind::Hardlink => (
                same_inode(root, &e.path, &e.target),
                "missing or not a link to its target",
            ),
            _ => continue,
        };
        if ok {
            v.entries += 1;
        } else {
            v.mismatches.push((this, what.to_string()));
        }
    }
    Ok(v)
}

/// Checks the metadata of restored directories (as [`check_meta`] does for files).
pub(crate) fn verify_dirs(root: &File, fs: TargetFs, dirs: &[(u64, Entry, Sd)]) -> Verified {
    let mut v = Verified::default();
    for (n, e, sd) in dirs {
        let r = open_beneath(root, &e.path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
            .map_err(|err| format!("cannot read back ({err})"))
            .and_then(|fd| {
                let f = File::from(fd);
                let st = f
                    .metadata()
                    .map_err(|err| format!("cannot read back ({err})"))?;
                check_meta(&f, &st, e, sd.as_deref().map(Vec::as_slice), fs, true)
                    .map_or(Ok(()), Err)
            });
        if let Err(m) = r {
            v.mismatches.push((*n, m));
        }
    }
    v
}

/// Both paths name one inode (a hard link and its target).
fn same_inode(root: &File, a: &[u8], b: &[u8]) -> bool {
    let id = |p: &[u8]| {
        let fd = open_beneath(root, p, OFlag::O_PATH, 0).ok()?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?;
        Some((st.st_dev, st.st_ino))
    };
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

fn ns(t: Time) -> i128 {
    i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec)
}

/// Compares a restored entry's metadata with what was set; the first difference, if any.
/// The NTFS creation time only when `crtime_now` (files check it after their read-back).
fn check_meta(
    f: &File,
    st: &std::fs::Metadata,
    e: &Entry,
    sd: Option<&[u8]>,
    fs: TargetFs,
    crtime_now: bool,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    use xattr::FileExt;
    let close = |got: Time, want: Time| times_close(got, want, fs);
    let mtime = Time {
        sec: e.mtime,
        nsec: e.mtime_nsec,
    };
    let got_m = Time {
        sec: st.mtime(),
        nsec: st.mtime_nsec() as u32,
    };
    if !close(got_m, mtime) {
        return Some("modification time differs".into());
    }
    if !close(atime_of(st), e.atime.unwrap_or(mtime)) {
        return Some("access time differs".into());
    }
    if let (Some(bt), TargetFs::Ntfs3g, true) = (e.btime, fs, crtime_now) {
        let got = f
            .get_xattr(NTFS_CRTIME)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(|v| crate::ntfs::from_ntfs_time(u64::from_be_bytes(v)));
        if !got.is_some_and(|t| close(t, bt)) {
            return Some("creation time differs".into());
        }
    }
    for x in &e.xattrs {
        let got = f
            .get_xattr(std::ffi::OsStr::from_bytes(&x.name))
            .ok()
            .flatten();
        let same = if x.name == NTFS_ATTRIB.as_bytes() {
            let word = |v: &[u8]| <[u8; 4]>::try_from(v).ok().map(u32::from_be_bytes);
            let k = crate::ntfs::ATTRIB_KEPT;
            got.as_deref().and_then(word).map(|w| w & k) == word(&x.value).map(|w| w & k)
        } else {
            got.as_deref() == Some(x.value.as_slice())
        };
        if !same {
            return Some(format!(
                "extended attribute {} differs",
                String::from_utf8_lossy(&x.name)
            ));
        }
    }
    if let (Some(sd), Some(name)) = (sd, fs.security_xattr()) {
        if f.get_xattr(name).ok().flatten().as_deref() != Some(sd) {
            return Some("security descriptor differs".into());
        }
    }
    None
}

fn exists(root: &File, path: &[u8], flag: OFlag) -> bool {
    open_beneath(root, path, OFlag::O_RDONLY | flag, 0).is_ok()
}

fn symlink_matches(root: &File, e: &Entry) -> bool {
    let (parent, name) = crate::restore::split(&e.path);
    let Ok(p) = open_beneath(root, parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) else {
        return false;
    };
    let got = nix::fcntl::readlinkat(Some(p.as_raw_fd()), OsStr::from_bytes(name));
    got.ok().as_deref().map(|g| g.as_bytes()) == Some(&e.target[..])
}

/// Alignment of O_DIRECT buffers (a page: enough for any logical block size).
const ALIGN: usize = 4096;
/// Bytes per read.
const READ: usize = 256 * 1024;

/// A read buffer with an [`ALIGN`]-aligned window of [`READ`] bytes, as O_DIRECT wants.
pub(crate) struct ReadBuf(Vec<u8>);

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf(vec![0u8; READ + ALIGN])
    }
    fn window(&mut self) -> &mut [u8] {
        let off = self.0.as_ptr().align_offset(ALIGN);
        &mut self.0[off..off + READ]
    }
}

/// Reads a restored file back from the device, bypassing the page cache: O_DIRECT where the
/// filesystem supports it (ext4 does; the data then comes straight from the device into the
/// buffer, no page-cache copy), else after `POSIX_FADV_DONTNEED` (which drops the clean, just
/// flushed pages, so the read still comes from the device).
/// Also compares the metadata ([`check_meta`], before the content is read, so a filesystem
/// that updates access times on read cannot hide a difference): its finding is the third
/// member.
/// What reading one file back found: its length, BLAKE3, what differs in its metadata, and
/// its attributes when the read-back set its times again.
type ReadOne = (u64, [u8; 32], Option<String>, Option<crate::sys::Statx>);

fn read_back(
    root: &File,
    e: &Entry,
    sd: Option<&[u8]>,
    (fs, noatime): (TargetFs, bool),
    buf: &mut ReadBuf,
    progress: &Progress,
) -> std::io::Result<ReadOne> {
    let path = &e.path[..];
    // O_NOATIME: verifying must not change the access times just restored (nor dirty 20k inodes
    // again). Allowed to the owner and to CAP_FOWNER; fall back without it.
    // O_NONBLOCK: a FIFO swapped in at the path must not hang the read-back (the fstat below
    // then refuses anything that is not a regular file).
    let open = |extra: OFlag| {
        let extra = extra | OFlag::O_NONBLOCK;
        open_beneath(root, path, OFlag::O_RDONLY | OFlag::O_NOATIME | extra, 0)
            .or_else(|_| open_beneath(root, path, OFlag::O_RDONLY | extra, 0))
    };
    let (fd, direct) = match open(OFlag::O_DIRECT) {
        Ok(fd) => (fd, true),
        Err(nix::errno::Errno::EINVAL) => (open(OFlag::empty())?, false),
        Err(e) => return Err(e.into()),
    };
    if !direct {
        let _ = posix_fadvise(
            fd.as_raw_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
    let mut f = File::from(fd);
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    // A file's creation time is checked after the read, with its other times (one request).
    if let Some(m) = check_meta(&f, &meta, e, sd, fs, false) {
        return Ok((0, [0; 32], Some(m), None));
    }
    let size = meta.len();
    let win = buf.window();
    let mut h = blake3::Hasher::new();
    let mut len = 0u64;
    while len < size {
        // Never asking past the size just read from the filesystem: FUSE asks the daemon for
        // the attributes again (one round trip) before a read that reaches beyond it. O_DIRECT
        // elsewhere (ext4) wants whole blocks: rounded up to ALIGN there.
        let left = (size - len).min(READ as u64) as usize;
        let want = match fs {
            TargetFs::Ntfs3g => left,
            _ => left.next_multiple_of(ALIGN),
        };
        let win = &mut win[..want];
        let k = match f.read(win) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&win[..k]);
        len += k as u64;
        progress.tick();
        // A short O_DIRECT read is the end of the file (reading again from the unaligned end
        // offset would fail with EINVAL rather than return 0).
        if k == 0 || (direct && k < win.len()) {
            break;
        }
    }
    // ntfs-3g updates the access time on read whatever O_NOATIME says (its relatime rule):
    // put the restored one back and check it stuck.
    let mtime = Time {
        sec: e.mtime,
        nsec: e.mtime_nsec,
    };
    let want = e.atime.unwrap_or(mtime);
    if let (Some(bt), TargetFs::Ntfs3g) = (e.btime, fs) {
        // All three times in one request each way (rather than stat, set, stat). Mounted
        // `noatime` (as tek mounts NTFS), the read changed nothing: one get checks them.
        // Otherwise ntfs-3g moved the access time (on nearly every read, its relatime rule),
        // and so, too, when that one get finds a difference: set all three again, check again.
        use xattr::FileExt;
        let times_ok = |f: &File| -> std::io::Result<bool> {
            let got = f.get_xattr(crate::ntfs::NTFS_TIMES)?.unwrap_or_default();
            let at = |i: usize| {
                got.get(8 * i..8 * i + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(|b| crate::ntfs::from_ntfs_time(u64::from_be_bytes(b)))
            };
            Ok(at(0).is_some_and(|t| times_close(t, bt, fs))
                && at(1).is_some_and(|t| times_close(t, mtime, fs))
                && at(2).is_some_and(|t| times_close(t, want, fs)))
        };
        if noatime && times_ok(&f)? {
            return Ok((len, *h.finalize().as_bytes(), None, None));
        }
        f.set_xattr(crate::ntfs::NTFS_TIMES, &crate::ntfs::ntfs_times(e, bt))?;
        let m = (!times_ok(&f)?)
            .then(|| "times changed by reading it back and could not be set again".into());
        let st = crate::sys::statx(&f, b"").map_err(std::io::Error::from)?;
        return Ok((len, *h.finalize().as_bytes(), m, Some(st)));
    }
    let after = f.metadata()?;
    if !times_close(atime_of(&after), want, fs) {
        let a = nix::sys::time::TimeSpec::new(want.sec, i64::from(want.nsec));
        nix::sys::stat::futimens(f.as_raw_fd(), &a, &nix::sys::time::TimeSpec::UTIME_OMIT)?;
        if !times_close(atime_of(&f.metadata()?), want, fs) {
            let m = "access time changed by reading it back and could not be set again";
            return Ok((len, *h.finalize().as_bytes(), Some(m.into()), None));
        }
        let st = crate::sys::statx(&f, b"").map_err(std::io::Error::from)?;
        return Ok((len, *h.finalize().as_bytes(), None, Some(st)));
    }
    Ok((len, *h.finalize().as_bytes(), None, None))
}

fn atime_of(m: &std::fs::Metadata) -> Time {
    use std::os::unix::fs::MetadataExt;
    Time {
        sec: m.atime(),
        nsec: m.atime_nsec() as u32,
    }
}

fn times_close(a: Time, b: Time, fs: TargetFs) -> bool {
    (ns(a) - ns(b)).abs() < i128::from(fs.time_granularity_ns())
}
