//! The ordered writer: takes verified pieces in image order and turns them into large aligned
//! writes on one target, zeroing holes, holding back the first MiB, and optionally skipping
//! writes where the target already holds the same bytes.
//!
//! Chunk boundaries are arbitrary byte offsets (content-defined chunking), but every [`Span`]
//! lays its bytes out congruent to their image offsets modulo 4096, so the aligned middle of a
//! span (nearly all of it) is written with O_DIRECT straight from the shared span buffer, with no
//! copy, whatever the number of targets. Only the partial 4 KiB blocks at a span's ends go through
//! a one-block buffer. Small holes are written as zeros; the aligned middle of large ones is
//! zeroed by the device ([`TargetDev::zero_range`]) instead of being written.
//!
//! [`Span`]: crate::span::Span

use image_store::ChunkId;
use serde::Serialize;

use crate::buffer::{ALIGN, AlignedBuf};
use crate::error::ImagerError;
use crate::layout::Layout;
use crate::span::{Piece, WrittenExtent};
use crate::target::TargetDev;

/// The protective MBR and primary GPT live here; written last, after everything is verified.
pub const HOLDBACK: u64 = 1 << 20;
/// Largest single write (spans are about 4 MiB; the rest of a span goes in one more call).
pub const WRITE_MAX: usize = 8 << 20;
/// Zeros kept for small holes.
const ZEROS: usize = 1 << 20;
/// Holes at least this long are zeroed by the device rather than written.
pub const BIG_HOLE: u64 = 1 << 20;

/// Byte counts of the writing phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WriteStats {
    /// Bytes written with write calls (data, small holes, the first MiB).
    pub bytes_written: u64,
    /// Bytes zeroed by the device (BLKZEROOUT, hole punch) or written as zeros beyond the image.
    pub bytes_zeroed: u64,
    /// Bytes not written because the target already held them (reuse).
    pub bytes_skipped: u64,
}

/// The writer for one target.
pub struct OrderedWriter<'a> {
    dev: &'a mut TargetDev,
    /// The aligned block holding `[pos rounded down, pos)` while `pos` is unaligned.
    block: AlignedBuf,
    zeros: AlignedBuf,
    scratch: Option<AlignedBuf>,
    pos: u64,
    size: u64,
    /// The image's first MiB (or all of it, if smaller), kept in memory until the end.
    pub holdback: Vec<u8>,
    /// Extents seen so far, holes merged.
    pub extents: Vec<WrittenExtent>,
    /// Counters.
    pub stats: WriteStats,
    /// Where image offsets land on the disk.
    layout: Layout,
}

const A: u64 = ALIGN as u64;

impl<'a> OrderedWriter<'a> {
    /// A writer for an image of `size` bytes. `reuse`: compare before writing.
    #[cfg(test)]
    pub fn new(dev: &'a mut TargetDev, size: u64, reuse: bool) -> Self {
        Self::with_layout(dev, size, reuse, Layout::IDENTITY)
    }

    /// A writer that puts image offset `o` at `layout.disk(o)` on the target.
    pub fn with_layout(dev: &'a mut TargetDev, size: u64, reuse: bool, layout: Layout) -> Self {
        OrderedWriter {
            dev,
            block: AlignedBuf::new(ALIGN),
            zeros: AlignedBuf::new(ZEROS),
            scratch: reuse.then(|| AlignedBuf::new(WRITE_MAX)),
            pos: 0,
            size,
            holdback: vec![0u8; size.min(HOLDBACK) as usize],
            extents: Vec::new(),
            stats: WriteStats::default(),
            layout,
        }
    }

    /// Image offset up to which pieces have been taken.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn record(&mut self, offset: u64, len: u64, id: Option<ChunkId>, offloaded: bool) {
        if id.is_none() {
            if let Some(last) = self.extents.last_mut() {
                if last.id.is_none()
                    && last.offloaded == offloaded
                    && last.offset + last.len == offset
                {
                    last.len += len;
                    return;
                }
            }
        }
        self.extents.push(WrittenExtent {
            offset,
            len,
            id,
            offloaded,
        });
    }

    /// Takes the next piece. Pieces must be contiguous; a piece that starts before the
    /// position (a restarted stream) is trimmed, and one entirely before it skipped.
    pub fn push(&mut self, piece: &Piece) -> Result<(), ImagerError> {
        let (offset, len) = piece.range();
        let pos = self.position();
        if offset + len <= pos {
            return Ok(());
        }
        if offset > pos || offset + len > self.size {
            return Err(ImagerError::BadImage {
                path: self.dev.path().to_path_buf(),
                reason: format!(
                    "piece at offset {offset} (+{len}) does not continue at {pos} within {}",
                    self.size
                ),
            });
        }
        let skip = pos - offset;
        match piece {
            Piece::Data(span) => {
                if skip != 0 {
                    return Err(ImagerError::BadImage {
                        path: self.dev.path().to_path_buf(),
                        reason: format!("restart inside a span at offset {offset}"),
                    });
                }
                for p in span.parts() {
                    self.record(p.offset, p.len, p.id, false);
                }
                self.put(span.data())
            }
            Piece::Hole { .. } => {
                let offloaded = self.hole(len - skip)?;
                self.record(pos, len - skip, None, offloaded);
                Ok(())
            }
        }
    }

    /// Takes `data`, the bytes at the position, whose address is congruent to the position
    /// modulo [`ALIGN`]: the held-back part is copied aside, a partial first block goes through
    /// the one-block buffer, the aligned middle is written straight from `data`.
    fn put(&mut self, mut data: &[u8]) -> Result<(), ImagerError> {
        debug_assert_eq!(data.as_ptr() as u64 % A, self.pos % A, "congruent layout");
        if self.pos < HOLDBACK && !data.is_empty() {
            let n = ((self.holdback.len() as u64 - self.pos) as usize).min(data.len());
            let p = self.pos as usize;
            self.holdback[p..p + n].copy_from_slice(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.pos % A != 0 {
            let i = (self.pos % A) as usize;
            let n = (ALIGN - i).min(data.len());
            self.block.as_mut_slice()[i..i + n].copy_from_slice(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.pos % A == 0 {
                let mut blk = std::mem::replace(&mut self.block, AlignedBuf::new(0));
                let r = self.write_out(blk.as_mut_slice(), self.pos - A);
                self.block = blk;
                r?;
            }
        }
        let middle = data.len() / ALIGN * ALIGN;
        let mut done = 0;
        while done < middle {
            let n = (middle - done).min(WRITE_MAX);
            self.write_out(&data[done..done + n], self.pos)?;
            self.pos += n as u64;
            done += n;
        }
        let rest = &data[middle..];
        self.block.as_mut_slice()[..rest.len()].copy_from_slice(rest);
        self.pos += rest.len() as u64;
        Ok(())
    }

    /// Writes (or, reusing, first compares) aligned bytes at an aligned image offset, at its
    /// place on the disk (cut in two where the layout map moves the rest).
    fn write_out(&mut self, data: &[u8], off: u64) -> Result<(), ImagerError> {
        if self.layout.is_identity() {
            return self.write_at_disk(data, off);
        }
        for (at, len, disk) in self.layout.pieces(off, data.len() as u64) {
            self.write_at_disk(&data[at as usize..(at + len) as usize], disk)?;
        }
        Ok(())
    }

    fn write_at_disk(&mut self, data: &[u8], off: u64) -> Result<(), ImagerError> {
        let same = match self.scratch.as_mut() {
            Some(s) => {
                let back = &mut s.as_mut_slice()[..data.len()];
                self.dev.read_at(back, off).is_ok() && back == data
            }
            None => false,
        };
        if same {
            self.stats.bytes_skipped += data.len() as u64;
        } else {
            self.dev.write_at(data, off)?;
            self.stats.bytes_written += data.len() as u64;
        }
        Ok(())
    }

    fn put_zeros(&mut self, mut len: u64) -> Result<(), ImagerError> {
        let zeros = std::mem::replace(&mut self.zeros, AlignedBuf::new(0));
        let mut r = Ok(());
        while len > 0 && r.is_ok() {
            let i = (self.pos % A) as usize;
            let n = ((zeros.capacity() - i) as u64).min(len) as usize;
            r = self.put(&zeros.as_slice()[i..i + n]);
            len -= n as u64;
        }
        self.zeros = zeros;
        r
    }

    /// Zeroes a hole; true when its aligned middle was zeroed by the device without transfer.
    fn hole(&mut self, len: u64) -> Result<bool, ImagerError> {
        let start = self.position();
        let end = start + len;
        let zstart = start.div_ceil(A) * A;
        let zend = end / A * A;
        if len < BIG_HOLE || zend <= zstart {
            self.put_zeros(len)?;
            return Ok(false);
        }
        self.put_zeros(zstart - start)?;
        // Inside the held-back first MiB the holdback buffer is already zero.
        let from = zstart.max(HOLDBACK);
        let mut offloaded = true;
        if zend > from {
            for (_, len, disk) in self.layout.pieces(from, zend - from) {
                offloaded &= self.dev.zero_range(disk, len)?.offloaded();
            }
            self.stats.bytes_zeroed += zend - from;
        }
        self.pos = zend;
        self.put_zeros(end - zend)?;
        Ok(offloaded)
    }

    /// Writes the image's last partial block. The image must have been taken completely.
    pub fn finish(&mut self) -> Result<(), ImagerError> {
        if self.position() != self.size {
            return Err(ImagerError::BadImage {
                path: self.dev.path().to_path_buf(),
                reason: format!("stream ended at {} of {} bytes", self.position(), self.size),
            });
        }
        let tail = (self.pos % A) as usize;
        if tail != 0 && self.pos > HOLDBACK {
            // Unaligned length: the target writes it through the page cache.
            let blk = std::mem::replace(&mut self.block, AlignedBuf::new(0));
            let r = self.write_out(&blk.as_slice()[..tail], self.pos - tail as u64);
            self.block = blk;
            r?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(offset: u64, len: usize, v: u8) -> Piece {
        crate::span::trusted_piece(offset, &vec![v; len])
    }

    fn target(len: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, vec![0xEEu8; len]).unwrap();
        (dir, p)
    }

    #[test]
    fn writes_everything_but_the_first_mib_and_zeroes_holes() {
        let (_d, p) = target(20 << 20);
        let mut dev = TargetDev::open(&p, 0).unwrap();
        let size = 12u64 << 20;
        let mut w = OrderedWriter::new(&mut dev, size, false);
        let pieces = [
            data(0, 1_500_000, 1),
            Piece::Hole {
                offset: 1_500_000,
                len: 100,
            },
            data(1_500_100, 3_000_000, 2),
            Piece::Hole {
                offset: 4_500_100,
                len: 5_000_000,
            },
            data(9_500_100, (size - 9_500_100) as usize, 3),
        ];
        for pc in &pieces {
            w.push(pc).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(w.holdback, vec![1u8; 1 << 20]);
        assert_eq!(w.extents.len(), 5);
        assert!(w.stats.bytes_zeroed > 4_000_000);
        let hb_len = w.holdback.len();
        drop(w);
        dev.sync().unwrap();
        let all = std::fs::read(&p).unwrap();
        assert!(
            all[..hb_len].iter().all(|&b| b == 0xEE),
            "first MiB held back"
        );
        assert!(all[hb_len..1_500_000].iter().all(|&b| b == 1));
        assert!(all[1_500_000..1_500_100].iter().all(|&b| b == 0));
        assert!(all[1_500_100..4_500_100].iter().all(|&b| b == 2));
        assert!(
            all[4_500_100..9_500_100].iter().all(|&b| b == 0),
            "no old data in holes"
        );
        assert!(all[9_500_100..size as usize].iter().all(|&b| b == 3));
        assert!(
            all[size as usize..].iter().all(|&b| b == 0xEE),
            "nothing beyond the image"
        );
    }

    #[test]
    fn reuse_skips_identical_ranges() {
        let (_d, p) = target(0);
        let size = 18u64 << 20;
        let pieces = [data(0, 9 << 20, 4), data(9 << 20, 9 << 20, 5)];
        let mut dev = TargetDev::open(&p, size).unwrap();
        let mut w = OrderedWriter::new(&mut dev, size, false);
        pieces.iter().for_each(|pc| w.push(pc).unwrap());
        w.finish().unwrap();
        let first = w.stats;
        drop(w);
        let mut w = OrderedWriter::new(&mut dev, size, true);
        pieces.iter().for_each(|pc| w.push(pc).unwrap());
        w.finish().unwrap();
        assert_eq!(first.bytes_skipped, 0);
        assert_eq!(w.stats.bytes_written, 0);
        assert_eq!(w.stats.bytes_skipped, size - HOLDBACK);
    }

    #[test]
    fn gaps_and_overruns_are_errors_and_restarts_trim() {
        let (_d, p) = target(0);
        let mut dev = TargetDev::open(&p, 4 << 20).unwrap();
        let mut w = OrderedWriter::new(&mut dev, 4 << 20, false);
        w.push(&data(0, 1000, 1)).unwrap();
        assert!(w.push(&data(2000, 10, 1)).is_err());
        w.push(&data(0, 1000, 1)).unwrap(); // already taken: skipped
        w.push(&Piece::Hole {
            offset: 500,
            len: 1000,
        })
        .unwrap(); // trimmed
        assert_eq!(w.position(), 1500);
        assert!(w.push(&data(1500, 5 << 20, 1)).is_err());
        let e = w.finish().unwrap_err();
        assert!(e.to_string().contains("stream ended at 1500"), "{e}");
    }
}
