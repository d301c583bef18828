//! The import's chunk workers and how their new chunks become visible: a worker hashes,
//! deduplicates, compresses and writes a chunk as an unnamed file ([`Pending::Anon`]) or a
//! named temporary; the calling thread collects them into a [`Batch`] that one `syncfs` makes
//! durable before the chunks get their names.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::chunk::ChunkId;
use crate::chunk_file::{self, Pending};
use crate::error::StoreError;
use crate::fsutil;
use crate::manifest::Extent;
use crate::segment::{Segment, is_zero};
use crate::store::Store;

/// A chunk (or hole) a worker is done with, to be put back in image order.
pub(super) struct Done {
    pub(super) seq: u64,
    pub(super) extent: Extent,
    pub(super) new_bytes: Option<u64>,
    /// A new chunk written, not yet durable nor visible.
    pub(super) pending: Option<Pending>,
}

/// New chunks become visible in batches: one `syncfs` makes all their contents durable, then
/// they are renamed into place. Same guarantee as fsync-per-file (a chunk name never exists with
/// torn content) at a fraction of the cost: on a busy disk, thousands of fsyncs serialize the
/// whole import.
pub(super) const RENAME_BATCH: usize = 2048;

pub(super) struct Batch<'a> {
    pub(super) store: &'a Store,
    pub(super) files: Vec<(Pending, ChunkId)>,
    pub(super) dirs: BTreeSet<PathBuf>,
    /// Files per batch: [`RENAME_BATCH`], or fewer if open files are limited (each unnamed chunk
    /// holds a descriptor until its batch is flushed; half the limit is left for chunks in flight).
    pub(super) limit: usize,
}

impl Batch<'_> {
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        if self.files.is_empty() {
            return Ok(());
        }
        fsutil::syncfs(self.store.root())?;
        for (pending, id) in self.files.drain(..) {
            let path = self.store.chunk_path(id);
            pending.name(&path)?;
            self.dirs.insert(
                path.parent()
                    .expect("chunk path has a parent")
                    .to_path_buf(),
            );
        }
        Ok(())
    }
}

pub(super) struct WorkerCtx<'a> {
    pub(super) store: &'a Store,
    pub(super) tmp: &'a Path,
    /// Write new chunks as unnamed files (see [`Pending::Anon`]).
    pub(super) anon: bool,
    pub(super) level: i32,
    pub(super) seen: &'a Mutex<HashSet<ChunkId>>,
    pub(super) abort: &'a AtomicBool,
}

impl WorkerCtx<'_> {
    pub(super) fn run(&self, rx: Receiver<(u64, Segment)>, tx: Sender<Result<Done, StoreError>>) {
        let mut comp = zstd::bulk::Compressor::new(self.level).ok();
        for (seq, seg) in rx {
            if self.abort.load(Ordering::Relaxed) {
                continue; // drain so the reader is never stuck on a full channel
            }
            let r = self.one(seq, seg, comp.as_mut());
            if r.is_err() {
                self.abort.store(true, Ordering::Relaxed);
            }
            let _ = tx.send(r);
        }
    }

    fn one(
        &self,
        seq: u64,
        seg: Segment,
        comp: Option<&mut zstd::bulk::Compressor<'static>>,
    ) -> Result<Done, StoreError> {
        let (buf, start, end, offset) = match seg {
            Segment::Hole { offset, len } => {
                return Ok(Done {
                    seq,
                    extent: Extent::Hole { offset, len },
                    new_bytes: None,
                    pending: None,
                });
            }
            Segment::Data {
                buf,
                start,
                end,
                offset,
            } => (buf, start, end, offset),
        };
        let data = &buf[start..end];
        let len = data.len() as u64;
        if is_zero(data) {
            return Ok(Done {
                seq,
                extent: Extent::Hole { offset, len },
                new_bytes: None,
                pending: None,
            });
        }
        let id = ChunkId::of(data);
        let extent = Extent::Chunk { offset, len, id };
        let first = self.seen.lock().expect("poisoned").insert(id);
        let path = self.store.chunk_path(id);
        // Touch a reused chunk so a concurrent gc sees it as in use (see gc.rs).
        if !first || fsutil::touch(&path)? {
            return Ok(Done {
                seq,
                extent,
                new_bytes: None,
                pending: None,
            });
        }
        let compressed = match comp {
            Some(c) => c.compress(data),
            None => zstd::bulk::compress(data, self.level),
        }
        .map_err(|e| StoreError::io("compressing chunk", &path, e))?;
        let dir = path.parent().expect("chunk path has a parent");
        if let Some(mut f) = self.open_anon(dir) {
            use std::io::Write;
            f.write_all(&compressed)
                .map_err(|e| StoreError::io("writing chunk into", dir, e))?;
            return Ok(Done {
                seq,
                extent,
                new_bytes: Some(compressed.len() as u64),
                pending: Some(Pending::Anon(f)),
            });
        }
        let tmp = self.tmp.join(id.to_hex());
        std::fs::write(&tmp, &compressed).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io("writing chunk", &tmp, e)
        })?;
        Ok(Done {
            seq,
            extent,
            new_bytes: Some(compressed.len() as u64),
            pending: Some(Pending::Named(tmp)),
        })
    }

    /// An unnamed file in `dir` (created if missing), or None to fall back to a named
    /// temporary (see [`chunk_file::open_anon`]).
    fn open_anon(&self, dir: &Path) -> Option<std::fs::File> {
        if !self.anon {
            return None;
        }
        chunk_file::open_anon(dir)
    }
}
