//! Read-back verification: after the writes and a flush, read every extent back with the page
//! cache out of the way (O_DIRECT, or BLKFLSBUF / POSIX_FADV_DONTNEED first) and compare BLAKE3
//! with the expected id; zeros where the image has holes.
//!
//! The first MiB is not on the target yet (it is written last); its bytes are taken from the
//! held-back buffer, which holds verified chunk data, so extents crossing 1 MiB still hash whole.
//! Holes the device zeroed without any data transfer (WRITE ZEROES with unmap, a loop device's
//! discard, a punched file: [`crate::target::ZeroMethod::offloaded`]) are sampled rather than
//! read in full unless asked: the command's contract guarantees zeros, nothing travelled that
//! could be damaged on the way, and reading gigabytes of zeros would double the time on a slow
//! disk. Each sample is a 64 KiB block at both ends and every 64 MiB. Zeros that were written
//! (small holes, zeros inside spans, BLKZEROOUT emulated by the kernel, our own zero writes) are
//! read back completely, like data.
//!
//! A read-ahead thread reads the planned ranges (8 MiB O_DIRECT reads, three buffers in flight)
//! while this thread hashes, so the disk never waits for BLAKE3.

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

/// One block read back: target offset, buffer, valid bytes.
type Block = (u64, AlignedBuf, usize);

/// The ranges of `ext` that read-back looks at (ascending, disjoint).
fn ranges_of(ext: &WrittenExtent, full_holes: bool) -> Vec<(u64, u64)> {
    let end = ext.offset + ext.len;
    let sample =
        ext.id.is_none() && ext.offloaded && !full_holes && ext.len >= BIG_HOLE && end > HOLDBACK;
    if !sample {
        return vec![(ext.offset, end)];
    }
    let mut v = Vec::new();
    let mut at = ext.offset;
    while at < end {
        v.push((at, (at + SAMPLE_LEN).min(end)));
        at += SAMPLE_EVERY;
    }
    let last = v.last().map(|r| r.1).unwrap_or(ext.offset);
    let tail = end.saturating_sub(SAMPLE_LEN).max(last);
    if tail < end {
        v.push((tail, end));
    }
    v
}

/// What to read from the target: every looked-at range at or past `from` (below it the bytes
/// come from the held-back buffer), widened to 4 KiB for O_DIRECT and merged.
fn read_plan(ranges: &[Vec<(u64, u64)>], from: u64, limit: u64) -> Vec<(u64, u64)> {
    let a = crate::buffer::ALIGN as u64;
    let mut plan: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in ranges.iter().flatten() {
        let s = s.max(from);
        if s >= e {
            continue;
        }
        let (s, e) = (s / a * a, e.div_ceil(a).saturating_mul(a).min(limit));
        match plan.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => plan.push((s, e)),
        }
    }
    plan
}

/// The consumer's side of the read-ahead: blocks arrive in order, buffers go back for reuse.
struct Blocks<'a> {
    rx: crossbeam_channel::Receiver<Result<Block, ImagerError>>,
    back: crossbeam_channel::Sender<AlignedBuf>,
    cur: Option<Block>,
    holdback: &'a [u8],
    path: &'a std::path::Path,
}

impl Blocks<'_> {
    /// Calls `f` on the bytes of `[a, b)` in pieces, in order; `a` never goes backwards.
    fn visit(&mut self, mut a: u64, b: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), ImagerError> {
        while a < b {
            if a < self.holdback.len() as u64 {
                let e = b.min(self.holdback.len() as u64);
                f(&self.holdback[a as usize..e as usize]);
                a = e;
                continue;
            }
            while !matches!(&self.cur, Some((s, _, n)) if a < s + *n as u64) {
                if let Some((_, buf, _)) = self.cur.take() {
                    let _ = self.back.send(buf);
                }
                match self.rx.recv() {
                    Ok(Ok(blk)) => self.cur = Some(blk),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(ImagerError::Target {
                            action: "reading back",
                            path: self.path.to_path_buf(),
                            offset: a,
                            source: std::io::Error::other("read-ahead ended early"),
                        });
                    }
                }
            }
            let (s, buf, n) = self.cur.as_ref().expect("block just loaded");
            let i = (a - s) as usize;
            let e = ((b - s) as usize).min(*n);
            f(&buf.as_slice()[i..e]);
            a = s + e as u64;
        }
        Ok(())
    }
}

/// Buffers in flight between the read-ahead thread and the hashing.
const READ_AHEAD: usize = 3;

/// Reads `extents` back from `dev` and compares. `full_holes`: read large holes completely.
/// A read-ahead thread keeps the device busy while this thread hashes.
pub fn verify_extents(
    dev: &mut TargetDev,
    extents: &[WrittenExtent],
    holdback: &[u8],
    image_size: u64,
    full_holes: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyOutcome, ImagerError> {
    let ranges: Vec<Vec<(u64, u64)>> = extents.iter().map(|e| ranges_of(e, full_holes)).collect();
    let plan = read_plan(&ranges, holdback.len() as u64, image_size);
    let path = dev.path().to_path_buf();
    let mut out = VerifyOutcome {
        bytes_verified: plan.iter().map(|r| r.1 - r.0).sum(),
        ..Default::default()
    };
    let (tx, rx) = crossbeam_channel::bounded::<Result<Block, ImagerError>>(READ_AHEAD - 1);
    let (back, bufs) = crossbeam_channel::bounded::<AlignedBuf>(READ_AHEAD);
    for _ in 0..READ_AHEAD {
        back.send(AlignedBuf::new(READ_BUF))
            .expect("room for buffers");
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            for (start, end) in plan {
                let mut at = start;
                while at < end {
                    let Ok(mut buf) = bufs.recv() else { return };
                    let n = (end - at).min(READ_BUF as u64) as usize;
                    let r = dev.read_at(&mut buf.as_mut_slice()[..n], at);
                    let failed = r.is_err();
                    if tx.send(r.map(|()| (at, buf, n))).is_err() || failed {
                        return;
                    }
                    at += n as u64;
                }
            }
        });
        let mut blocks = Blocks {
            rx,
            back,
            cur: None,
            holdback,
            path: &path,
        };
        for (ext, ranges) in extents.iter().zip(&ranges) {
            let ok = match ext.id {
                Some(id) => {
                    let mut h = blake3::Hasher::new();
                    for &(a, b) in ranges {
                        blocks.visit(a, b, &mut |d| {
                            h.update(d);
                        })?;
                    }
                    h.finalize().as_bytes() == &id.0
                }
                None => {
                    let mut zero = true;
                    for &(a, b) in ranges {
                        blocks.visit(a, b, &mut |d| zero &= is_zero(d))?;
                    }
                    zero
                }
            };
            if !ok && out.mismatches.len() < MAX_MISMATCHES {
                out.mismatches.push(ext.offset);
            }
            progress(ext.offset + ext.len);
        }
        Ok(out)
    })
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
    use crate::decode::Piece;
    use crate::span::trusted_piece;
    use crate::writer::OrderedWriter;
    use std::os::unix::fs::FileExt;

    fn write_image(p: &std::path::Path, size: u64) -> (Vec<WrittenExtent>, Vec<u8>) {
        std::fs::write(p, b"").unwrap();
        let mut dev = TargetDev::open(p, size).unwrap();
        let mut w = OrderedWriter::new(&mut dev, size, false);
        let a: Vec<u8> = (0..3_000_001u32).map(|i| (i % 241) as u8).collect();
        w.push(&trusted_piece(0, &a)).unwrap();
        w.push(&Piece::Hole {
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
