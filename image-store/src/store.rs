//! The store on disk: layout, manifests and their signatures, chunk files, and the reading API
//! the imager uses.
//!
//! ```text
//! store/
//!   store.json                   {"format":"tek-store","version":1}
//!   lock                         flock: shared by registering imports, exclusive by gc mark
//!   chunks/ab/abcdef....zst      zstd frame of the chunk whose BLAKE3 is abcdef... (hex)
//!   chunks/ab/abcdef....zst.bad  a chunk found corrupt (quarantined, never deleted by tek)
//!   images/NAME/VERSION.json     manifest (written last)
//!   images/NAME/VERSION.sig      optional ed25519 signature over the manifest bytes
//!   tmp/<uuid>.lock, tmp/<uuid>/ running imports' markers and temporaries
//! ```
//! Everything but `lock` and `tmp/` is plain files addressed by name or hash, so a store can be
//! served read-only over HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::arrivals::Arrivals;
use crate::chunk::{ChunkId, CompressedChunk};
use crate::error::{ChunkUse, StoreError};
use crate::fsutil;
use crate::image_ref::ImageRef;
use crate::manifest::{Extent, MANIFEST_FORMAT, MANIFEST_FORMAT_MIN, Manifest};
use crate::signature::{self, SignatureStatus};

/// Version of the store layout (`store.json`).
pub const STORE_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct StoreInfo {
    format: String,
    version: u32,
}

/// A manifest as loaded, with its hash and signature status.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// BLAKE3 hex of the manifest file's bytes.
    pub manifest_hash: String,
    /// Whether it is signed by a trusted key.
    pub signature: SignatureStatus,
}

/// A chunk a manifest names that the store cannot supply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbsentChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Its first offset in the image.
    pub offset: u64,
    /// True when a `.bad` file stands in its place (found corrupt and moved aside).
    pub quarantined: bool,
}

/// How many absent chunks [`describe_absent`] names before it only counts.
pub const ABSENT_NAMED: usize = 5;

/// One line about absent chunks: the count, how many are quarantined, the first few with offsets.
pub fn describe_absent(absent: &[AbsentChunk]) -> String {
    let quarantined = absent.iter().filter(|a| a.quarantined).count();
    let noun = if absent.len() == 1 { "chunk" } else { "chunks" };
    let mut s = format!("{} {noun} not in the store", absent.len());
    if quarantined > 0 {
        s.push_str(&format!(" ({quarantined} quarantined as corrupt)"));
    }
    let named: Vec<String> = absent
        .iter()
        .take(ABSENT_NAMED)
        .map(|a| {
            format!(
                "{} at offset {}{}",
                a.id,
                a.offset,
                if a.quarantined { " (quarantined)" } else { "" }
            )
        })
        .collect();
    s.push_str(": ");
    s.push_str(&named.join(", "));
    if absent.len() > ABSENT_NAMED {
        s.push_str(&format!(" and {} more", absent.len() - ABSENT_NAMED));
    }
    s
}

/// An opened image store.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) root: PathBuf,
    /// Chunks an on-demand pull is still fetching: readers wait for them (`arrivals.rs`).
    pub(crate) arrivals: Option<Arc<Arrivals>>,
}

impl Store {
    /// Opens the store at `root`, creating the layout if missing; refuses unknown layout versions.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for sub in ["chunks", "images", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| StoreError::io("creating store", &p, e))?;
        }
        let info_path = root.join("store.json");
        match std::fs::read(&info_path) {
            Ok(bytes) => {
                let info: StoreInfo =
                    serde_json::from_slice(&bytes).map_err(|e| parse_error(&info_path, &e))?;
                if info.format != "tek-store" || info.version != STORE_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        path: info_path,
                        found: info.version,
                        supported: STORE_VERSION,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let info = StoreInfo {
                    format: "tek-store".into(),
                    version: STORE_VERSION,
                };
                // A name of this writer's own: two first imports racing each write the same
                // bytes; with one shared temporary name the loser's rename found it gone.
                static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tmp = root
                    .join("tmp")
                    .join(format!("store.json.{}.{n}.new", std::process::id()));
                let data = serde_json::to_vec_pretty(&info).expect("serializing store info");
                fsutil::write_atomic(&tmp, &info_path, &data)?;
            }
            Err(e) => return Err(StoreError::io("reading", &info_path, e)),
        }
        Ok(Store {
            root: root.to_path_buf(),
            arrivals: None,
        })
    }

    /// This store, read by a reader that waits for the chunks `arrivals` names instead of
    /// finding them missing (the imager writing an image while it is being pulled).
    pub fn with_arrivals(&self, arrivals: Arc<Arrivals>) -> Store {
        Store {
            root: self.root.clone(),
            arrivals: Some(arrivals),
        }
    }

    /// This store without arrivals: what is in it now, nothing that is coming.
    pub(crate) fn plain(&self) -> Store {
        Store {
            root: self.root.clone(),
            arrivals: None,
        }
    }

    /// The pull's checked copy of chunk `id` of `len` bytes, if its arrivals hold one
    /// (`arrivals.rs`, the hand-over): taken, so it serves one reader.
    pub(crate) fn take_checked(&self, id: ChunkId, len: u64) -> Option<crate::VerifiedChunk> {
        let copy = self.arrivals.as_ref()?.take_checked(id)?;
        (copy.id() == id && copy.len() == len).then_some(copy)
    }

    /// Whether `id` is on its way into the store (see [`Store::with_arrivals`]).
    fn coming(&self, id: ChunkId) -> bool {
        self.arrivals.as_ref().is_some_and(|a| a.is_coming(id))
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a chunk's file lives.
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root
            .join("chunks")
            .join(&hex[..2])
            .join(format!("{hex}.zst"))
    }

    /// Where an image's manifest lives.
    pub fn manifest_path(&self, image: &ImageRef) -> PathBuf {
        self.root
            .join("images")
            .join(&image.name)
            .join(format!("{}.json", image.version))
    }

    /// Where an image's signature lives.
    pub fn signature_path(&self, image: &ImageRef) -> PathBuf {
        self.root
            .join("images")
            .join(&image.name)
            .join(format!("{}.sig", image.version))
    }

    /// True if the image has a manifest.
    pub fn exists(&self, image: &ImageRef) -> bool {
        self.manifest_path(image).is_file()
    }

    /// Reads and parses a manifest, returning it with its exact bytes.
    pub fn load_manifest(&self, image: &ImageRef) -> Result<(Manifest, Vec<u8>), StoreError> {
        let path = self.manifest_path(image);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    image: image.to_string(),
                });
            }
            Err(e) => return Err(StoreError::io("reading manifest", &path, e)),
        };
        let m = parse_manifest(&path, &bytes)?;
        if m.name != image.name || m.version != image.version {
            return Err(StoreError::InconsistentManifest {
                path,
                reason: format!("it names {}@{}", m.name, m.version),
            });
        }
        Ok((m, bytes))
    }

    /// Loads a manifest and checks its signature against the trusted keys directory.
    pub fn load(&self, image: &ImageRef, trusted_keys: &Path) -> Result<LoadedImage, StoreError> {
        let (manifest, bytes) = self.load_manifest(image)?;
        let sig_path = self.signature_path(image);
        let sig = match std::fs::read(&sig_path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("reading signature", &sig_path, e)),
        };
        let signature = signature::check(&bytes, sig.as_deref(), trusted_keys)?;
        Ok(LoadedImage {
            manifest,
            manifest_hash: blake3::hash(&bytes).to_hex().to_string(),
            signature,
        })
    }

    /// Every image in the store, sorted.
    pub fn list(&self) -> Result<Vec<ImageRef>, StoreError> {
        let images = self.root.join("images");
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&images).map_err(|e| StoreError::io("listing", &images, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| StoreError::io("listing", &images, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let dir = ent.path();
            let Ok(rd2) = std::fs::read_dir(&dir) else {
                continue;
            };
            for f in rd2.flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                if let Some(version) = fname.strip_suffix(".json") {
                    // Skip anything that is not a well-formed reference (stray files).
                    if let Ok(r) = ImageRef::new(&name, version) {
                        out.push(r);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads one chunk file as stored (no decompression). Missing or unreadable chunk files give an
    /// error naming the chunk id and the image offset.
    pub fn read_compressed(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
    ) -> Result<CompressedChunk, StoreError> {
        let path = self.chunk_path(id);
        let mut read = std::fs::read(&path);
        while let (Err(e), Some(a)) = (&read, &self.arrivals) {
            if e.kind() != std::io::ErrorKind::NotFound || !a.expected(id) {
                break;
            }
            let wait = a.wait(id);
            let staged = wait.map_err(|reason| crate::arrivals::not_fetched(id, offset, reason))?;
            read = match staged {
                Some(bytes) => Ok(bytes.to_vec()),
                None => std::fs::read(&path),
            };
        }
        match read {
            Ok(data) => Ok(CompressedChunk {
                id,
                offset,
                len,
                data,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::MissingChunk {
                chunk: id,
                offset,
                path,
            }),
            Err(e) => Err(StoreError::CorruptChunk {
                chunk: id,
                offset,
                reason: format!("reading {}: {e}", path.display()),
            }),
        }
    }

    /// Every chunk of `manifest` whose file is not in the store, in image order, each once: one
    /// `stat` per distinct chunk, nothing read. A `.bad` file in its place marks it quarantined.
    /// Other stat errors (permissions, I/O) are errors: "present" must not be guessed.
    pub fn absent_chunks(&self, manifest: &Manifest) -> Result<Vec<AbsentChunk>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in &manifest.extents {
            let Extent::Chunk { offset, id, .. } = *e else {
                continue;
            };
            if !seen.insert(id) || self.coming(id) {
                continue;
            }
            let path = self.chunk_path(id);
            // Followed (a chunk may be a link into a cache); anything but a directory counts,
            // since reading it is what checks it.
            match std::fs::metadata(&path) {
                Ok(md) if !md.is_dir() => {}
                Ok(_) => out.push(AbsentChunk {
                    id,
                    offset,
                    quarantined: false,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(AbsentChunk {
                    id,
                    offset,
                    quarantined: path.with_extension("zst.bad").exists(),
                }),
                Err(e) => return Err(StoreError::io("looking for chunk", &path, e)),
            }
        }
        Ok(out)
    }

    /// Moves a chunk found corrupt to a `.bad` name (never deletes it).
    pub fn quarantine(&self, id: ChunkId) -> Result<(), StoreError> {
        self.quarantine_path(id).map(|_| ())
    }

    /// Like [`Store::quarantine`], returning the `.bad` path (None if the chunk file was absent).
    pub fn quarantine_path(&self, id: ChunkId) -> Result<Option<PathBuf>, StoreError> {
        let path = self.chunk_path(id);
        let bad = path.with_extension("zst.bad");
        match std::fs::rename(&path, &bad) {
            Ok(()) => Ok(Some(bad)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("quarantining chunk", &path, e)),
        }
    }

    /// Every image that uses `id`, with the chunk's offset in each (for error reports).
    pub fn chunk_uses(&self, id: ChunkId) -> Vec<ChunkUse> {
        let mut out = Vec::new();
        for r in self.list().unwrap_or_default() {
            let Ok((m, _)) = self.load_manifest(&r) else {
                continue;
            };
            for e in &m.extents {
                if let Extent::Chunk { offset, id: c, .. } = e
                    && *c == id
                {
                    out.push(ChunkUse {
                        image: r.to_string(),
                        offset: *offset,
                    });
                }
            }
        }
        out
    }

    /// Turns a per-chunk integrity error into [`StoreError::BadChunk`]: quarantines the chunk
    /// (if its file exists) and names every image using it. Other errors pass through.
    pub fn report_bad_chunk(&self, err: StoreError) -> StoreError {
        let Some((chunk, _)) = err.bad_chunk() else {
            return err;
        };
        let quarantined = match &err {
            StoreError::MissingChunk { path, .. } => {
                Some(path.with_extension("zst.bad")).filter(|b| b.exists())
            }
            _ => self.quarantine_path(chunk).ok().flatten(),
        };
        StoreError::BadChunk {
            chunk,
            reason: err.to_string(),
            quarantined,
            used_by: self.chunk_uses(chunk),
        }
    }
}

fn parse_error(path: &Path, e: &serde_json::Error) -> StoreError {
    StoreError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    }
}

/// Parses manifest bytes: format version first (so a newer manifest says "unsupported" rather
/// than "unknown field"), then the full structure, then its invariants.
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, StoreError> {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let m: Manifest = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => {
            if let Ok(f) = serde_json::from_slice::<FormatOnly>(bytes)
                && !(MANIFEST_FORMAT_MIN..=MANIFEST_FORMAT).contains(&f.format)
            {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found: f.format,
                    supported: MANIFEST_FORMAT,
                });
            }
            return Err(parse_error(path, &e));
        }
    };
    if !(MANIFEST_FORMAT_MIN..=MANIFEST_FORMAT).contains(&m.format) {
        return Err(StoreError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: m.format,
            supported: MANIFEST_FORMAT,
        });
    }
    if m.format == 1 && m.audit.is_some() {
        return Err(StoreError::InconsistentManifest {
            path: path.to_path_buf(),
            reason: "a format-1 manifest with an audit (format 2 added it)".into(),
        });
    }
    let mut at = 0u64;
    for (i, e) in m.extents.iter().enumerate() {
        if e.offset() != at || e.is_empty() {
            return Err(StoreError::InconsistentManifest {
                path: path.to_path_buf(),
                reason: format!(
                    "extent {i} at offset {} length {} (expected offset {at}, non-empty)",
                    e.offset(),
                    e.len()
                ),
            });
        }
        // Checked: extents claiming more than 2^64 bytes in all must not wrap around to
        // match a small `size`.
        at = at
            .checked_add(e.len())
            .ok_or_else(|| StoreError::InconsistentManifest {
                path: path.to_path_buf(),
                reason: format!("extent {i} ends past 2^64 bytes"),
            })?;
    }
    if at != m.size {
        return Err(StoreError::InconsistentManifest {
            path: path.to_path_buf(),
            reason: format!("extents cover {at} bytes but size is {}", m.size),
        });
    }
    // A manifest edited in the store (or signed with a bad hint) must not reach the agent.
    if let Some(p) = &m.hints.data_path {
        crate::manifest::check_data_path(p).map_err(|r| StoreError::InconsistentManifest {
            path: path.to_path_buf(),
            reason: format!("hint data_path: {r}"),
        })?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Hints;

    fn manifest_with(store: &Store, chunks: &[&[u8]]) -> Manifest {
        let mut extents = Vec::new();
        let mut at = 0;
        for data in chunks {
            let id = ChunkId::of(data);
            let p = store.chunk_path(id);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, zstd::bulk::compress(data, 1).unwrap()).unwrap();
            extents.push(Extent::Chunk {
                offset: at,
                len: data.len() as u64,
                id,
            });
            at += data.len() as u64;
        }
        Manifest {
            format: MANIFEST_FORMAT,
            audit: None,
            scrubbed: None,
            name: "t".into(),
            version: "1".into(),
            size: at,
            sha256: String::new(),
            blake3: String::new(),
            created: String::new(),
            chunking: serde_json::from_value(
                serde_json::json!({"algorithm":"fixed","min":1,"avg":1,"max":1}),
            )
            .unwrap(),
            extents,
            gpt: None,
            hints: Hints::default(),
        }
    }

    #[test]
    fn absent_chunks_are_found_by_stat_and_quarantine_is_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let chunks: Vec<Vec<u8>> = (1..=8u8).map(|i| vec![i; 1000]).collect();
        let mut refs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
        refs.push(&chunks[2]); // used twice: reported once
        let m = manifest_with(&store, &refs);
        assert!(store.absent_chunks(&m).unwrap().is_empty());
        let id = |i: usize| ChunkId::of(&chunks[i]);
        std::fs::remove_file(store.chunk_path(id(2))).unwrap();
        store.quarantine(id(5)).unwrap();
        for i in [6, 7] {
            std::fs::remove_file(store.chunk_path(id(i))).unwrap();
        }
        let a = store.absent_chunks(&m).unwrap();
        assert_eq!(
            a.iter()
                .map(|a| (a.id, a.offset, a.quarantined))
                .collect::<Vec<_>>(),
            vec![
                (id(2), 2000, false),
                (id(5), 5000, true),
                (id(6), 6000, false),
                (id(7), 7000, false)
            ]
        );
        let line = describe_absent(&a);
        assert!(line.starts_with("4 chunks not in the store (1 quarantined as corrupt): "));
        assert!(line.contains(&format!("{} at offset 5000 (quarantined)", id(5))));
        let many: Vec<AbsentChunk> = std::iter::repeat_n(a[0].clone(), 9).collect();
        assert!(describe_absent(&many).ends_with(" and 4 more"));
    }
}
