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
//! The planned ranges are cut into units of about 4 MiB; one worker per core plus one each read a
//! unit (O_DIRECT) and hash it, so BLAKE3 runs on every core and the disk always has a read in
//! flight while others hash.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use image_store::ChunkId;

use crate::buffer::{AlignedBuf, is_zero};
use crate::error::ImagerError;
use crate::layout::Layout;
use crate::span::WrittenExtent;
use crate::target::TargetDev;
use crate::writer::{BIG_HOLE, HOLDBACK};

/// Size of one read-back request.
pub const READ_BUF: usize = 4 << 20;
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

/// Image bytes one read-back unit covers (a hashed extent larger than this is one unit alone).
pub const UNIT: u64 = READ_BUF as u64;

/// One extent's share of a unit: its index, expected hash (`None`: zeros) and ranges.
type Part = (usize, Option<ChunkId>, Vec<(u64, u64)>);

/// A unit of read-back: what one worker reads (one pass over `reads`) and then checks.
struct Unit {
    /// The extents (or, for zeros, parts of them) this unit checks. A zero extent may be split
    /// over several units; a hashed one never is.
    parts: Vec<Part>,
    /// Aligned, merged windows to read (past the held-back first MiB).
    reads: Vec<(u64, u64)>,
    /// Image offset up to which this unit finishes the extents (for progress).
    end: u64,
}

/// Cuts the looked-at ranges into units of about [`UNIT`] bytes, in image order.
fn units_of(
    extents: &[WrittenExtent],
    ranges: &[Vec<(u64, u64)>],
    from: u64,
    limit: u64,
) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut cur: Vec<Part> = Vec::new();
    let mut bytes = 0u64;
    let close = |cur: &mut Vec<Part>, units: &mut Vec<Unit>, end: u64| {
        if cur.is_empty() {
            return;
        }
        let parts = std::mem::take(cur);
        let rs: Vec<Vec<(u64, u64)>> = parts.iter().map(|p| p.2.clone()).collect();
        units.push(Unit {
            reads: read_plan(&rs, from, limit),
            parts,
            end,
        });
    };
    for (i, (ext, rs)) in extents.iter().zip(ranges).enumerate() {
        if ext.id.is_some() {
            let len: u64 = rs.iter().map(|r| r.1 - r.0).sum();
            if bytes > 0 && bytes + len > UNIT {
                close(&mut cur, &mut units, ext.offset);
                bytes = 0;
            }
            cur.push((i, ext.id, rs.clone()));
            bytes += len;
            continue;
        }
        for &(mut a, b) in rs {
            while a < b {
                if bytes >= UNIT {
                    close(&mut cur, &mut units, a);
                    bytes = 0;
                }
                let e = b.min(a + (UNIT - bytes));
                match cur.last_mut() {
                    Some((j, _, v)) if *j == i => v.push((a, e)),
                    _ => cur.push((i, None, vec![(a, e)])),
                }
                bytes += e - a;
                a = e;
            }
        }
    }
    let end = extents.last().map(|e| e.offset + e.len).unwrap_or(0);
    close(&mut cur, &mut units, end);
    units
}

/// A unit's bytes as read: the windows laid end to end in one aligned buffer.
struct UnitData<'a> {
    buf: &'a [u8],
    reads: &'a [(u64, u64)],
    holdback: &'a [u8],
}

impl UnitData<'_> {
    /// Calls `f` on the bytes of `[a, b)` in pieces, in order.
    fn visit(&self, mut a: u64, b: u64, f: &mut dyn FnMut(&[u8])) {
        let hb = self.holdback.len() as u64;
        if a < hb {
            let e = b.min(hb);
            f(&self.holdback[a as usize..e as usize]);
            a = e;
        }
        let mut at = 0usize;
        for &(s, e) in self.reads {
            if a < b && a >= s && a < e {
                let i = at + (a - s) as usize;
                let n = (b.min(e) - a) as usize;
                f(&self.buf[i..i + n]);
                a += n as u64;
            }
            at += (e - s) as usize;
        }
        debug_assert!(a >= b, "range {a}..{b} outside the unit's reads");
    }

    /// True when the part's bytes hash to `id`, or are all zero when `id` is `None`.
    fn check(&self, id: Option<ChunkId>, ranges: &[(u64, u64)]) -> bool {
        match id {
            Some(id) => {
                let mut h = blake3::Hasher::new();
                for &(a, b) in ranges {
                    self.visit(a, b, &mut |d| {
                        h.update(d);
                    });
                }
                h.finalize().as_bytes() == &id.0
            }
            None => {
                let mut zero = true;
                for &(a, b) in ranges {
                    self.visit(a, b, &mut |d| zero &= is_zero(d));
                }
                zero
            }
        }
    }
}

/// Reads one unit into `buf` (grown when needed) and checks its parts: (extent index, ok).
fn check_unit(
    dev: &TargetDev,
    unit: &Unit,
    buf: &mut AlignedBuf,
    holdback: &[u8],
    layout: Layout,
) -> Result<Vec<(usize, bool)>, ImagerError> {
    let total: u64 = unit.reads.iter().map(|r| r.1 - r.0).sum();
    if (buf.capacity() as u64) < total {
        *buf = AlignedBuf::new(total as usize);
    }
    let mut at = 0usize;
    for &(s, e) in &unit.reads {
        let n = (e - s) as usize;
        // Read at the bytes' place on the disk (the layout map may have moved them).
        for (o, len, disk) in layout.pieces(s, n as u64) {
            let o = at + o as usize;
            dev.pread(&mut buf.as_mut_slice()[o..o + len as usize], disk)?;
        }
        at += n;
    }
    let data = UnitData {
        buf: buf.as_slice(),
        reads: &unit.reads,
        holdback,
    };
    Ok(unit
        .parts
        .iter()
        .map(|(i, id, rs)| (*i, data.check(*id, rs)))
        .collect())
}

/// Read-back workers: one per core plus one, so that while some hash, another has a read in
/// flight and the device never waits for BLAKE3.
fn reader_count() -> usize {
    crate::source::worker_count() + 1
}

/// Reads `extents` back from `dev` and compares. `full_holes`: read large holes completely.
/// `cancel` stops the workers at their next unit ([`ImagerError::Cancelled`]).
///
/// The looked-at ranges are cut into units of about [`UNIT`] bytes; workers take units in
/// order, each reads its unit (O_DIRECT) and hashes it, so hashing runs on every core and
/// overlaps the reads of other units. Results are gathered in unit order for progress.
#[cfg(test)]
pub fn verify_extents(
    dev: &mut TargetDev,
    extents: &[WrittenExtent],
    holdback: &[u8],
    image_size: u64,
    full_holes: bool,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyOutcome, ImagerError> {
    verify_mapped(
        dev,
        extents,
        holdback,
        image_size,
        Layout::IDENTITY,
        full_holes,
        cancel,
        progress,
    )
}

/// [`verify_extents`] for an image written through `layout`: each image range is read at its
/// place on the disk; offsets reported stay image offsets.
#[allow(clippy::too_many_arguments)]
pub fn verify_mapped(
    dev: &mut TargetDev,
    extents: &[WrittenExtent],
    holdback: &[u8],
    image_size: u64,
    layout: Layout,
    full_holes: bool,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyOutcome, ImagerError> {
    let ranges: Vec<Vec<(u64, u64)>> = extents.iter().map(|e| ranges_of(e, full_holes)).collect();
    let from = holdback.len() as u64;
    let plan = read_plan(&ranges, from, image_size);
    let units = units_of(extents, &ranges, from, image_size);
    let mut out = VerifyOutcome {
        bytes_verified: plan.iter().map(|r| r.1 - r.0).sum(),
        ..Default::default()
    };
    let dev: &TargetDev = dev;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) =
        crossbeam_channel::unbounded::<(usize, Result<Vec<(usize, bool)>, ImagerError>)>();
    let mut bad = vec![false; extents.len()];
    let r = std::thread::scope(|s| {
        for _ in 0..reader_count() {
            let tx = tx.clone();
            let (units, next, stop) = (&units, &next, &stop);
            s.spawn(move || {
                let mut buf = AlignedBuf::new(0);
                while !stop.load(Ordering::Relaxed) && !cancel.load(Ordering::Relaxed) {
                    let u = next.fetch_add(1, Ordering::Relaxed);
                    let Some(unit) = units.get(u) else { return };
                    let r = check_unit(dev, unit, &mut buf, holdback, layout);
                    if tx.send((u, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut done = vec![false; units.len()];
        let mut in_order = 0;
        for (u, r) in rx {
            match r {
                Ok(results) => {
                    for (i, ok) in results {
                        bad[i] |= !ok;
                    }
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            done[u] = true;
            let before = in_order;
            while in_order < units.len() && done[in_order] {
                in_order += 1;
            }
            if in_order > before {
                progress(units[in_order - 1].end);
            }
        }
        if in_order < units.len() && cancel.load(Ordering::Relaxed) {
            return Err(ImagerError::Cancelled {
                offset: units[in_order].reads.first().map_or(0, |r| r.0),
            });
        }
        if in_order < units.len() {
            return Err(ImagerError::Target {
                action: "reading back",
                path: dev.path().to_path_buf(),
                offset: units[in_order].reads.first().map_or(0, |r| r.0),
                source: std::io::Error::other("read-back worker ended early"),
            });
        }
        Ok(())
    });
    r?;
    out.mismatches = extents
        .iter()
        .zip(&bad)
        .filter(|(_, b)| **b)
        .map(|(e, _)| e.offset)
        .take(MAX_MISMATCHES)
        .collect();
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
    use crate::span::Piece;
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
    fn units_keep_hashed_extents_whole_and_split_zeros() {
        let id = Some(ChunkId([1; 32]));
        let mut ext = Vec::new();
        let mut at = 0;
        for (len, id, offloaded) in [
            (3 * UNIT / 4, id, false),
            (UNIT / 2, id, false), // does not fit beside the first: starts a unit
            (3 * UNIT + 5, None, false), // zeros read fully: split over units
            (2 * UNIT + 7, id, false), // larger than a unit: alone, whole
            (SAMPLE_EVERY * 3, None, true),
        ] {
            ext.push(WrittenExtent {
                offset: at,
                len,
                id,
                offloaded,
            });
            at += len;
        }
        let ranges: Vec<_> = ext.iter().map(|e| ranges_of(e, false)).collect();
        let units = units_of(&ext, &ranges, HOLDBACK, at);
        for (i, e) in ext.iter().enumerate() {
            let parts: Vec<&Part> = units
                .iter()
                .flat_map(|u| &u.parts)
                .filter(|p| p.0 == i)
                .collect();
            if e.id.is_some() {
                assert_eq!(parts.len(), 1, "hashed extent {i} in one unit");
            }
            let covered: Vec<(u64, u64)> = parts.iter().flat_map(|p| p.2.clone()).collect();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for (a, b) in covered {
                match merged.last_mut() {
                    Some(l) if l.1 == a => l.1 = b,
                    _ => merged.push((a, b)),
                }
            }
            assert_eq!(merged, ranges[i], "extent {i} covered exactly");
        }
        assert!(
            units
                .iter()
                .any(|u| u.parts.len() == 1 && u.parts[0].0 == 3)
        );
        assert_eq!(units[0].parts.len(), 1);
        assert!(units.windows(2).all(|w| w[0].end <= w[1].end));
        assert_eq!(units.last().unwrap().end, at);
    }

    #[test]
    fn clean_write_verifies_and_corruption_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let size = 24u64 << 20;
        let (ext, hb) = write_image(&p, size);
        let mut dev = TargetDev::open(&p, 0).unwrap();
        dev.sync().unwrap();
        let ok = verify_extents(
            &mut dev,
            &ext,
            &hb,
            size,
            false,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert!(ok.mismatches.is_empty(), "{:?}", ok.mismatches);
        assert!(ok.bytes_verified < size, "big hole sampled");
        let full = verify_extents(
            &mut dev,
            &ext,
            &hb,
            size,
            true,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert!(full.bytes_verified >= size - HOLDBACK);

        // Old data in the hole, a flipped byte in the last chunk.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[1], 3_000_001 + 64 * 1024 * 3 / 2).unwrap();
        f.write_all_at(&[1], size - 5).unwrap();
        drop(f);
        let bad = verify_extents(
            &mut dev,
            &ext,
            &hb,
            size,
            true,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(bad.mismatches, vec![3_000_001, 23_000_001]);
        let diff = verify_bytes(&mut dev, size - 8192, &vec![9u8; 8192]).unwrap();
        assert_eq!(diff, vec![size - 4096]);
    }
}
