//! Read-back verification after a restore: every restored file is read again from the device
//! (its clean, just-synced pages dropped first) and its BLAKE3 compared with the manifest;
//! directories, hard links and symlinks are checked to exist (symlinks: same target).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use nix::fcntl::{OFlag, PosixFadviseAdvice, posix_fadvise};

use crate::manifest::{Entry, EntryKind};
use crate::sys::open_beneath;

/// Totals of a read-back pass.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    /// Entries found equal.
    pub entries: u64,
    /// File bytes found equal.
    pub bytes: u64,
    /// (entry number, what differs), in entry order.
    pub mismatches: Vec<(u64, String)>,
}

/// Checks every entry `entries` yields (numbered in manifest order; skipped kinds are passed
/// over) beneath `root`. Files are read by a few threads: hashing is CPU-bound and the reads of
/// small files are latency-bound, so both gain from overlap; the rest is checked inline.
pub(crate) fn verify<E>(
    root: &File,
    mut entries: impl FnMut() -> Result<Option<Entry>, E>,
) -> Result<Verified, E> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    let (tx, rx) = crossbeam_channel::bounded::<(u64, Entry)>(256);
    let out = Mutex::new(Verified::default());
    std::thread::scope(|s| -> Result<(), E> {
        for _ in 0..workers {
            let rx = rx.clone();
            let out = &out;
            s.spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                for (n, e) in rx {
                    let r = match read_back(root, &e.path, &mut buf) {
                        Ok((len, h)) if len == e.size && h == e.blake3 => Ok(()),
                        Ok(_) => Err("content differs".to_string()),
                        Err(err) => Err(format!("cannot read back ({err})")),
                    };
                    let mut g = out.lock().expect("verify results");
                    match r {
                        Ok(()) => {
                            g.entries += 1;
                            g.bytes += e.size;
                        }
                        Err(m) => g.mismatches.push((n, m)),
                    }
                }
            });
        }
        drop(rx);
        let mut n = 0u64;
        while let Some(e) = entries()? {
            let this = n;
            n += 1;
            let ok = match e.kind {
                EntryKind::File => {
                    let _ = tx.send((this, e));
                    continue;
                }
                EntryKind::Symlink => symlink_matches(root, &e),
                EntryKind::Dir => exists(root, &e.path, OFlag::O_DIRECTORY),
                EntryKind::Hardlink => exists(root, &e.path, OFlag::O_PATH),
                _ => continue,
            };
            let mut g = out.lock().expect("verify results");
            if ok {
                g.entries += 1;
            } else {
                let what = match e.kind {
                    EntryKind::Symlink => "symlink differs",
                    _ => "missing",
                };
                g.mismatches.push((this, what.to_string()));
            }
        }
        drop(tx);
        Ok(())
    })?;
    let mut v = out.into_inner().expect("verify results");
    v.mismatches.sort();
    Ok(v)
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

/// Reads a restored file back from the device: drop its (clean, just synced) pages first.
fn read_back(root: &File, path: &[u8], buf: &mut [u8]) -> Result<(u64, [u8; 32]), std::io::Error> {
    // O_NOATIME: verifying must not change the access times just restored (and must not dirty
    // 20k inodes again). Allowed to the owner and to CAP_FOWNER; fall back without it.
    let fd = open_beneath(root, path, OFlag::O_RDONLY | OFlag::O_NOATIME, 0)
        .or_else(|_| open_beneath(root, path, OFlag::O_RDONLY, 0))?;
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
        let k = match f.read(buf) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        len += k as u64;
    }
    Ok((len, *h.finalize().as_bytes()))
}
