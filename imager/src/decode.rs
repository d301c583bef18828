//! The decode stage: a pool of worker threads that turn read jobs (compressed chunks, raw blocks)
//! into verified [`Piece`]s, delivered strictly in image order.
//!
//! Shape: `reader thread -> bounded work queue -> N workers -> result queue -> orderer thread ->
//! bounded output`. Memory stays bounded by a token pool: the reader takes a token before it
//! dispatches a job and the orderer gives it back once that job's pieces left in order, so at most
//! `depth` jobs exist at once, however slow one worker is.
//!
//! A job that fails (a corrupt chunk) is emitted as an `Err` at its place in the order and ends
//! the stream: the pieces before it are delivered, nothing of it or after it is.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, bounded};
use image_store::{CompressedChunk, Piece, VerifiedChunk};

use crate::buffer::is_zero;
use crate::error::ImagerError;

/// One unit of work for a decode worker.
#[derive(Debug)]
pub enum Job {
    /// A chunk as stored: decompress and check its hash.
    Compressed(CompressedChunk),
    /// Raw bytes from a one-off image file at `offset`: find zero runs, hash the rest.
    Raw {
        /// Image offset of `data[0]`.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
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

/// Splits raw bytes into data pieces and holes at [`ZERO_BLOCK`] granularity.
pub fn split_raw(offset: u64, data: Vec<u8>) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut runs: Vec<(usize, usize, bool)> = Vec::new(); // (start, end, zero)
    for (i, block) in data.chunks(ZERO_BLOCK).enumerate() {
        let start = i * ZERO_BLOCK;
        let zero = is_zero(block);
        match runs.last_mut() {
            Some(r) if r.2 == zero => r.1 = start + block.len(),
            _ => runs.push((start, start + block.len(), zero)),
        }
    }
    if runs.len() == 1 && !runs[0].2 {
        return vec![Piece::Data(VerifiedChunk::from_trusted_source(
            offset, data,
        ))];
    }
    for (s, e, zero) in runs {
        if zero {
            out.push(Piece::Hole {
                offset: offset + s as u64,
                len: (e - s) as u64,
            });
        } else {
            let bytes = data[s..e].to_vec();
            out.push(Piece::Data(VerifiedChunk::from_trusted_source(
                offset + s as u64,
                bytes,
            )));
        }
    }
    out
}

/// Runs a job: the only place compressed bytes become a [`VerifiedChunk`].
pub fn run_job(job: Job) -> Result<Vec<Piece>, ImagerError> {
    match job {
        Job::Compressed(c) => Ok(vec![Piece::Data(c.decompress_verify()?)]),
        Job::Raw { offset, data } => Ok(split_raw(offset, data)),
        Job::Hole { offset, len } => Ok(vec![Piece::Hole { offset, len }]),
    }
}

/// Starts the pipeline over `jobs` (run on a reader thread, which does the source I/O) with
/// `workers` decode threads. `on_error` sees each failed job's error once (the store uses it to
/// quarantine a corrupt chunk). At most `depth` jobs are in flight.
pub fn spawn<I, F>(jobs: I, workers: usize, depth: usize, on_error: F) -> Receiver<Item>
where
    I: Iterator<Item = Result<Job, ImagerError>> + Send + 'static,
    F: Fn(&ImagerError) + Send + Sync + 'static,
{
    let depth = depth.max(1);
    let (tok_tx, tok_rx) = bounded::<()>(depth);
    for _ in 0..depth {
        tok_tx.send(()).expect("token pool has room");
    }
    let (work_tx, work_rx) = bounded::<(u64, Result<Job, ImagerError>)>(depth);
    let (res_tx, res_rx) = bounded::<(u64, Result<Vec<Piece>, ImagerError>)>(depth);
    let (out_tx, out_rx) = bounded::<Item>(depth);

    std::thread::Builder::new()
        .name("tek-read".into())
        .spawn(move || {
            for (seq, job) in jobs.enumerate() {
                let failed = job.is_err();
                if tok_rx.recv().is_err() || work_tx.send((seq as u64, job)).is_err() {
                    return; // the consumer went away
                }
                if failed {
                    return;
                }
            }
        })
        .expect("spawning reader thread");

    let on_error = Arc::new(on_error);
    for i in 0..workers.max(1) {
        let work_rx = work_rx.clone();
        let res_tx = res_tx.clone();
        let on_error = on_error.clone();
        std::thread::Builder::new()
            .name(format!("tek-decode-{i}"))
            .spawn(move || {
                for (seq, job) in work_rx {
                    let r = job.and_then(run_job);
                    if let Err(e) = &r {
                        on_error(e);
                    }
                    if res_tx.send((seq, r)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning decode thread");
    }
    drop(res_tx);

    std::thread::Builder::new()
        .name("tek-order".into())
        .spawn(move || {
            let mut next = 0u64;
            let mut waiting: BTreeMap<u64, Result<Vec<Piece>, ImagerError>> = BTreeMap::new();
            for (seq, r) in res_rx {
                waiting.insert(seq, r);
                while let Some(r) = waiting.remove(&next) {
                    next += 1;
                    match r {
                        Ok(pieces) => {
                            for p in pieces {
                                if out_tx.send(Ok(Arc::new(p))).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = out_tx.send(Err(Arc::new(e)));
                            return; // ends the stream: drops the tokens, the reader stops
                        }
                    }
                    // The reader may have finished (and dropped its end): that is fine.
                    let _ = tok_tx.send(());
                }
            }
        })
        .expect("spawning orderer thread");
    out_rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_store::ChunkId;

    fn compressed(offset: u64, data: &[u8]) -> CompressedChunk {
        CompressedChunk {
            id: ChunkId::of(data),
            offset,
            len: data.len() as u64,
            data: zstd::bulk::compress(data, 1).unwrap(),
        }
    }

    #[test]
    fn split_raw_finds_zero_blocks() {
        let mut data = vec![1u8; ZERO_BLOCK * 4];
        data[ZERO_BLOCK..ZERO_BLOCK * 3].fill(0);
        let p = split_raw(1000, data);
        assert_eq!(p.len(), 3);
        assert!(
            matches!(p[1], Piece::Hole { offset, len } if offset == 1000 + ZERO_BLOCK as u64 && len == 2 * ZERO_BLOCK as u64)
        );
        match &p[2] {
            Piece::Data(c) => assert_eq!(c.offset(), 1000 + 3 * ZERO_BLOCK as u64),
            _ => panic!(),
        }
    }

    #[test]
    fn output_is_in_order_with_many_workers() {
        let jobs: Vec<_> = (0..200u64)
            .map(|i| {
                let data = vec![(i % 250 + 1) as u8; 1000 + (i as usize * 37) % 5000];
                Ok(Job::Compressed(compressed(i * 10_000, &data)))
            })
            .collect();
        let rx = spawn(jobs.into_iter(), 4, 3, |_| {});
        let offs: Vec<u64> = rx
            .iter()
            .map(|i| match &*i.unwrap() {
                Piece::Data(c) => c.offset(),
                Piece::Hole { offset, .. } => *offset,
            })
            .collect();
        assert_eq!(offs, (0..200).map(|i| i * 10_000).collect::<Vec<_>>());
    }

    #[test]
    fn corrupt_chunk_ends_stream_after_earlier_pieces() {
        let good = compressed(0, &[1u8; 100]);
        let mut bad = compressed(100, &[2u8; 100]);
        bad.data = zstd::bulk::compress(&[3u8; 100], 1).unwrap();
        let after = compressed(200, &[4u8; 100]);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let jobs = vec![
            Ok(Job::Compressed(good)),
            Ok(Job::Compressed(bad)),
            Ok(Job::Compressed(after)),
        ];
        let rx = spawn(jobs.into_iter(), 2, 4, move |e| {
            s2.lock().unwrap().push(e.offset())
        });
        let items: Vec<Item> = rx.iter().collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        let e = items[1].as_ref().unwrap_err();
        assert_eq!(e.offset(), Some(100));
        assert!(e.to_string().contains("hash mismatch"), "{e}");
        assert_eq!(*seen.lock().unwrap(), vec![Some(100)]);
    }

    #[test]
    fn dropping_the_receiver_stops_the_threads() {
        let jobs = (0..).map(|i| {
            Ok(Job::Hole {
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
