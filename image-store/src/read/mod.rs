//! The one reader of a manifest: ordered, bounded, parallel. `tek image export`, `tek image
//! verify` and the imager all read chunks through here, and receive them only verified.
//!
//! A manifest's extents are cut into jobs by [`plan`]: runs of chunks (and small holes) of about
//! [`RUN_BYTES`], big holes alone. Workers (one per core) read the chunk files, decompress them and
//! check each BLAKE3 hash themselves, so file I/O, zstd and hashing all run on every core; the
//! [`order`] engine hands the results back in image order through bounded channels, so a slow
//! consumer (a USB disk, a pipe) holds back the readers instead of buffering the image: at most
//! `2 * depth` runs of [`RUN_BYTES`] are in memory (see [`Reader::bound_bytes`]).
//!
//! Two ways to receive a run:
//! - [`Store::pieces`] (export, verify): one [`Piece`] per extent, each chunk a [`VerifiedChunk`](crate::VerifiedChunk)
//!   or the error that says why it is not one (missing, corrupt, wrong hash). Per-chunk errors do
//!   not end the stream, so verify can report every bad chunk; a caller that must stop at the first
//!   one (export) simply drops the iterator.
//! - [`read_run_into`] (the imager's workers, which lay a run out in their own page-aligned
//!   buffers for O_DIRECT): the same read and checks into a caller's buffer, returning a
//!   [`VerifiedRun`] only when every chunk of it passed.

pub mod order;
pub mod plan;

use std::ops::Range;

use crossbeam_channel::Receiver;

use crate::chunk::{ChunkId, Piece};
use crate::error::StoreError;
use crate::manifest::Extent;
use crate::store::Store;

pub use plan::{RUN_BYTES, ReadJob, plan};

/// How a [`Store::pieces`] reader runs.
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    /// Worker threads (read + decompress + hash).
    pub workers: usize,
    /// Jobs in flight (each at most about [`RUN_BYTES`]).
    pub depth: usize,
}

impl Default for Reader {
    /// One worker per core, 4 runs in flight.
    fn default() -> Self {
        Reader {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            depth: 4,
        }
    }
}

impl Reader {
    /// Most decompressed bytes the reader holds at once, for chunks of at most `max_chunk` bytes:
    /// `depth` runs in the pipeline plus `depth` pieces in the output channel (and the one the
    /// consumer holds). A run exceeds [`RUN_BYTES`] by at most one chunk.
    pub fn bound_bytes(&self, max_chunk: u64) -> u64 {
        let depth = self.depth.max(1) as u64;
        depth * (RUN_BYTES + max_chunk) + (depth + 1) * max_chunk
    }
}

/// What one extent of a run turned into.
pub type PieceResult = Result<Piece, StoreError>;

impl Store {
    /// Reads `extents` (in image order) with `reader`'s workers and yields one piece per extent in
    /// image order, each chunk verified or the error saying why it is not. Bounded: see
    /// [`Reader::bound_bytes`]. Dropping the iterator stops the threads.
    pub fn pieces(&self, extents: Vec<Extent>, reader: Reader) -> Pieces {
        let store = self.clone();
        let jobs = plan(&extents, RUN_BYTES).into_iter().map(move |j| match j {
            ReadJob::Hole { offset, len } => vec![Extent::Hole { offset, len }],
            ReadJob::Run(r) => extents[r].to_vec(),
        });
        let rx = order::ordered(
            "tek-read",
            jobs,
            reader.workers,
            reader.depth,
            move |run: Vec<Extent>| run.iter().map(|e| store.read_piece(e)).collect(),
            |_| false,
        );
        Pieces { rx }
    }

    /// One extent as a piece: a hole, or a chunk read, decompressed and hash-checked.
    fn read_piece(&self, e: &Extent) -> PieceResult {
        match *e {
            Extent::Hole { offset, len } => Ok(Piece::Hole { offset, len }),
            Extent::Chunk { offset, len, id } => self
                .read_compressed(id, offset, len)?
                .decompress_verify()
                .map(Piece::Data),
        }
    }
}

/// The pieces of a [`Store::pieces`] read, in image order.
pub struct Pieces {
    rx: Receiver<PieceResult>,
}

impl Iterator for Pieces {
    type Item = PieceResult;
    fn next(&mut self) -> Option<PieceResult> {
        self.rx.recv().ok()
    }
}

/// Proof that a run of extents was read into a buffer and every chunk of it hashed to its id;
/// holes were written as zeros. Built only by [`read_run_into`].
#[derive(Debug)]
pub struct VerifiedRun {
    extents: Vec<Extent>,
}

impl VerifiedRun {
    /// The extents now in the buffer, each chunk checked: what read-back must find.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }
    /// Chunk ids in order (holes are `None`).
    pub fn ids(&self) -> impl Iterator<Item = Option<ChunkId>> + '_ {
        self.extents.iter().map(|e| match e {
            Extent::Chunk { id, .. } => Some(*id),
            Extent::Hole { .. } => None,
        })
    }
}

/// Reads consecutive `extents` of `store` into `out` (exactly their total length; `out[0]` is the
/// first extent's first byte): each chunk is read, decompressed into place and hash-checked
/// (with the worker's reused zstd context), each hole zero-filled. On error `out` holds
/// unverified bytes and must not reach a writer: the caller keeps the buffer, not the proof.
///
/// Panics if `out` is shorter than the run (a caller's bug, not a bad chunk: it must not
/// quarantine anything).
pub fn read_run_into(
    store: &Store,
    extents: &[Extent],
    out: &mut [u8],
) -> Result<VerifiedRun, StoreError> {
    let start = extents.first().map_or(0, |e| e.offset());
    for e in extents {
        let at = (e.offset() - start) as usize;
        let dst = &mut out[at..at + e.len() as usize];
        match *e {
            Extent::Hole { .. } => dst.fill(0),
            Extent::Chunk { offset, len, id } => match store.take_checked(id, len) {
                // Equivalent to the check below: the copy is a `VerifiedChunk` the pull made
                // with that same check (`CompressedChunk::verified_copy`: these bytes are the
                // decompressed chunk, `len` long, hashing to `id`) from the bytes it then wrote
                // as the chunk's file; only the second decode of that file is saved. What
                // reaches the disk is still read back and compared with `id` after the write.
                Some(copy) => dst.copy_from_slice(copy.data()),
                None => store
                    .read_compressed(id, offset, len)?
                    .decompress_verify_in_place(dst)?,
            },
        }
    }
    Ok(VerifiedRun {
        extents: extents.to_vec(),
    })
}

/// Byte range of image offsets a run covers.
pub fn run_range(extents: &[Extent]) -> Range<u64> {
    let start = extents.first().map_or(0, |e| e.offset());
    start..start + extents.iter().map(|e| e.len()).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with `n` chunks of distinct bytes and a hole after every third; returns the extents.
    fn store_with(dir: &std::path::Path, n: u64) -> (Store, Vec<Extent>) {
        let store = Store::open(dir).unwrap();
        let mut ex = Vec::new();
        let mut at = 0;
        for i in 0..n {
            let data = vec![(i % 250 + 1) as u8; 1000 + (i as usize * 37) % 5000];
            let id = ChunkId::of(&data);
            let p = store.chunk_path(id);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, zstd::bulk::compress(&data, 1).unwrap()).unwrap();
            ex.push(Extent::Chunk {
                offset: at,
                len: data.len() as u64,
                id,
            });
            at += data.len() as u64;
            if i % 3 == 2 {
                ex.push(Extent::Hole {
                    offset: at,
                    len: 777,
                });
                at += 777;
            }
        }
        (store, ex)
    }

    #[test]
    fn pieces_come_in_image_order_verified() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ex) = store_with(dir.path(), 300);
        let r = Reader {
            workers: 4,
            depth: 2,
        };
        let got: Vec<(u64, u64)> = store
            .pieces(ex.clone(), r)
            .map(|p| match p.unwrap() {
                Piece::Data(c) => {
                    assert_eq!(ChunkId::of(c.data()), c.id());
                    (c.offset(), c.len())
                }
                Piece::Hole { offset, len } => (offset, len),
            })
            .collect();
        let want: Vec<(u64, u64)> = ex.iter().map(|e| (e.offset(), e.len())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bad_chunk_is_an_error_in_its_place_and_the_rest_still_comes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ex) = store_with(dir.path(), 9);
        let Extent::Chunk { id, offset, .. } = ex[4] else {
            panic!()
        };
        std::fs::write(
            store.chunk_path(id),
            zstd::bulk::compress(&[3u8; 100], 1).unwrap(),
        )
        .unwrap();
        let got: Vec<PieceResult> = store.pieces(ex.clone(), Reader::default()).collect();
        assert_eq!(got.len(), ex.len());
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.is_err(), i == 4, "piece {i}");
        }
        let e = got[4].as_ref().unwrap_err();
        assert_eq!(e.bad_chunk().map(|b| b.0), Some(id));
        assert!(e.to_string().contains(&offset.to_string()), "{e}");
    }

    #[test]
    fn a_run_is_read_into_place_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ex) = store_with(dir.path(), 5);
        let r = run_range(&ex);
        let mut buf = vec![0xAAu8; (r.end - r.start) as usize];
        let run = read_run_into(&store, &ex, &mut buf).unwrap();
        assert_eq!(run.extents(), &ex[..]);
        for e in &ex {
            let bytes = &buf[e.offset() as usize..(e.offset() + e.len()) as usize];
            match e {
                Extent::Chunk { id, .. } => assert_eq!(ChunkId::of(bytes), *id),
                Extent::Hole { .. } => assert!(bytes.iter().all(|&b| b == 0)),
            }
        }
        let Some(Extent::Chunk { id, .. }) = ex.last() else {
            panic!()
        };
        std::fs::remove_file(store.chunk_path(*id)).unwrap();
        let e = read_run_into(&store, &ex, &mut buf).unwrap_err();
        assert!(matches!(e, StoreError::MissingChunk { .. }), "{e}");
    }
}
