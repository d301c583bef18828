//! Garbage collection and store statistics.
//!
//! Safe against concurrent imports, after proxmox-backup's chunk store:
//! 1. gc takes `store/lock` EXCLUSIVE, so no import can register meanwhile, and stamps its start
//!    time `T_gc` by touching `tmp/gc.stamp` (the kernel's clock, the same that stamps chunks).
//! 2. It reads the start times of live imports (mtimes of the `tmp/<uuid>.lock` markers they hold
//!    locked; dead markers are cleaned) and computes `cutoff = min(T_gc, oldest live import) -
//!    min_age`.
//! 3. Mark: it parses every manifest and collects the referenced chunk ids (a manifest that does
//!    not parse aborts gc: its chunks cannot be known). Then it releases the lock.
//! 4. Sweep: a chunk is removed only if no manifest references it AND its mtime is older than the
//!    cutoff. Every import touches (sets mtime to now) each chunk it reuses and writes new ones, so
//!    all chunks a running import relies on are newer than its start, hence than the cutoff.
//!    An import that touches a chunk at the very moment gc removes it is caught by removing in two
//!    steps: rename to `.gc`, re-read the mtime, and rename back if it was touched in between (a
//!    touch after the rename finds no file and makes the import write the chunk itself).
//!
//! Quarantined `.bad` files are never removed by gc.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::chunk::ChunkId;
use crate::error::StoreError;
use crate::lock::{self, StoreLock};
use crate::manifest::Extent;
use crate::store::Store;

/// gc settings.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Only report what would be removed.
    pub dry_run: bool,
    /// Extra safety margin before the cutoff (clock steps, coarse timestamps).
    pub min_age: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            min_age: Duration::from_secs(300),
        }
    }
}

/// What gc did (or would do).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// Chunks referenced by a manifest.
    pub referenced: u64,
    /// Unreferenced chunks removed (or that would be).
    pub removed: u64,
    /// Their compressed bytes.
    pub removed_bytes: u64,
    /// Unreferenced chunks kept because they are newer than the cutoff.
    pub kept_recent: u64,
    /// Quarantined `.bad` chunk files present (never removed).
    pub quarantined: u64,
    /// Live imports seen.
    pub live_imports: u64,
}

/// Store-wide statistics.
#[derive(Debug, Default, Serialize)]
pub struct StoreStats {
    /// Number of images.
    pub images: u64,
    /// Sum of the images' logical sizes.
    pub logical_bytes: u64,
    /// Sum of the images' chunk extents (non-hole bytes), counting shared chunks once per use.
    pub data_bytes: u64,
    /// Uncompressed bytes of the distinct referenced chunks.
    pub unique_bytes: u64,
    /// Compressed bytes of all chunk files on disk.
    pub stored_bytes: u64,
    /// Chunk files on disk.
    pub chunks: u64,
    /// Quarantined chunk files.
    pub quarantined: u64,
    /// `data_bytes / unique_bytes`.
    pub dedup_ratio: f64,
    /// `logical_bytes / stored_bytes`.
    pub total_ratio: f64,
}

fn chunk_files(store: &Store) -> Result<Vec<(std::path::PathBuf, String)>, StoreError> {
    let dir = store.root().join("chunks");
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&dir).map_err(|e| StoreError::io("listing", &dir, e))?;
    for sub in rd.flatten() {
        let Ok(rd2) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for f in rd2.flatten() {
            out.push((f.path(), f.file_name().to_string_lossy().into_owned()));
        }
    }
    Ok(out)
}

impl Store {
    /// Ids (and lengths) of every chunk referenced by any manifest; fails on any bad manifest.
    fn referenced(&self) -> Result<(HashMap<ChunkId, u64>, StoreStats), StoreError> {
        let mut refs = HashMap::new();
        let mut st = StoreStats::default();
        for r in self.list()? {
            let m = match self.load_manifest(&r) {
                Ok((m, _)) => m,
                // Removed since the listing (`tek image rm`, a cache eviction): nothing needs
                // its chunks, and a manifest committed since has its chunks touched by its
                // import, newer than the cutoff.
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            st.images += 1;
            st.logical_bytes += m.size;
            for e in &m.extents {
                if let Extent::Chunk { id, len, .. } = e {
                    st.data_bytes += len;
                    refs.insert(*id, *len);
                }
            }
        }
        st.unique_bytes = refs.values().sum();
        Ok((refs, st))
    }

    /// Removes chunks no manifest references (see the module docs for why this is safe while
    /// imports run).
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, StoreError> {
        let guard = StoreLock::exclusive(self.root())?;
        let stamp = self.root().join("tmp").join("gc.stamp");
        let _ = std::fs::remove_file(&stamp); // a fresh inode: its mtime is now
        let t_gc = std::fs::File::create(&stamp)
            .and_then(|f| f.metadata())
            .and_then(|m| m.modified())
            .map_err(|e| StoreError::io("stamping gc start", &stamp, e))?;
        let live = lock::scan_imports(self.root())?;
        let oldest = live.iter().copied().min().unwrap_or(t_gc).min(t_gc);
        let cutoff = oldest
            .checked_sub(opts.min_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let (refs, _) = self.referenced()?;
        drop(guard);

        let mut rep = GcReport {
            dry_run: opts.dry_run,
            referenced: refs.len() as u64,
            live_imports: live.len() as u64,
            ..GcReport::default()
        };
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        for (path, name) in chunk_files(self)? {
            if name.ends_with(".zst.bad") {
                rep.quarantined += 1;
                continue;
            }
            let Some(hex) = name.strip_suffix(".zst") else {
                // A `.gc` left by an interrupted gc is unreferenced by construction.
                if name.ends_with(".zst.gc") && !opts.dry_run {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            };
            let Ok(id) = ChunkId::from_hex(hex) else {
                continue;
            };
            if refs.contains_key(&id) {
                continue;
            }
            let (Some(t), Ok(meta)) = (mtime(&path), std::fs::metadata(&path)) else {
                continue;
            };
            if t >= cutoff {
                rep.kept_recent += 1;
                continue;
            }
            if !opts.dry_run {
                let doomed = path.with_extension("zst.gc");
                if std::fs::rename(&path, &doomed).is_err() {
                    continue;
                }
                if mtime(&doomed).is_some_and(|t| t >= cutoff) {
                    // Touched by an import between our stat and the rename: it is in use.
                    let _ = std::fs::rename(&doomed, &path);
                    rep.kept_recent += 1;
                    continue;
                }
                std::fs::remove_file(&doomed)
                    .map_err(|e| StoreError::io("removing chunk", &doomed, e))?;
            }
            rep.removed += 1;
            rep.removed_bytes += meta.len();
        }
        Ok(rep)
    }

    /// Store statistics: logical, stored and unique bytes, chunk count, dedup ratio.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (_, mut st) = self.referenced()?;
        for (path, name) in chunk_files(self)? {
            if name.ends_with(".zst.bad") {
                st.quarantined += 1;
            } else if name.ends_with(".zst") {
                st.chunks += 1;
                st.stored_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        st.dedup_ratio = ratio(st.data_bytes, st.unique_bytes);
        st.total_ratio = ratio(st.logical_bytes, st.stored_bytes);
        Ok(st)
    }
}

/// A set of chunk ids (re-exported for callers of [`Store::verify`]).
pub type ChunkSet = HashSet<ChunkId>;
