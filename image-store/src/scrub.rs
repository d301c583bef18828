//! `tek image import --scrub-free`: the image is stored with the free space of every filesystem
//! the audit reads zeroed (deleted files live on in free space), which also makes it smaller.
//! The free ranges come from each filesystem's own allocation map (`audit::free`), read from
//! the raw source file before the import; [`ZeroRanges`] then zeroes them as the import reads,
//! after hashing the original bytes, so the manifest keeps both the original's hashes
//! ([`Scrubbed`]) and the stored image's (`sha256`, `blake3`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::audit::free::{Ranges, free_ranges};
use crate::audit::window::Window;
use crate::error::StoreError;

/// What `--scrub-free` changed, kept in the manifest (format 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scrubbed {
    /// SHA-256 of the source image before its free space was zeroed.
    pub source_sha256: String,
    /// BLAKE3 of the source image before its free space was zeroed.
    pub source_blake3: String,
    /// Bytes of free space zeroed (all of it, whether it held data or not).
    pub free_bytes: u64,
    /// Of those, bytes in 4 KiB blocks that held non-zero data.
    pub nonzero_bytes: u64,
}

/// The free ranges (absolute offsets) of every partition of the raw image `path` whose
/// filesystem the audit reads. A partition whose allocation map cannot be read fails the
/// scrub: zeroing by guess could destroy data.
pub fn image_free_ranges(path: &Path) -> Result<Ranges, StoreError> {
    let mut f = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| StoreError::io("sizing", path, e))?;
    let gpt = crate::audit::gpt_of(&mut f, size)
        .map_err(|e| StoreError::io("reading the GPT of", path, e))?;
    let img = std::rc::Rc::new(std::cell::RefCell::new(
        crate::audit::window::BlockCache::new(f),
    ));
    let mut out = Vec::new();
    for (number, _, start, len) in crate::audit::partitions(size, gpt.as_ref()) {
        let mut w = Window::new(
            img.clone(),
            start,
            len.min(size.saturating_sub(start)),
            u64::MAX,
        );
        let (fs, _) = crate::audit::sniff(&mut w);
        let ranges = free_ranges(&mut w, fs).map_err(|e| StoreError::BadSource {
            path: path.to_path_buf(),
            reason: format!(
                "--scrub-free cannot read the free-space map of partition {number} ({fs}): {}",
                e.0
            ),
        })?;
        out.extend(ranges.into_iter().map(|(o, l)| (start + o, l)));
    }
    Ok(out)
}

/// A reader that hashes what it reads, then zeroes the bytes inside `ranges` (sorted, disjoint).
/// At the end of the stream it leaves the original's hashes in its shared [`Scrubbed`] slot.
pub struct ZeroRanges<R> {
    inner: R,
    ranges: Ranges,
    next: usize,
    pos: u64,
    sha: sha2::Sha256,
    b3: blake3::Hasher,
    free: u64,
    nonzero: u64,
    done: Arc<Mutex<Option<Scrubbed>>>,
}

impl<R: Read> ZeroRanges<R> {
    /// Wraps `inner`; the returned slot is filled when `inner` ends.
    pub fn new(inner: R, mut ranges: Ranges) -> (Self, Arc<Mutex<Option<Scrubbed>>>) {
        ranges.sort_unstable();
        let done = Arc::new(Mutex::new(None));
        (
            ZeroRanges {
                inner,
                ranges,
                next: 0,
                pos: 0,
                sha: sha2::Sha256::new(),
                b3: blake3::Hasher::new(),
                free: 0,
                nonzero: 0,
                done: done.clone(),
            },
            done,
        )
    }
}

impl<R: Read> Read for ZeroRanges<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            let mut slot = self.done.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(Scrubbed {
                    source_sha256: hex::encode(self.sha.clone().finalize()),
                    source_blake3: self.b3.finalize().to_hex().to_string(),
                    free_bytes: self.free,
                    nonzero_bytes: self.nonzero,
                });
            }
            return Ok(0);
        }
        self.sha.update(&buf[..n]);
        self.b3.update(&buf[..n]);
        let (lo, hi) = (self.pos, self.pos + n as u64);
        while let Some(&(o, l)) = self.ranges.get(self.next) {
            if o >= hi {
                break;
            }
            let (a, b) = (o.max(lo), (o + l).min(hi));
            if a < b {
                let part = &mut buf[(a - lo) as usize..(b - lo) as usize];
                self.free += part.len() as u64;
                // Count by 4 KiB blocks of the image, as the audit does.
                let mut at = a;
                while at < b {
                    let end = ((at / 4096 + 1) * 4096).min(b);
                    let block = &part[(at - a) as usize..(end - a) as usize];
                    if !crate::audit::free::all_zero(block) {
                        self.nonzero += block.len() as u64;
                    }
                    at = end;
                }
                part.fill(0);
            }
            if o + l <= hi {
                self.next += 1;
            } else {
                break;
            }
        }
        self.pos = hi;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroes_exactly_the_ranges_and_hashes_the_original() {
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251 + 1) as u8).collect();
        let (mut z, slot) = ZeroRanges::new(&data[..], vec![(5000, 100), (10, 4), (8190, 10000)]);
        let mut out = Vec::new();
        // Small reads so ranges straddle read boundaries.
        let mut buf = [0u8; 777];
        loop {
            let n = z.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let mut want = data.clone();
        for (o, l) in [(10usize, 4usize), (5000, 100), (8190, 10000)] {
            want[o..o + l].fill(0);
        }
        assert_eq!(out, want);
        let s = slot.lock().unwrap().clone().unwrap();
        assert_eq!(s.source_blake3, blake3::hash(&data).to_hex().to_string());
        assert_eq!(s.free_bytes, 10104);
        assert_eq!(s.nonzero_bytes, 10104);
    }
}
