//! Read-back verification: after the writes and a flush, read every extent back with the page
//! cache out of the way (O_DIRECT, or BLKFLSBUF / POSIX_FADV_DONTNEED first) and compare BLAKE3
//! with the expected id; zeros where the image has holes.
//!
//! The first MiB is not on the target yet (it is written last); its bytes are taken from the
//! held-back buffer, which holds verified chunk data, so extents crossing 1 MiB still hash whole.
//! Holes the device zeroed itself (BLKZEROOUT / punched) are sampled rather than read in full
//! unless asked: the kernel already guarantees them, and reading gigabytes of zeros would double
//! the time on a slow disk. Each sample is a 64 KiB block at both ends and every 64 MiB.

use crate::buffer::{AlignedBuf, is_zero};
use crate::error::ImagerError;
use crate::target::TargetDev;
use crate::writer::{BIG_HOLE, HOLDBACK, WrittenExtent};

/// Size of one read-back request.
pub const READ_BUF: usize = 8 << 20;
/// Distance between samples inside a large zeroed hole.
pub const SAMPLE_EVERY: u64 = 64 << 20;
/// Size of one sample.
pub const SAMPLE_LEN: u64 = 64 << 10;
/// At most this many mismatch offsets are kept for the report.
pub const MAX_MISMATCHES: usize = 1000;

/// Outcome of a read-back.
#[derive(Debug, Default, Clone)]
pub struct VerifyOutcome {
    /// Bytes read from the target and compared.
    pub bytes_verified: u64,
    /// Image offsets of extents that did not match.
    pub mismatches: Vec<u64>,
}

/// Sequential reader with a large aligned window.
struct Window<'a> {
    dev: &'a mut TargetDev,
    holdback: &'a [u8],
    buf: AlignedBuf,
    start: u64,
    len: usize,
    limit: u64,
    read: u64,
}

impl Window<'_> {
    /// Calls `f` on the bytes of `[off, off+len)` in pieces, in order.
    fn visit(
        &mut self,
        mut off: u64,
        len: u64,
        readahead: bool,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ImagerError> {
        let end = off + len;
        while off < end {
            if off < self.holdback.len() as u64 {
                let e = end.min(self.holdback.len() as u64);
                f(&self.holdback[off as usize..e as usize]);
                off = e;
                continue;
            }
            if !(self.start <= off && off < self.start + self.len as u64) {
                let a = crate::buffer::ALIGN as u64;
                self.start = off / a * a;
                let need = if readahead {
                    u64::MAX
                } else {
                    end - self.start
                };
                let want = (self.buf.capacity() as u64)
                    .min(need)
                    .min(self.limit - self.start);
                let want_al = want.div_ceil(a) * a;
                let start = self.start;
                let direct_ok = start + want_al <= self.limit;
                let n = if direct_ok { want_al } else { want } as usize;
                self.dev.read_at(&mut self.buf.as_mut_slice()[..n], start)?;
                self.len = want as usize;
                self.read += want;
            }
            let i = (off - self.start) as usize;
            let e = (end - self.start).min(self.len as u64) as usize;
            f(&self.buf.as_slice()[i..e]);
            off = self.start + e as u64;
        }
        Ok(())
    }
}

/// Reads `extents` back from `dev` and compares. `full_holes`: read large holes completely.
pub fn verify_extents(
    dev: &mut TargetDev,
    extents: &[WrittenExtent],
    holdback: &[u8],
    image_size: u64,
    full_holes: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyOutcome, ImagerError> {
    let mut out = VerifyOutcome::default();
    let mut w = Window {
        dev,
        holdback,
        buf: AlignedBuf::new(READ_BUF),
        start: 0,
        len: 0,
        limit: image_size,
        read: 0,
    };
    for ext in extents {
        let ok = match ext.id {
            Some(id) => {
                let mut h = blake3::Hasher::new();
                w.visit(ext.offset, ext.len, true, &mut |b| {
                    h.update(b);
                })?;
                h.finalize().as_bytes() == &id.0
            }
            None => {
                let mut zero = true;
                let mut check = |b: &[u8]| zero &= is_zero(b);
                let big = ext.len >= BIG_HOLE && ext.offset + ext.len > HOLDBACK;
                if full_holes || !big || !ext.offloaded {
                    w.visit(ext.offset, ext.len, true, &mut check)?;
                } else {
                    let end = ext.offset + ext.len;
                    let mut at = ext.offset;
                    while at < end {
                        w.visit(at, SAMPLE_LEN.min(end - at), false, &mut check)?;
                        at += SAMPLE_EVERY;
                    }
                    let tail = end.saturating_sub(SAMPLE_LEN).max(ext.offset);
                    w.visit(tail, end - tail, false, &mut check)?;
                }
                zero
            }
        };
        if !ok && out.mismatches.len() < MAX_MISMATCHES {
            out.mismatches.push(ext.offset);
        }
        progress(ext.offset + ext.len);
    }
    out.bytes_verified = w.read;
    Ok(out)
}

/// Reads `[off, off+expected.len())` back and returns the offsets (in 4 KiB steps) that differ.
pub fn verify_bytes(
    dev: &mut TargetDev,
    off: u64,
    expected: &[u8],
) -> Result<Vec<u64>, ImagerError> {
    let a = crate::buffer::ALIGN as u64;
    let start = off / a * a;
    let end = (off + expected.len() as u64).div_ceil(a) * a;
    let end = end.min(dev.size().max(off + expected.len() as u64));
    let mut buf = AlignedBuf::new((end - start) as usize);
    dev.read_at(&mut buf.as_mut_slice()[..(end - start) as usize], start)?;
    let got = &buf.as_slice()[(off - start) as usize..(off - start) as usize + expected.len()];
    Ok(got
        .chunks(4096)
        .zip(expected.chunks(4096))
        .enumerate()
        .filter(|(_, (g, e))| g != e)
        .map(|(i, _)| off + i as u64 * 4096)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::trusted_piece;
    use crate::writer::OrderedWriter;
    use std::os::unix::fs::FileExt;

    fn write_image(p: &std::path::Path, size: u64) -> (Vec<WrittenExtent>, Vec<u8>) {
        std::fs::write(p, b"").unwrap();
        let mut dev = TargetDev::open(p, size).unwrap();
        let mut w = OrderedWriter::new(&mut dev, size, false);
        let a: Vec<u8> = (0..3_000_001u32).map(|i| (i % 241) as u8).collect();
        w.push(&trusted_piece(0, &a)).unwrap();
        w.push(&crate::decode::Piece::Hole {
            offset: 3_000_001,
            len: 20_000_000,
        })
        .unwrap();
        let rest = (size - 23_000_001) as usize;
        w.push(&trusted_piece(23_000_001, &vec![9; rest])).unwrap();
        w.finish().unwrap();
        (w.extents.clone(), w.holdback.clone())
    }

    #[test]
    fn clean_write_verifies_and_corruption_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let size = 24u64 << 20;
        let (ext, hb) = write_image(&p, size);
        let mut dev = TargetDev::open(&p, 0).unwrap();
        dev.sync().unwrap();
        let ok = verify_extents(&mut dev, &ext, &hb, size, false, &mut |_| {}).unwrap();
        assert!(ok.mismatches.is_empty(), "{:?}", ok.mismatches);
        assert!(ok.bytes_verified < size, "big hole sampled");
        let full = verify_extents(&mut dev, &ext, &hb, size, true, &mut |_| {}).unwrap();
        assert!(full.bytes_verified >= size - HOLDBACK);

        // Old data in the hole, a flipped byte in the last chunk.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[1], 3_000_001 + 64 * 1024 * 3 / 2).unwrap();
        f.write_all_at(&[1], size - 5).unwrap();
        drop(f);
        let bad = verify_extents(&mut dev, &ext, &hb, size, true, &mut |_| {}).unwrap();
        assert_eq!(bad.mismatches, vec![3_000_001, 23_000_001]);
        let diff = verify_bytes(&mut dev, size - 8192, &vec![9u8; 8192]).unwrap();
        assert_eq!(diff, vec![size - 4096]);
    }
}
