//! Coordination between concurrent imports and gc, after proxmox-backup's chunk store.
//!
//! - `store/lock` is flocked SHARED by an import while it registers itself and EXCLUSIVE by gc
//!   for its whole mark phase, so an import either registered before gc looked, or starts after
//!   gc's mark phase began.
//! - Each running import holds an exclusive flock on its marker `tmp/<uuid>.lock` for its whole
//!   life; the marker's mtime is the import's start time (same clock as chunk mtimes). gc never
//!   sweeps a chunk whose mtime is newer than the oldest live marker.
//! - Temporaries of an import live in `tmp/<uuid>/`. A marker nobody holds belongs to a crashed
//!   import; its marker and temporaries are removed by the next import or gc.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::error::StoreError;

/// A held flock on `store/lock`.
pub(crate) struct StoreLock {
    _lock: Flock<File>,
}

impl StoreLock {
    fn take(root: &Path, arg: FlockArg) -> Result<StoreLock, StoreError> {
        let path = root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("opening store lock", &path, e))?;
        let lock = Flock::lock(f, arg)
            .map_err(|(_, e)| StoreError::io("locking store", &path, e.into()))?;
        Ok(StoreLock { _lock: lock })
    }
    /// Blocks until a shared lock is held.
    pub(crate) fn shared(root: &Path) -> Result<StoreLock, StoreError> {
        Self::take(root, FlockArg::LockShared)
    }
    /// Blocks until an exclusive lock is held.
    pub(crate) fn exclusive(root: &Path) -> Result<StoreLock, StoreError> {
        Self::take(root, FlockArg::LockExclusive)
    }
}

/// A held flock on `store/manifest.lock`, taken EXCLUSIVE around every read-modify-write of a
/// manifest or its signature (an import's exists-check and commit, `set_hints`, `sign`), so two
/// processes editing one image serialize instead of one silently losing the other's change.
pub(crate) struct ManifestLock {
    _lock: Flock<File>,
}

impl ManifestLock {
    /// Blocks until the lock is held.
    pub(crate) fn take(root: &Path) -> Result<ManifestLock, StoreError> {
        let path = root.join("manifest.lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("opening manifest lock", &path, e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| StoreError::io("locking manifests", &path, e.into()))?;
        Ok(ManifestLock { _lock: lock })
    }
}

/// A registered, running import: its marker lock and its temporary directory.
pub(crate) struct ImportSession {
    _marker: Flock<File>,
    marker_path: PathBuf,
    tmp_dir: PathBuf,
}

impl ImportSession {
    /// Registers a new import (under the shared store lock) and creates its temporary directory.
    pub(crate) fn begin(root: &Path) -> Result<ImportSession, StoreError> {
        let _shared = StoreLock::shared(root)?;
        let tmp = root.join("tmp");
        let id = uuid::Uuid::new_v4().simple().to_string();
        // Create and lock under a name cleaners ignore, then rename: the flock stays on the
        // inode, so a marker is never visible under its real name without being locked.
        let new_path = tmp.join(format!("{id}.lock.new"));
        let marker_path = tmp.join(format!("{id}.lock"));
        let f = File::create(&new_path)
            .map_err(|e| StoreError::io("creating import marker", &new_path, e))?;
        let marker = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| StoreError::io("locking import marker", &new_path, e.into()))?;
        std::fs::rename(&new_path, &marker_path)
            .map_err(|e| StoreError::io("registering import", &marker_path, e))?;
        let tmp_dir = tmp.join(&id);
        std::fs::create_dir(&tmp_dir)
            .map_err(|e| StoreError::io("creating import temporary directory", &tmp_dir, e))?;
        Ok(ImportSession {
            _marker: marker,
            marker_path,
            tmp_dir,
        })
    }

    /// Where this import keeps its temporaries (same filesystem as the store, for rename).
    pub(crate) fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }
}

impl Drop for ImportSession {
    fn drop(&mut self) {
        // Whatever happened, temporaries go; committed files were renamed out already.
        let _ = std::fs::remove_dir_all(&self.tmp_dir);
        let _ = std::fs::remove_file(&self.marker_path);
    }
}

/// Start times of live imports; removes markers and temporaries of dead (crashed) imports.
pub(crate) fn scan_imports(root: &Path) -> Result<Vec<SystemTime>, StoreError> {
    let tmp = root.join("tmp");
    let rd = std::fs::read_dir(&tmp).map_err(|e| StoreError::io("reading", &tmp, e))?;
    let mut live = Vec::new();
    let mut live_ids = Vec::new();
    let mut dirs = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| StoreError::io("reading", &tmp, e))?;
        let path = ent.path();
        let name = ent.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            dirs.push((name, path));
            continue;
        }
        if !(name.ends_with(".lock") || name.ends_with(".lock.new")) {
            continue; // not a marker (gc stamp, ...)
        }
        let Ok(f) = File::open(&path) else { continue };
        let mtime = f.metadata().and_then(|m| m.modified()).ok();
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Err(_) => {
                // Held: a live import.
                if let (Some(id), Some(t)) = (name.strip_suffix(".lock"), mtime) {
                    live.push(t);
                    live_ids.push(id.to_string());
                }
            }
            Ok(_unlocked) => {
                let young = name.ends_with(".new")
                    && mtime
                        .is_some_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60));
                if !young {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    for (name, path) in dirs {
        if !live_ids.contains(&name) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_stale_imports() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("tmp")).unwrap();
        let s = ImportSession::begin(d.path()).unwrap();
        std::fs::write(s.tmp_dir().join("chunk"), b"x").unwrap();
        // A crashed import: marker nobody holds, plus its temporaries.
        std::fs::write(d.path().join("tmp/dead.lock"), b"").unwrap();
        std::fs::create_dir(d.path().join("tmp/dead")).unwrap();
        std::fs::write(d.path().join("tmp/dead/c"), b"x").unwrap();
        let live = scan_imports(d.path()).unwrap();
        assert_eq!(live.len(), 1);
        assert!(s.tmp_dir().join("chunk").exists());
        assert!(!d.path().join("tmp/dead").exists());
        assert!(!d.path().join("tmp/dead.lock").exists());
        let dir = s.tmp_dir().to_path_buf();
        drop(s);
        assert!(!dir.exists());
        assert!(scan_imports(d.path()).unwrap().is_empty());
    }
}
