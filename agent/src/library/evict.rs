//! The local store as the library's cache: after a pull, while the store's chunk files take more
//! than `[library] cache_max_bytes`, the least recently used images are evicted (manifest and
//! signature removed, then `gc` sweeps the chunks no other image uses).
//!
//! - Last use: a job that writes an image touches `<state>/library/last-used/NAME@VERSION`
//!   ([`mark_used`]); an image no job used yet counts from when its manifest was stored.
//! - Never evicted: an image an unfinished (queued, claimed, running, interrupted) job uses, one
//!   being written in this process, the image just pulled, and any image the library does not
//!   hold with the same manifest (it could not be fetched again).
//! - Safe against `tek image gc` and concurrent pulls: removal takes the store's manifest lock and
//!   the sweep is the store's own gc, which never removes a chunk a live import or pull touched
//!   (`image-store/src/lock.rs`, `gc.rs`). A queued job added after the pins were read whose
//!   image is evicted fetches it again when its disk arrives.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use image_library::Remote;
use image_store::{ChunkId, Extent, GcOptions, ImageRef, Store};
use serde::Serialize;

/// One evicted image.
#[derive(Debug, Clone, Serialize)]
pub struct Evicted {
    /// The image.
    pub image: ImageRef,
    /// Compressed bytes of the chunks only it used (freed by the sweep).
    pub freed_bytes: u64,
}

/// What an eviction pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Eviction {
    /// Chunk bytes the store's images used before.
    pub before_bytes: u64,
    /// And after.
    pub after_bytes: u64,
    /// Evicted, least recently used first.
    pub evicted: Vec<Evicted>,
    /// Over the limit still, with these images kept (pinned or not in the library).
    pub kept: Vec<String>,
}

/// Where last-use marks live.
pub fn used_dir(state: &Path) -> PathBuf {
    state.join("library").join("last-used")
}

/// Records that a job uses `image` now.
pub fn mark_used(state: &Path, image: &ImageRef) -> Result<()> {
    let dir = used_dir(state);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(image.to_string());
    std::fs::write(&p, b"").with_context(|| format!("marking {image} used ({})", p.display()))
}

fn last_used(store: &Store, state: &Path, image: &ImageRef) -> SystemTime {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    mtime(&used_dir(state).join(image.to_string()))
        .or_else(|| mtime(&store.manifest_path(image)))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Images that unfinished jobs in the journal use.
pub fn pinned_by_jobs(jobs_dir: &Path) -> Result<HashSet<ImageRef>> {
    let journal = crate::job::journal::Journal::open(jobs_dir)?;
    Ok(journal
        .load_all()
        .context("reading the job journal")?
        .into_iter()
        .filter(|j| !j.state.is_terminal())
        .filter_map(|j| j.image.parse().ok())
        .collect())
}

/// Evicts least recently used images until the store's chunks take at most `max` bytes (see
/// the module docs); `pinned` (images unfinished jobs use) and `just` (the image just pulled)
/// are never evicted. Each eviction is audited by the caller from the result.
pub fn evict(
    store: &Store,
    state: &Path,
    remote: &Remote,
    trusted_keys: &Path,
    max: u64,
    pinned: &HashSet<ImageRef>,
    just: &ImageRef,
) -> Result<Eviction> {
    let mut uses: HashMap<ImageRef, HashSet<ChunkId>> = HashMap::new();
    for r in store.list()? {
        let m = match store.load_manifest(&r) {
            Ok((m, _)) => m,
            Err(image_store::StoreError::NotFound { .. }) => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        let ids = m.extents.iter().filter_map(|e| match e {
            Extent::Chunk { id, .. } => Some(*id),
            Extent::Hole { .. } => None,
        });
        uses.insert(r, ids.collect());
    }
    let mut sizes: HashMap<ChunkId, u64> = HashMap::new();
    for id in uses.values().flatten() {
        if !sizes.contains_key(id) {
            let n = std::fs::metadata(store.chunk_path(*id)).map_or(0, |m| m.len());
            sizes.insert(*id, n);
        }
    }
    let mut total: u64 = sizes.values().sum();
    let mut out = Eviction {
        before_bytes: total,
        ..Eviction::default()
    };
    let mut order: Vec<(SystemTime, ImageRef)> = uses
        .keys()
        .map(|r| (last_used(store, state, r), r.clone()))
        .collect();
    order.sort();
    for (_, r) in order {
        if total <= max {
            break;
        }
        if &r == just {
            out.kept.push(format!("{r} (just pulled)"));
            continue;
        }
        if pinned.contains(&r) {
            out.kept.push(format!("{r} (an unfinished job uses it)"));
            continue;
        }
        if let Err(why) = refetchable(store, remote, trusted_keys, &r) {
            out.kept.push(format!("{r} ({why})"));
            continue;
        }
        let mine = uses.remove(&r).unwrap_or_default();
        let others: HashSet<&ChunkId> = uses.values().flatten().collect();
        let freed: u64 = mine
            .iter()
            .filter(|id| !others.contains(id))
            .map(|id| sizes.get(id).copied().unwrap_or(0))
            .sum();
        store
            .remove(&r)
            .with_context(|| format!("evicting {r} from the store"))?;
        total -= freed;
        out.evicted.push(Evicted {
            image: r,
            freed_bytes: freed,
        });
    }
    out.after_bytes = total;
    if !out.evicted.is_empty() {
        // The store's own sweep: chunks a live pull or import touched are newer than its cutoff
        // and stay. A second of margin instead of gc's default five minutes, since the chunks
        // to free were typically fetched minutes ago.
        let opts = GcOptions {
            dry_run: false,
            min_age: Duration::from_secs(1),
        };
        store.gc(&opts).context("sweeping evicted images' chunks")?;
    }
    Ok(out)
}

/// Ok when the library holds `image` with the manifest the store has (so it can be pulled
/// again), else why not.
fn refetchable(
    store: &Store,
    remote: &Remote,
    trusted_keys: &Path,
    image: &ImageRef,
) -> Result<(), String> {
    let local = store.load(image, trusted_keys).map_err(|e| e.to_string())?;
    match image_library::fetch_checked(remote, image, trusted_keys) {
        Ok(r) if r.manifest_hash == local.manifest_hash => Ok(()),
        Ok(_) => Err(format!("the library's {image} differs from it")),
        Err(e) => Err(format!("not re-fetchable from {}: {e}", remote.url())),
    }
}

/// After a pull of `just`: evicts past `max` (pins: unfinished jobs' images, and `just`) and
/// appends an `image_evicted` audit entry per evicted image.
pub fn after_pull(
    store: &Store,
    depot: &crate::Depot,
    remote: &Remote,
    max: u64,
    just: &ImageRef,
    audit: &client_data::AuditLog,
) -> Result<Eviction> {
    let pinned = pinned_by_jobs(&depot.jobs())?;
    let out = evict(
        store,
        depot.root(),
        remote,
        depot.trusted_keys(),
        max,
        &pinned,
        just,
    )?;
    for e in &out.evicted {
        audit
            .append(client_data::AuditEvent::ImageEvicted {
                image: e.image.name.clone(),
                version: e.image.version.clone(),
                freed_bytes: e.freed_bytes,
            })
            .with_context(|| format!("auditing the eviction of {}", e.image))?;
        tracing::info!(image = %e.image, freed = e.freed_bytes, "evicted from the image cache");
    }
    Ok(out)
}
