//! A new chunk's file before it gets its name, shared by imports (`import/worker.rs`) and
//! pulls (`receive.rs`): both write a chunk's bytes, make a whole batch durable with one
//! `syncfs`, and only then name the batch's files, so a chunk name never exists with torn
//! content.

use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::fsutil;

/// A new chunk's file, written and not yet named.
pub(crate) enum Pending {
    /// Unnamed (`O_TMPFILE`) in its final directory, kept open until linked. Creating it locks
    /// no shared directory (four workers creating named files in one temporary directory
    /// contended on its lock: `rwsem_spin_on_owner` was 7% of the import's CPU), naming it is
    /// one `linkat` instead of a cross-directory rename, and a crash leaves nothing behind.
    Anon(std::fs::File),
    /// Named, under the session's temporary directory (filesystems without `O_TMPFILE`, or
    /// when out of file descriptors).
    Named(PathBuf),
}

impl Pending {
    /// Gives the file its name `path` in the store (after the `syncfs` that made its bytes
    /// durable). If the name exists, another import or pull stored the same chunk meanwhile
    /// (complete: it names chunks only after its own `syncfs`): it is touched for gc like any
    /// reused chunk, and if gc removed it in between, ours is named after all.
    pub(crate) fn name(self, path: &Path) -> Result<(), StoreError> {
        let dir = path.parent().expect("chunk path has a parent");
        match self {
            Pending::Anon(f) => match fsutil::link_tmpfile(&f, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !fsutil::touch(path)? {
                        fsutil::link_tmpfile(&f, path)
                            .map_err(|e| StoreError::io("storing chunk", path, e))?;
                    }
                    Ok(())
                }
                Err(e) => Err(StoreError::io("storing chunk", path, e)),
            },
            Pending::Named(tmp) => match std::fs::rename(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("creating", dir, e))?;
                    std::fs::rename(&tmp, path)
                        .map_err(|e| StoreError::io("storing chunk", path, e))
                }
                Err(e) => Err(StoreError::io("storing chunk", path, e)),
            },
        }
    }
}

/// True if this filesystem and system can store chunks as unnamed files: `O_TMPFILE` works in
/// `dir` and `/proc/self/fd` can name them.
pub(crate) fn tmpfile_works(dir: &Path) -> bool {
    let probe = dir.join("tmpfile-probe");
    let ok = fsutil::open_tmpfile(dir).is_ok_and(|f| fsutil::link_tmpfile(&f, &probe).is_ok());
    let _ = std::fs::remove_file(&probe);
    ok
}

/// An unnamed file in `dir` (created if missing), or None to fall back to a named temporary
/// (no `O_TMPFILE` here, or out of descriptors).
pub(crate) fn open_anon(dir: &Path) -> Option<std::fs::File> {
    match fsutil::open_tmpfile(dir) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).ok()?;
            fsutil::open_tmpfile(dir).ok()
        }
        Err(_) => None,
    }
}

/// How many unnamed chunk files a batch may hold open: `want`, or fewer if open files are
/// limited (each holds a descriptor until its batch is named; half the limit is left for the
/// rest of the process).
pub(crate) fn batch_limit(want: usize) -> usize {
    let fd_limit = fsutil::raise_fd_limit(65536);
    (fd_limit.saturating_sub(256) / 2).clamp(64, want as u64) as usize
}
