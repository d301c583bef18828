//! Streaming import: source -> segmenter -> compress/store pool -> ordered manifest.
//!
//! Threads (all scoped): one reader decodes the source and runs the segmenter (zero scan +
//! FastCDC); two hasher threads compute the whole-image SHA-256 and BLAKE3 over the same buffers (in
//! order); a pool of workers hashes, deduplicates, compresses and stores chunks; the calling thread
//! puts the workers' results back in image order. Channels are bounded and read buffers recycled,
//! so memory stays bounded (tens of MiB) whatever the image size. There are twice as many workers
//! as cores so that a worker blocked on the disk leaves its core to another. New chunks are
//! written as unnamed files (`O_TMPFILE`) in their final directory, or under the import's
//! temporary directory where that is not supported, and get their names in batches after one
//! `syncfs` (see [`RENAME_BATCH`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use sha2::Digest;

use crate::error::StoreError;
use crate::fsutil;
use crate::gpt_summary::{self, EDGE, SparseImage};
pub use crate::hints::{check_hints, resolve_hint};
use crate::image_ref::ImageRef;
use crate::lock::{self, ImportSession};
use crate::manifest::{Chunking, Extent, Hints, MANIFEST_FORMAT, Manifest};
use crate::segment::{CdcParams, Segment, Segmenter};
use crate::signature::SigningKey;
use crate::source::{DecodeLimits, Source, SourceFormat};
use crate::store::Store;

mod worker;
use crate::chunk_file::{self, tmpfile_works};
use worker::{Batch, Done, RENAME_BATCH, WorkerCtx};

/// Read buffer size; a multiple of the zero-detection block.
const READ_BLOCK: usize = 8 << 20;

/// Import settings.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Hints to record in the manifest.
    pub hints: Hints,
    /// Overwrite an existing NAME@VERSION.
    pub replace: bool,
    /// FastCDC average chunk size (min = avg/4, max = avg*4).
    pub chunk_avg: u32,
    /// Shortest zero run recorded as a hole.
    pub hole_min: u64,
    /// zstd level for new chunks.
    pub zstd_level: i32,
    /// Worker threads (0: twice the number of cores).
    pub workers: usize,
    /// Maximum image size and expansion ratio of a compressed source (decompression bombs).
    pub limits: DecodeLimits,
    /// Run the privacy audit (over the stored chunks, before the manifest is committed) and
    /// record its verdict; None records the image as not audited.
    pub audit: Option<crate::audit::AuditOptions>,
    /// Zero the free space of every filesystem the audit reads before storing (raw sources
    /// only; see `scrub.rs`); the manifest keeps the source's hashes in `scrubbed`.
    pub scrub_free: bool,
    /// Where to send progress (`tek image import`'s bar). A `Stored` update that finds the
    /// channel full is dropped (the next one catches up), so a slow reader never holds the
    /// import back; the one `Auditing` update waits for room.
    pub progress: Option<crossbeam_channel::Sender<ImportProgress>>,
}

/// One progress update of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportProgress {
    /// Image bytes stored so far (chunks and holes, in image order).
    Stored(u64),
    /// The image is read; its partitions are being probed and audited.
    Auditing,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            hints: Hints::default(),
            replace: false,
            chunk_avg: 64 * 1024,
            hole_min: 16 * 1024,
            zstd_level: 3,
            workers: 0,
            limits: DecodeLimits::default(),
            audit: Some(crate::audit::AuditOptions::default()),
            scrub_free: false,
            progress: None,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The committed manifest.
    pub manifest: Manifest,
    /// Detected source format.
    pub source_format: SourceFormat,
    /// Chunk extents in the manifest.
    pub chunks: u64,
    /// Chunks that were not in the store yet.
    pub new_chunks: u64,
    /// Compressed bytes added to the store.
    pub new_stored_bytes: u64,
    /// Bytes in chunk extents.
    pub data_bytes: u64,
    /// Bytes in holes.
    pub hole_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Store {
    /// Imports `source` as `image`: chunks first, the manifest (and signature) last.
    pub fn import(
        &self,
        image: &ImageRef,
        source: &Path,
        opts: &ImportOptions,
        key: Option<&SigningKey>,
    ) -> Result<ImportReport, StoreError> {
        let started = Instant::now();
        if !opts.replace && self.exists(image) {
            return Err(StoreError::AlreadyExists {
                image: image.to_string(),
            });
        }
        check_hints(
            &Hints {
                data_partition: None,
                grow_partition: None,
                ..opts.hints.clone()
            },
            None,
        )?;
        let mut src = Source::open_with(source, opts.limits)?;
        let source_format = src.format();
        let scrubbed = if opts.scrub_free {
            if source_format != SourceFormat::Raw {
                return Err(StoreError::BadSource {
                    path: source.to_path_buf(),
                    reason: format!(
                        "is {}-compressed: --scrub-free reads the free-space maps from a raw \
                         image before importing it; decompress it first",
                        source_format.name()
                    ),
                });
            }
            Some(src.zero_ranges(crate::scrub::image_free_ranges(source)?))
        } else {
            None
        };
        lock::scan_imports(self.root())?; // clean up after crashed imports
        let session = ImportSession::begin(self.root())?;
        let cdc = CdcParams::with_avg(opts.chunk_avg);
        let workers = match opts.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            n => n,
        };
        let abort = AtomicBool::new(false);
        let seen = Mutex::new(HashSet::new());
        let anon = tmpfile_works(session.tmp_dir());
        let mut batch = Batch {
            store: self,
            files: Vec::new(),
            dirs: BTreeSet::new(),
            limit: chunk_file::batch_limit(RENAME_BATCH),
        };
        let (work_tx, work_rx) = bounded::<(u64, Segment)>(64);
        let (res_tx, res_rx) = unbounded::<Result<Done, StoreError>>();
        let (hash_tx, hash_rx) = bounded::<(Vec<u8>, usize)>(3);
        let (b3_tx, b3_rx) = bounded::<(Vec<u8>, usize)>(3);
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(6);
        for _ in 0..6 {
            pool_tx.send(vec![0u8; READ_BLOCK]).expect("fresh channel");
        }
        let mut extents: Vec<Extent> = Vec::new();
        let (mut chunks, mut new_chunks, mut new_stored) = (0u64, 0u64, 0u64);
        let mut first_err: Option<StoreError> = None;

        let (read_res, digests) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                read_stage(
                    &mut src,
                    cdc,
                    opts.hole_min,
                    work_tx,
                    hash_tx,
                    pool_rx,
                    &abort,
                )
            });
            // SHA-256 is inherently serial and the slowest stage (about 2 GB/s with SHA-NI), so
            // it gets a thread of its own; BLAKE3 follows on the same buffers, then they return
            // to the reader's pool.
            let sha_thread = s.spawn(move || {
                let mut sha = sha2::Sha256::new();
                for (buf, n) in hash_rx {
                    sha.update(&buf[..n]);
                    let _ = b3_tx.send((buf, n));
                }
                hex::encode(sha.finalize())
            });
            let hasher = s.spawn(move || {
                let mut b3 = blake3::Hasher::new();
                for (buf, n) in b3_rx {
                    b3.update(&buf[..n]);
                    let _ = pool_tx.send(buf);
                }
                (
                    sha_thread.join().expect("sha256 thread panicked"),
                    b3.finalize().to_hex().to_string(),
                )
            });
            for _ in 0..workers {
                let (rx, tx) = (work_rx.clone(), res_tx.clone());
                let ctx = WorkerCtx {
                    store: self,
                    tmp: session.tmp_dir(),
                    anon,
                    level: opts.zstd_level,
                    seen: &seen,
                    abort: &abort,
                };
                s.spawn(move || ctx.run(rx, tx));
            }
            drop((work_rx, res_tx));
            let mut waiting = BTreeMap::new();
            let mut next = 0u64;
            for r in res_rx {
                match r {
                    Err(e) => {
                        abort.store(true, Ordering::Relaxed);
                        first_err.get_or_insert(e);
                    }
                    Ok(d) => {
                        waiting.insert(d.seq, d);
                        while let Some(d) = waiting.remove(&next) {
                            next += 1;
                            if let Extent::Chunk { .. } = d.extent {
                                chunks += 1;
                            }
                            if let Some(b) = d.new_bytes {
                                new_chunks += 1;
                                new_stored += b;
                            }
                            if let (Some(p), Extent::Chunk { id, .. }) = (d.pending, &d.extent) {
                                batch.files.push((p, *id));
                            }
                            if first_err.is_none()
                                && batch.files.len() >= batch.limit
                                && let Err(e) = batch.flush()
                            {
                                abort.store(true, Ordering::Relaxed);
                                first_err = Some(e);
                            }
                            let end = d.extent.offset() + d.extent.len();
                            push_extent(&mut extents, d.extent);
                            if let Some(tx) = &opts.progress {
                                let _ = tx.try_send(ImportProgress::Stored(end));
                            }
                        }
                    }
                }
            }
            let read_res = reader.join().expect("reader thread panicked");
            (read_res, hasher.join().expect("hasher thread panicked"))
        });
        // The reader's error (bad source) explains a worker's failure better than the reverse.
        let (head, tail, size) = read_res?;
        if let Some(e) = first_err {
            return Err(e);
        }
        if size == 0 {
            return Err(StoreError::BadSource {
                path: source.to_path_buf(),
                reason: format!("{} stream decompresses to nothing", source_format.name()),
            });
        }
        let gpt = gpt_summary::summarize(SparseImage::new(head, tail, size));
        let (data_bytes, hole_bytes) = extents.iter().fold((0, 0), |(d, h), e| match e {
            Extent::Chunk { len, .. } => (d + len, h),
            Extent::Hole { len, .. } => (d, h + len),
        });
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: image.name.clone(),
            version: image.version.clone(),
            size,
            sha256: digests.0,
            blake3: digests.1,
            created: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            chunking: Chunking {
                algorithm: crate::segment::ALGORITHM.into(),
                min: cdc.min,
                avg: cdc.avg,
                max: cdc.max,
            },
            extents,
            gpt,
            hints: opts.hints.clone(),
            audit: None,
            scrubbed: scrubbed.and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take()),
        };
        // Chunk renames must be durable before the manifest that points at them.
        batch.flush()?;
        for d in &batch.dirs {
            fsutil::sync_dir(d)?;
        }
        // The probe and the audit read what was stored (verified chunks), so they also work
        // for compressed sources; the import session keeps gc off those chunks meanwhile.
        let mut manifest = manifest;
        if let Some(tx) = &opts.progress {
            let _ = tx.send(ImportProgress::Auditing);
        }
        if let Some(g) = manifest.gpt.as_mut() {
            crate::probe::probe_partitions(self, &manifest.extents, g)
                .map_err(|e| StoreError::io("reading the partitions of", source, e))?;
        }
        check_hints(&opts.hints, manifest.gpt.as_ref())?;
        if let Some(a) = &opts.audit {
            manifest.audit = Some(self.audit_manifest(&manifest, a));
        }
        // Check and commit under the manifest lock: two imports of one name never both "win".
        let _edit = crate::lock::ManifestLock::take(self.root())?;
        if !opts.replace && self.exists(image) {
            return Err(StoreError::AlreadyExists {
                image: image.to_string(),
            });
        }
        self.commit_manifest(&manifest, key, session.tmp_dir())?;
        drop(session);
        Ok(ImportReport {
            manifest,
            source_format,
            chunks,
            new_chunks,
            new_stored_bytes: new_stored,
            data_bytes,
            hole_bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

fn push_extent(extents: &mut Vec<Extent>, e: Extent) {
    if let (Some(Extent::Hole { len, .. }), Extent::Hole { len: more, .. }) =
        (extents.last_mut(), &e)
    {
        *len += more;
        return;
    }
    extents.push(e);
}

type Edges = (Vec<u8>, Vec<u8>, u64);

fn read_stage(
    src: &mut Source,
    cdc: CdcParams,
    hole_min: u64,
    work_tx: Sender<(u64, Segment)>,
    hash_tx: Sender<(Vec<u8>, usize)>,
    pool_rx: Receiver<Vec<u8>>,
    abort: &AtomicBool,
) -> Result<Edges, StoreError> {
    let mut seq = 0u64;
    let mut seg = Segmenter::new(cdc, hole_min, |s| {
        seq += 1;
        work_tx.send((seq - 1, s)).is_ok()
    });
    let (mut head, mut tail) = (Vec::with_capacity(EDGE), Vec::with_capacity(2 * EDGE));
    let mut offset = 0u64;
    while !abort.load(Ordering::Relaxed) && !seg.stopped() {
        let Ok(mut buf) = pool_rx.recv() else { break };
        let n = src.fill(&mut buf)?;
        let data = &buf[..n];
        if head.len() < EDGE {
            head.extend_from_slice(&data[..n.min(EDGE - head.len())]);
        }
        // Keep the last EDGE bytes for the backup GPT.
        if n >= EDGE {
            tail.clear();
            tail.extend_from_slice(&data[n - EDGE..]);
        } else {
            tail.extend_from_slice(data);
            if tail.len() > EDGE {
                tail.drain(..tail.len() - EDGE);
            }
        }
        seg.push(offset, data);
        offset += n as u64;
        if hash_tx.send((buf, n)).is_err() || n < READ_BLOCK {
            break;
        }
    }
    seg.finish();
    Ok((head, tail, offset))
}
