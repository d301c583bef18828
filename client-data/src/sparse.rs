//! Sparse files: their data extents found at ingest, and the restore's plan for writing only
//! those (holes are skipped with a seek and the file's length set with `ftruncate`).
//!
//! The extents are a hint about the source, not a promise about the staged bytes: the file may
//! have changed between the probe and the read. So the restore skips a range only when it lies
//! in a hole *and* its staged bytes are all zeros; anything else is written. A wrong hint costs
//! allocation, never content.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use nix::unistd::{Whence, lseek};

use crate::manifest::{Extent, MAX_EXTENTS};

/// The data extents of `f` (a regular file of `size` bytes), when it has holes: found with
/// `SEEK_DATA`/`SEEK_HOLE`, only tried when fewer blocks are allocated than the size needs.
/// `None` for a dense file, a filesystem without the seeks, or more than [`MAX_EXTENTS`]
/// extents (then staged as dense). Leaves the file offset at 0.
pub fn data_extents(f: &mut File, m: &std::fs::Metadata) -> Option<Vec<Extent>> {
    let size = m.len();
    if size == 0 || m.blocks().saturating_mul(512) >= size {
        return None;
    }
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0i64;
    let end = i64::try_from(size).ok()?;
    let found = loop {
        if pos >= end {
            break true;
        }
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break true, // only a hole up to the end
            Err(_) => break false,
        };
        if data >= end {
            break true;
        }
        let Ok(hole) = lseek(fd, data, Whence::SeekHole) else {
            break false;
        };
        let hole = hole.min(end);
        if out.len() == MAX_EXTENTS {
            break false;
        }
        out.push(Extent {
            offset: data as u64,
            len: (hole - data) as u64,
        });
        pos = hole;
    };
    f.seek(SeekFrom::Start(0)).ok()?;
    let dense = out.len() == 1 && out[0].offset == 0 && out[0].len == size;
    (found && !dense).then_some(out)
}

/// Walks a restored file's content in stream order and says which pieces may be skipped.
#[derive(Debug)]
pub(crate) struct Holes<'a> {
    extents: &'a [Extent],
    /// Offset of the next byte of the stream within the file.
    pub pos: u64,
}

impl<'a> Holes<'a> {
    pub(crate) fn new(extents: &'a [Extent]) -> Self {
        Holes { extents, pos: 0 }
    }

    /// Splits the next `len` bytes at the first extent boundary: (length of the piece, whether
    /// it lies in a hole).
    pub(crate) fn next_piece(&mut self, len: usize) -> (usize, bool) {
        while let Some(x) = self.extents.first() {
            if x.offset + x.len <= self.pos {
                self.extents = &self.extents[1..];
            } else {
                break;
            }
        }
        let (n, hole) = match self.extents.first() {
            None => (len as u64, true),
            Some(x) if self.pos < x.offset => ((x.offset - self.pos).min(len as u64), true),
            Some(x) => ((x.offset + x.len - self.pos).min(len as u64), false),
        };
        self.pos += n;
        (n as usize, hole)
    }
}

/// True when every byte of `b` is zero (the loop vectorises).
pub(crate) fn all_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, &x| acc | x) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    #[test]
    fn pieces_split_at_extent_boundaries() {
        let xs = [
            Extent { offset: 10, len: 5 },
            Extent {
                offset: 20,
                len: 10,
            },
        ];
        let mut h = Holes::new(&xs);
        let mut got = Vec::new();
        for len in [4, 100, 3, 100, 100, 100] {
            got.push(h.next_piece(len));
        }
        assert_eq!(
            got,
            [
                (4, true),
                (6, true),
                (3, false),
                (2, false),
                (5, true),
                (10, false)
            ]
        );
        assert_eq!(h.next_piece(7), (7, true));
    }

    #[test]
    fn zeros_are_told_apart() {
        assert!(all_zero(&[0; 100]));
        let mut b = [0u8; 100];
        for i in [0, 7, 8, 63, 99] {
            b[i] = 1;
            assert!(!all_zero(&b), "{i}");
            b[i] = 0;
        }
    }

    #[test]
    fn a_sparse_file_reports_its_data_and_a_dense_one_none() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1; 4096], 1 << 20).unwrap();
        f.sync_all().unwrap();
        let mut f = File::open(&p).unwrap();
        let m = f.metadata().unwrap();
        match data_extents(&mut f, &m) {
            // tmpfs and ext4 report the one block; a filesystem without SEEK_DATA none.
            Some(xs) => assert_eq!(
                xs,
                [Extent {
                    offset: 1 << 20,
                    len: 4096
                }]
            ),
            None => assert!(m.blocks() * 512 >= m.len()),
        }
        let q = d.path().join("dense");
        File::create(&q).unwrap().write_all(&[7; 10000]).unwrap();
        let mut g = File::open(&q).unwrap();
        let gm = g.metadata().unwrap();
        assert_eq!(data_extents(&mut g, &gm), None);
    }
}
