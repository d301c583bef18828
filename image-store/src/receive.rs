//! Receiving an image from elsewhere (the image library's `pull`): chunks arrive one by one as
//! compressed bytes nobody vouches for, the manifest and its signature last.
//!
//! The store keeps the trust rules itself, so no caller can bypass them:
//! - [`Incoming::add_chunk`] decompresses and BLAKE3-checks every chunk before it is written; a
//!   chunk that fails never gets a file, under any name.
//! - [`Incoming::commit`] accepts the manifest only with a valid signature by a trusted key
//!   (whatever `allow_unsigned` says for local imports), only if it names the image asked for, and
//!   only once every chunk it uses is in the store.
//!
//! Received chunks are written as unnamed files (`O_TMPFILE`) in their final directories (or,
//! where the filesystem has no `O_TMPFILE`, under the session's temporary directory) and get
//! their names in batches after one `syncfs` (as imports do, [`Pending`]), so a chunk name never
//! exists with torn content; a second `syncfs` after the links makes the names durable (one call
//! for the whole batch, instead of one fsync per chunk directory: a batch touches up to 256 of
//! them, and each fsync of a directory is a journal commit). A reader waiting for a chunk of the
//! batch (an image written as it is pulled, `arrivals.rs`) gets its checked bytes in memory
//! until it is named. [`Incoming::add_chunks`] checks and writes many chunks in
//! one call, so a caller hands a whole batch to one blocking task instead of one per chunk.
//! [`Incoming::keep`] names what was received so far: a pull cut off mid-way keeps its verified
//! chunks and the next pull fetches only the rest. The session is an import session for gc
//! (`lock.rs`): chunks it writes or reuses (touches) are newer than its start, so a concurrent gc
//! never sweeps them before the manifest that uses them is committed.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::chunk::{ChunkId, CompressedChunk};
use crate::chunk_file::{self, Pending};
use crate::error::StoreError;
use crate::fsutil;
use crate::image_ref::ImageRef;
use crate::lock::{self, ImportSession};
use crate::manifest::{Extent, Manifest};
use crate::signature::{self, SignatureStatus};
use crate::store::{LoadedImage, Store};

/// Received chunks named together between two `syncfs` calls.
const KEEP_BATCH: usize = 1024;

/// A chunk a manifest needs that the store does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantedChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Its first offset in the image (for error messages).
    pub offset: u64,
    /// Its uncompressed length.
    pub len: u64,
}

/// What [`Incoming::add_chunks`] added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    /// Chunks checked and written.
    pub chunks: u64,
    /// Their compressed bytes.
    pub bytes: u64,
}

/// An image being received into the store (see the module docs).
pub struct Incoming {
    store: Store,
    session: ImportSession,
    /// Verified chunks written, not yet named.
    pending: Mutex<Vec<(Pending, ChunkId)>>,
    /// Write chunks as unnamed files ([`Pending::Anon`]): `O_TMPFILE` works in this store.
    anon: bool,
    /// Chunks named together: [`KEEP_BATCH`], or fewer if open files are limited.
    batch: usize,
    /// Which of the temporary directory's subdirectories (per first byte of a chunk id) exist
    /// (named temporaries only).
    tmp_dirs: Mutex<[bool; 256]>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Committed or abandoned, nothing more comes: no reader may wait on.
        self.abandon("the pull ended before the chunk arrived");
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Incoming({})", self.store.root().display())
    }
}

impl Store {
    /// Starts receiving an image (registers an import session for gc).
    pub fn receive(&self) -> Result<Incoming, StoreError> {
        lock::scan_imports(self.root())?; // clean up after crashed imports and pulls
        let session = ImportSession::begin(self.root())?;
        Ok(Incoming {
            store: self.clone(),
            anon: chunk_file::tmpfile_works(session.tmp_dir()),
            batch: chunk_file::batch_limit(KEEP_BATCH),
            session,
            pending: Mutex::new(Vec::new()),
            tmp_dirs: Mutex::new([false; 256]),
        })
    }
}

impl Incoming {
    /// The distinct chunks of `manifest` the store lacks, in image order. Chunks it has are
    /// touched, so gc keeps them until the manifest is committed.
    pub fn wanted(&self, manifest: &Manifest) -> Result<Vec<WantedChunk>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in &manifest.extents {
            let Extent::Chunk { offset, len, id } = *e else {
                continue;
            };
            if seen.insert(id) && !fsutil::touch(&self.store.chunk_path(id))? {
                out.push(WantedChunk { id, offset, len });
            }
        }
        if let Some(a) = &self.store.arrivals {
            a.expect(out.iter().map(|w| w.id));
        }
        Ok(out)
    }

    /// Checks a received chunk (decompresses it, compares length and BLAKE3 with what the
    /// manifest says) and, only if it passes, writes it; it is named at the next
    /// [`Incoming::keep`]. Returns the compressed bytes written.
    pub fn add_chunk(&self, chunk: CompressedChunk) -> Result<u64, StoreError> {
        let (added, r) = self.add_chunks(vec![chunk]);
        r.map(|()| added.bytes)
    }

    /// [`Incoming::add_chunk`] for many chunks in one call (one blocking task for a batch),
    /// in order, stopping at the first that fails its check or cannot be written: what passed
    /// before it is kept (named at the next [`Incoming::keep`]), nothing of it is. Returns what
    /// was added, and the failure if any (a check's [`StoreError::HashMismatch`] or
    /// [`StoreError::CorruptChunk`] names its chunk).
    pub fn add_chunks(&self, chunks: Vec<CompressedChunk>) -> (Added, Result<(), StoreError>) {
        let mut added = Added::default();
        // One scratch buffer: the decompressed bytes are only needed for the check.
        let mut scratch = Vec::new();
        let mut written = Vec::with_capacity(chunks.len());
        let mut failed = None;
        for chunk in chunks {
            let id = chunk.id;
            // With room in the hand-over (a writer of this image reads from `arrivals`), the
            // check decompresses into a copy of its own that the writer takes instead of
            // reading the file back and checking it again; else into the scratch buffer.
            let arrivals = self.store.arrivals.as_ref();
            let r = if arrivals.is_some_and(|a| a.has_room(chunk.len)) {
                chunk.verified_copy().map(Some)
            } else {
                scratch.resize(chunk.len as usize, 0);
                chunk
                    .decompress_verify_in_place(&mut scratch)
                    .map(|()| None)
            };
            let r = r.and_then(|copy| Ok((self.write_received(&chunk)?, copy)));
            match r {
                Ok((file, copy)) => {
                    written.push((file, id));
                    added.chunks += 1;
                    added.bytes += chunk.data.len() as u64;
                    // A reader waiting for it (an image written as it is pulled) gets its
                    // checked bytes now, before its batch is named.
                    if let Some(a) = arrivals {
                        if let Some(copy) = copy {
                            a.hand_over(copy);
                        }
                        a.staged(id, chunk.data.into());
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.extend(written);
            p.len() >= self.batch
        };
        if batch && let Err(e) = self.keep() {
            failed.get_or_insert(e);
        }
        (added, failed.map_or(Ok(()), Err))
    }

    /// Writes a checked chunk: an unnamed file in its final directory, else a named temporary
    /// under the session's temporary directory, in a subdirectory per first byte of its id like
    /// `chunks/` (one shared directory made the batches' threads contend on its lock: 6% of a
    /// pull's CPU spinning on it, `perf`).
    fn write_received(&self, chunk: &CompressedChunk) -> Result<Pending, StoreError> {
        use std::io::Write;
        if self.anon {
            let path = self.store.chunk_path(chunk.id);
            let dir = path.parent().expect("chunk path has a parent");
            if let Some(mut f) = chunk_file::open_anon(dir) {
                f.write_all(&chunk.data)
                    .map_err(|e| StoreError::io("writing received chunk into", dir, e))?;
                return Ok(Pending::Anon(f));
            }
        }
        let hex = chunk.id.to_hex();
        let dir = self.session.tmp_dir().join(&hex[..2]);
        let first = usize::from(chunk.id.0[0]);
        let made = self.tmp_dirs.lock().unwrap_or_else(|e| e.into_inner())[first];
        if !made {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io("creating", &dir, e)),
            }
            self.tmp_dirs.lock().unwrap_or_else(|e| e.into_inner())[first] = true;
        }
        let tmp = dir.join(hex);
        std::fs::write(&tmp, &chunk.data).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io("writing received chunk", &tmp, e)
        })?;
        Ok(Pending::Named(tmp))
    }

    /// The pull ended for `reason` before every wanted chunk arrived: readers waiting for the
    /// rest (see [`Store::with_arrivals`]) get it as their error.
    pub fn abandon(&self, reason: &str) {
        if let Some(a) = &self.store.arrivals {
            a.close(reason);
        }
    }

    /// Makes every chunk received so far durable and gives it its name in the store (one
    /// `syncfs`, then links or renames, then one `syncfs` for the names). Called by
    /// [`Incoming::commit`], and by a pull that fails part way, so its verified chunks stay for
    /// the next attempt.
    pub fn keep(&self) -> Result<usize, StoreError> {
        let files = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if files.is_empty() {
            return Ok(0);
        }
        fsutil::syncfs(self.store.root())?;
        let mut ids = Vec::with_capacity(files.len());
        for (file, id) in files {
            file.name(&self.store.chunk_path(id))?;
            ids.push(id);
        }
        // The names (directory entries) durable, all directories at once.
        fsutil::syncfs(self.store.root())?;
        // Named and durable: a reader waiting for them (an image being written while it is
        // pulled, `arrivals.rs`) may read them now.
        if let Some(a) = &self.store.arrivals {
            a.arrived(ids.iter().copied());
        }
        Ok(ids.len())
    }

    /// Commits a received manifest: its signature must be valid and by a key in `trusted_keys`,
    /// it must parse and name `image`, and every chunk it uses must be in the store. The exact
    /// bytes received are stored (the signature covers them), the signature first, the manifest
    /// last. If the store already has `image` with the same bytes, nothing changes; with other
    /// bytes, the pull is refused.
    pub fn commit(
        self,
        image: &ImageRef,
        manifest_bytes: &[u8],
        signature_bytes: &[u8],
        trusted_keys: &std::path::Path,
    ) -> Result<LoadedImage, StoreError> {
        let (manifest, status) =
            check_received(image, manifest_bytes, signature_bytes, trusted_keys)?;
        self.keep()?;
        // What is in the store now; a chunk still "coming" does not count.
        let absent = self.store.plain().absent_chunks(&manifest)?;
        if let Some(a) = absent.first() {
            return Err(StoreError::MissingChunk {
                chunk: a.id,
                offset: a.offset,
                path: self.store.chunk_path(a.id),
            });
        }
        let _edit = lock::ManifestLock::take(self.store.root())?;
        if let Some(existing) = self.store.existing_bytes(image)? {
            if existing != manifest_bytes {
                return Err(StoreError::DiffersLocally {
                    image: image.to_string(),
                });
            }
        } else {
            let dir = self.store.root().join("images").join(&image.name);
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating", &dir, e))?;
            let tmp = self.session.tmp_dir();
            fsutil::write_atomic(
                &tmp.join("manifest.sig"),
                &self.store.signature_path(image),
                signature_bytes,
            )?;
            fsutil::write_atomic(
                &tmp.join("manifest.json"),
                &self.store.manifest_path(image),
                manifest_bytes,
            )?;
        }
        Ok(LoadedImage {
            manifest,
            manifest_hash: blake3::hash(manifest_bytes).to_hex().to_string(),
            signature: status,
        })
    }
}

/// Checks received manifest bytes before anything else is done with them: a valid signature by
/// a trusted key first (nothing of an unsigned manifest is parsed beyond that), then the
/// manifest's own invariants and that it names `image`.
pub fn check_received(
    image: &ImageRef,
    manifest_bytes: &[u8],
    signature_bytes: &[u8],
    trusted_keys: &std::path::Path,
) -> Result<(Manifest, SignatureStatus), StoreError> {
    let status = signature::check(manifest_bytes, Some(signature_bytes), trusted_keys)?;
    if !status.is_valid() {
        return Err(StoreError::NotTrusted {
            image: image.to_string(),
            status,
        });
    }
    let label = PathBuf::from(format!("{}/{}.json", image.name, image.version));
    let manifest = crate::store::parse_manifest(&label, manifest_bytes)?;
    if manifest.name != image.name || manifest.version != image.version {
        return Err(StoreError::InconsistentManifest {
            path: label,
            reason: format!("it names {}@{}", manifest.name, manifest.version),
        });
    }
    Ok((manifest, status))
}

impl Store {
    /// The manifest bytes of `image` if the store has it.
    fn existing_bytes(&self, image: &ImageRef) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.manifest_path(image);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("reading manifest", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(data: &[u8]) -> CompressedChunk {
        CompressedChunk {
            id: ChunkId::of(data),
            offset: 0,
            len: data.len() as u64,
            data: zstd::bulk::compress(data, 1).unwrap(),
        }
    }

    #[test]
    fn a_batch_keeps_the_chunks_before_a_bad_one_and_nothing_of_it_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let inc = store.receive().unwrap();
        let good: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 5000]).collect();
        let mut lying = compressed(b"the bytes sent");
        lying.id = ChunkId::of(b"the bytes the manifest names");
        let mut garbage = compressed(b"not zstd at all");
        garbage.data = b"not zstd at all".to_vec();
        let after = compressed(b"after the bad one");
        let batch = vec![
            compressed(&good[0]),
            compressed(&good[1]),
            lying,
            compressed(&good[2]),
        ];
        let (added, r) = inc.add_chunks(batch);
        assert_eq!(added.chunks, 2);
        let e = r.unwrap_err();
        assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
        let (added, r) = inc.add_chunks(vec![garbage, after]);
        assert_eq!(added.chunks, 0);
        assert!(matches!(r, Err(StoreError::CorruptChunk { .. })), "{r:?}");
        assert_eq!(inc.keep().unwrap(), 2);
        assert!(store.chunk_path(ChunkId::of(&good[0])).exists());
        assert!(store.chunk_path(ChunkId::of(&good[1])).exists());
        for missing in [
            &good[2][..],
            b"the bytes the manifest names",
            b"the bytes sent",
        ] {
            assert!(!store.chunk_path(ChunkId::of(missing)).exists());
        }
        assert!(!store.chunk_path(ChunkId::of(b"after the bad one")).exists());
        // Nothing unnamed stays behind in the session's directory.
        let left: Vec<_> = std::fs::read_dir(inc.session.tmp_dir())
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_writer_takes_the_pulls_checked_copy_once_and_the_copies_stay_within_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (vec![1u8; 6000], vec![2u8; 5000]);
        let extents = |data: &[u8]| {
            vec![Extent::Chunk {
                offset: 0,
                len: data.len() as u64,
                id: ChunkId::of(data),
            }]
        };
        // Room for a's copy, not for b's too.
        let arrivals = crate::arrivals::Arrivals::with_handover_limit(8000);
        let pulling = store.with_arrivals(arrivals.clone());
        let inc = pulling.receive().unwrap();
        inc.wanted(&crate::arrivals::tests::manifest(
            [extents(&a), extents(&b)].concat(),
        ))
        .unwrap();
        let (added, r) = inc.add_chunks(vec![compressed(&a), compressed(&b)]);
        r.unwrap();
        assert_eq!(added.chunks, 2);
        assert_eq!(arrivals.handed_over_bytes(), 6000, "a's copy only");
        // The writer's read takes the copy: the same bytes, and the room is free again.
        let mut out = vec![0u8; 6000];
        crate::read::read_run_into(&pulling, &extents(&a), &mut out).unwrap();
        assert_eq!(out, a);
        assert_eq!(arrivals.handed_over_bytes(), 0);
        // A second reader of a, and the reader of b, read the store's bytes (staged, unnamed)
        // and check them as ever.
        out.fill(0);
        crate::read::read_run_into(&pulling, &extents(&a), &mut out).unwrap();
        assert_eq!(out, a);
        let mut out_b = vec![0u8; 5000];
        crate::read::read_run_into(&pulling, &extents(&b), &mut out_b).unwrap();
        assert_eq!(out_b, b);
        // A chunk that failed its check leaves no copy.
        let mut lying = compressed(b"sent");
        lying.id = ChunkId::of(b"named");
        let (_, r) = inc.add_chunks(vec![lying]);
        assert!(r.is_err());
        assert_eq!(arrivals.handed_over_bytes(), 0);
        assert!(store.take_checked(ChunkId::of(b"named"), 5).is_none());
    }

    #[test]
    fn a_waiting_reader_gets_a_staged_chunk_before_it_has_a_name_and_a_crash_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = vec![7u8; 9000];
        let id = ChunkId::of(&data);
        let arrivals = crate::arrivals::Arrivals::new([id]);
        let pulling = store.with_arrivals(arrivals.clone());
        let inc = pulling.receive().unwrap();
        let reader = pulling.clone();
        let t = std::thread::spawn(move || reader.read_compressed(id, 0, 9000));
        let (added, r) = inc.add_chunks(vec![compressed(&data)]);
        r.unwrap();
        assert_eq!(added.chunks, 1);
        let c = t.join().unwrap().unwrap();
        assert_eq!(c.decompress_verify().unwrap().data(), &data[..]);
        // Staged, not named: no name in the store, nothing under the session's directory.
        assert!(!store.chunk_path(id).exists());
        assert_eq!(arrivals.pending(), 1);
        // Dropped without keep (a crash): the unnamed file goes with its descriptor.
        drop(inc);
        assert!(!store.chunk_path(id).exists());
        let inc = pulling.receive().unwrap();
        let (_, r) = inc.add_chunks(vec![compressed(&data)]);
        r.unwrap();
        assert_eq!(inc.keep().unwrap(), 1);
        assert_eq!(
            std::fs::read(store.chunk_path(id)).unwrap(),
            compressed(&data).data
        );
    }
}
