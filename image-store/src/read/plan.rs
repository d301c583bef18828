//! Cutting a manifest into read jobs: runs of consecutive chunks (and small holes) of about
//! [`RUN_BYTES`], so a job costs a few channel hops instead of a few per chunk, and big holes
//! alone, so a writer can zero them by device instead of receiving zeros.

use std::ops::Range;

use crate::manifest::Extent;

/// Image bytes per run (a run may exceed it by one chunk when a single chunk is larger).
pub const RUN_BYTES: u64 = 4 << 20;

/// One job of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadJob {
    /// Consecutive extents (indices into the planned slice): chunks and holes shorter than the
    /// big-hole size.
    Run(Range<usize>),
    /// A hole at least the big-hole size: no bytes to read.
    Hole {
        /// Offset in the image.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// Plans `extents`: runs up to [`RUN_BYTES`]; holes of `big_hole` bytes or more stand alone.
/// The jobs cover every extent once, in order.
pub fn plan(extents: &[Extent], big_hole: u64) -> Vec<ReadJob> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, e) in extents.iter().enumerate() {
        let big = matches!(e, Extent::Hole { len, .. } if *len >= big_hole);
        if big || (i > start && bytes + e.len() > RUN_BYTES) {
            if i > start {
                out.push(ReadJob::Run(start..i));
            }
            start = i;
            bytes = 0;
        }
        if let (true, Extent::Hole { offset, len }) = (big, e) {
            out.push(ReadJob::Hole {
                offset: *offset,
                len: *len,
            });
            start = i + 1;
            continue;
        }
        bytes += e.len();
    }
    if start < extents.len() {
        out.push(ReadJob::Run(start..extents.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkId;

    #[test]
    fn big_holes_stand_alone_and_runs_are_bounded() {
        let mut ex = Vec::new();
        let mut at = 0;
        let mut push = |chunk: bool, len: u64, ex: &mut Vec<Extent>| {
            ex.push(if chunk {
                Extent::Chunk {
                    offset: at,
                    len,
                    id: ChunkId([0; 32]),
                }
            } else {
                Extent::Hole { offset: at, len }
            });
            at += len;
        };
        for _ in 0..100 {
            push(true, 100_000, &mut ex);
        }
        push(false, 20_000, &mut ex); // small hole: inside a run
        push(true, 100_000, &mut ex);
        push(false, 5 << 20, &mut ex); // big hole: alone
        push(true, 100_000, &mut ex);
        let jobs = plan(&ex, 1 << 20);
        let mut next = 0;
        for j in &jobs {
            match j {
                ReadJob::Run(r) => {
                    assert_eq!(r.start, next);
                    next = r.end;
                    let bytes: u64 = ex[r.clone()].iter().map(|e| e.len()).sum();
                    assert!(bytes <= RUN_BYTES || r.len() == 1);
                }
                ReadJob::Hole { offset, len } => {
                    assert_eq!((ex[next].offset(), ex[next].len()), (*offset, *len));
                    assert_eq!(*len, 5 << 20);
                    next += 1;
                }
            }
        }
        assert_eq!(next, ex.len());
        assert_eq!(
            jobs.iter()
                .filter(|j| matches!(j, ReadJob::Hole { .. }))
                .count(),
            1
        );
    }
}
