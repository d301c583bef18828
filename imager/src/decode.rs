//! The decode stage: a pool of worker threads that turn jobs (runs of store extents, raw blocks)
//! into verified [`Piece`]s, delivered strictly in image order.
//!
//! The pool, the ordering and the memory bound are the store's one reader engine
//! ([`image_store::read::order`]): `job thread -> workers -> orderer -> bounded output`, at most
//! `depth` jobs in flight however slow one worker or the writers are. Store jobs are the store
//! reader's runs of about 4 MiB (dozens of chunks, [`image_store::read::plan`]): the workers read
//! the chunk files themselves through [`image_store::read::read_run_into`], so file opens, reads,
//! zstd and hashing run on every core. Raw-file jobs come from [`crate::reader`].
//!
//! A job that fails (a corrupt chunk) is emitted as an `Err` at its place in the order and ends
//! the stream: the pieces before it are delivered, nothing of it or after it is.

use std::sync::Arc;

use crossbeam_channel::Receiver;
use image_store::read::order;
use image_store::{Extent, Store};

use crate::buffer::{AlignedBuf, is_zero};
use crate::error::ImagerError;
use crate::span::{self, Piece, Span};

/// One unit of work for a decode worker.
#[derive(Debug)]
pub enum Work {
    /// Consecutive store extents: the worker reads the chunk files (so file I/O runs on every
    /// worker, not one reader thread), decompresses them into one span and checks every hash.
    Stored {
        /// The store.
        store: Arc<Store>,
        /// Consecutive extents (chunks and small holes).
        extents: Vec<Extent>,
    },
    /// Raw bytes from a one-off image file at `offset`, laid out by [`span::buf_for`]: find
    /// zero runs, hash the rest.
    Raw {
        /// Image offset of the first byte.
        offset: u64,
        /// The buffer.
        buf: AlignedBuf,
        /// Lead-in of the first byte in `buf`.
        lead: usize,
        /// Bytes.
        len: usize,
    },
    /// A known run of zeros.
    Hole {
        /// Image offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// What the stream yields: a shared piece (fanned out to every target) or the error that ended
/// the stream.
pub type Item = Result<Arc<Piece>, Arc<ImagerError>>;

/// Granularity of zero detection in raw images: a 64 KiB all-zero block becomes a hole.
pub const ZERO_BLOCK: usize = 64 * 1024;

/// Splits raw bytes into data spans and holes at [`ZERO_BLOCK`] granularity (blocks aligned
/// to the image offset). A block without zero runs is used in place; mixed ones are copied.
pub fn split_raw(offset: u64, buf: AlignedBuf, lead: usize, len: usize) -> Vec<Piece> {
    let data = &buf.as_slice()[lead..lead + len];
    let mut runs: Vec<(usize, usize, bool)> = Vec::new(); // (start, end, zero)
    let mut start = 0;
    while start < len {
        let next = ((offset as usize + start) / ZERO_BLOCK + 1) * ZERO_BLOCK - offset as usize;
        let end = next.min(len);
        let zero = is_zero(&data[start..end]);
        match runs.last_mut() {
            Some(r) if r.2 == zero => r.1 = end,
            _ => runs.push((start, end, zero)),
        }
        start = end;
    }
    if runs.len() == 1 && !runs[0].2 {
        return vec![Piece::Data(Span::from_trusted(offset, buf, lead, len))];
    }
    let mut out = Vec::with_capacity(runs.len());
    for (s, e, zero) in runs {
        let at = offset + s as u64;
        if zero {
            out.push(Piece::Hole {
                offset: at,
                len: (e - s) as u64,
            });
        } else {
            let (mut b, l) = span::buf_for(at, e - s);
            b.as_mut_slice()[l..l + e - s].copy_from_slice(&data[s..e]);
            out.push(Piece::Data(Span::from_trusted(at, b, l, e - s)));
        }
    }
    span::give_buf(buf);
    out
}

/// Runs a job: the only place source bytes become a [`Span`].
pub fn run_job(job: Work) -> Result<Vec<Piece>, ImagerError> {
    match job {
        Work::Stored { store, extents } => {
            Ok(vec![Piece::Data(Span::from_chunks(&store, &extents)?)])
        }
        Work::Raw {
            offset,
            buf,
            lead,
            len,
        } => Ok(split_raw(offset, buf, lead, len)),
        Work::Hole { offset, len } => Ok(vec![Piece::Hole { offset, len }]),
    }
}

/// Starts the pipeline over `jobs` (run on a job thread, which does a file source's I/O) with
/// `workers` decode threads. `on_error` sees each failed job's error once (the store uses it to
/// quarantine a corrupt chunk). At most `depth` jobs are in flight; the first error ends the
/// stream, and a failed source is not asked for more jobs.
pub fn spawn<I, F>(jobs: I, workers: usize, depth: usize, on_error: F) -> Receiver<Item>
where
    I: Iterator<Item = Result<Work, ImagerError>> + Send + 'static,
    F: Fn(&ImagerError) + Send + Sync + 'static,
{
    order::ordered(
        "tek-decode",
        order::until_error(jobs),
        workers,
        depth,
        move |job: Result<Work, ImagerError>| match job.and_then(run_job) {
            Ok(pieces) => pieces.into_iter().map(|p| Ok(Arc::new(p))).collect(),
            Err(e) => {
                on_error(&e);
                vec![Err(Arc::new(e))]
            }
        },
        |item: &Item| item.is_err(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_store::ChunkId;

    fn raw(offset: u64, data: &[u8]) -> Work {
        let (mut buf, lead) = span::buf_for(offset, data.len());
        buf.as_mut_slice()[lead..lead + data.len()].copy_from_slice(data);
        Work::Raw {
            offset,
            buf,
            lead,
            len: data.len(),
        }
    }

    fn offset_of(p: &Piece) -> u64 {
        p.range().0
    }

    #[test]
    fn split_raw_finds_zero_blocks() {
        let mut data = vec![1u8; ZERO_BLOCK * 4];
        data[ZERO_BLOCK..ZERO_BLOCK * 3].fill(0);
        let Work::Raw {
            offset,
            buf,
            lead,
            len,
        } = raw(0, &data)
        else {
            panic!()
        };
        let p = split_raw(offset, buf, lead, len);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].range(), (ZERO_BLOCK as u64, 2 * ZERO_BLOCK as u64));
        match &p[2] {
            Piece::Data(c) => {
                assert_eq!(c.offset(), 3 * ZERO_BLOCK as u64);
                assert_eq!(c.data(), &data[3 * ZERO_BLOCK..]);
            }
            _ => panic!(),
        }
    }

    /// A store with `n` chunks of distinct bytes; returns it and the extents.
    fn store_with(dir: &std::path::Path, n: u64) -> (Arc<Store>, Vec<Extent>) {
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
        }
        (Arc::new(store), ex)
    }

    #[test]
    fn output_is_in_order_with_many_workers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ex) = store_with(dir.path(), 200);
        let jobs: Vec<_> = ex
            .chunks(7)
            .map(|c| {
                Ok(Work::Stored {
                    store: store.clone(),
                    extents: c.to_vec(),
                })
            })
            .collect();
        let rx = spawn(jobs.into_iter(), 4, 3, |_| {});
        let offs: Vec<u64> = rx.iter().map(|i| offset_of(&i.unwrap())).collect();
        let want: Vec<u64> = ex.chunks(7).map(|c| c[0].offset()).collect();
        assert_eq!(offs, want);
    }

    #[test]
    fn corrupt_chunk_ends_stream_after_earlier_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ex) = store_with(dir.path(), 6);
        let Extent::Chunk { id, offset, .. } = ex[3] else {
            panic!()
        };
        std::fs::write(
            store.chunk_path(id),
            zstd::bulk::compress(&[3u8; 100], 1).unwrap(),
        )
        .unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let jobs: Vec<_> = ex
            .chunks(2)
            .map(|c| {
                Ok(Work::Stored {
                    store: store.clone(),
                    extents: c.to_vec(),
                })
            })
            .collect();
        let rx = spawn(jobs.into_iter(), 2, 4, move |e| {
            s2.lock().unwrap().push(e.offset())
        });
        let items: Vec<Item> = rx.iter().collect();
        assert_eq!(
            items.len(),
            2,
            "the span holding the bad chunk is not emitted"
        );
        assert!(items[0].is_ok());
        let e = items[1].as_ref().unwrap_err();
        assert_eq!(e.offset(), Some(offset));
        assert_eq!(*seen.lock().unwrap(), vec![Some(offset)]);
    }

    #[test]
    fn dropping_the_receiver_stops_the_threads() {
        let jobs = (0..).map(|i| {
            Ok(Work::Hole {
                offset: i * 10,
                len: 10,
            })
        });
        let rx = spawn(jobs, 2, 2, |_| {});
        let first = rx.recv().unwrap().unwrap();
        assert!(matches!(*first, Piece::Hole { offset: 0, .. }));
        drop(rx); // the infinite reader must notice and exit (the test would hang otherwise)
    }
}
