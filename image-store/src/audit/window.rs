//! Seekable views the audit reads filesystems through: [`StoreReader`], a `Read + Seek` over a
//! stored image's manifest (chunks fetched, verified and kept in a small cache, holes read as
//! zeros), [`BlockCache`], a small read cache in front of either, and [`Window`], one
//! partition's byte range of any `Read + Seek` image.
//!
//! Nothing here writes: the filesystem readers get a view whose `Write` always fails, so a
//! reader that tried to update a hostile image cannot.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::rc::Rc;
use std::sync::Arc;

use crate::manifest::{Extent, Manifest};
use crate::store::Store;

/// Chunks kept decompressed at once (about 4 MiB each at most with the default chunking).
const CACHE_CHUNKS: usize = 8;

/// A stored image read by offset: binary search over the manifest's extents, chunks verified
/// against their id on every fetch (a corrupt chunk is an I/O error, never silently read).
pub struct StoreReader {
    store: Store,
    manifest: Arc<Manifest>,
    pos: u64,
    cache: VecDeque<(usize, Vec<u8>)>,
}

impl StoreReader {
    /// A reader at offset 0 of `manifest`'s image.
    pub fn new(store: Store, manifest: Arc<Manifest>) -> Self {
        StoreReader {
            store,
            manifest,
            pos: 0,
            cache: VecDeque::new(),
        }
    }

    fn extent_at(&self, off: u64) -> Option<usize> {
        let ex = &self.manifest.extents;
        let i = ex.partition_point(|e| e.offset() + e.len() <= off);
        (i < ex.len()).then_some(i)
    }

    fn chunk(&mut self, i: usize) -> io::Result<&[u8]> {
        if let Some(at) = self.cache.iter().position(|(j, _)| *j == i) {
            let hit = self.cache.remove(at).expect("position is in range");
            self.cache.push_front(hit);
        } else {
            let Extent::Chunk { offset, len, id } = self.manifest.extents[i] else {
                unreachable!("only chunk extents are fetched");
            };
            let data = self
                .store
                .read_compressed(id, offset, len)
                .and_then(|c| c.decompress_verify())
                .map_err(io::Error::other)?
                .into_data();
            if self.cache.len() == CACHE_CHUNKS {
                self.cache.pop_back();
            }
            self.cache.push_front((i, data));
        }
        Ok(&self.cache[0].1)
    }
}

impl Read for StoreReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(i) = self.extent_at(self.pos) else {
            return Ok(0);
        };
        let e = self.manifest.extents[i].clone();
        let within = self.pos - e.offset();
        let n = ((e.len() - within) as usize).min(buf.len());
        match e {
            Extent::Hole { .. } => buf[..n].fill(0),
            Extent::Chunk { .. } => {
                let data = self.chunk(i)?;
                buf[..n].copy_from_slice(&data[within as usize..within as usize + n]);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for StoreReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.manifest.size, to)?;
        Ok(self.pos)
    }
}

fn seek_to(pos: u64, size: u64, to: SeekFrom) -> io::Result<u64> {
    match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::End(d) => size.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    }
    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))
}

/// Bytes per block of [`BlockCache`].
const CACHE_BLOCK: usize = 64 << 10;
/// Blocks [`BlockCache`] keeps (2 MiB).
const CACHE_BLOCKS: usize = 32;

/// A read cache in front of an image for the filesystem readers' many small reads (an inode,
/// a directory block, an MFT record): 64 KiB-aligned blocks, the 32 most recently used kept;
/// a read of a block or more goes straight through. A seek only moves the position, so a
/// small read that hits costs a copy, where a file costs two system calls (seek, read) per
/// read without it: the metadata audit of a 50,000-entry ext4 makes hundreds of thousands.
pub struct BlockCache<R> {
    inner: R,
    pos: u64,
    /// (block number, its bytes: short at the image's end), most recently used first.
    blocks: VecDeque<(u64, Vec<u8>)>,
}

impl<R: Read + Seek> BlockCache<R> {
    /// A cache over `inner`, at offset 0.
    pub fn new(inner: R) -> Self {
        BlockCache {
            inner,
            pos: 0,
            blocks: VecDeque::with_capacity(CACHE_BLOCKS),
        }
    }

    fn block(&mut self, n: u64) -> io::Result<&[u8]> {
        if let Some(at) = self.blocks.iter().position(|(b, _)| *b == n) {
            if at > 0 {
                let hit = self.blocks.remove(at).expect("position is in range");
                self.blocks.push_front(hit);
            }
        } else {
            let mut data = match self.blocks.len() {
                CACHE_BLOCKS => self.blocks.pop_back().expect("cache is full").1,
                _ => Vec::new(),
            };
            data.resize(CACHE_BLOCK, 0);
            self.inner.seek(SeekFrom::Start(n * CACHE_BLOCK as u64))?;
            let mut got = 0;
            while got < CACHE_BLOCK {
                match self.inner.read(&mut data[got..])? {
                    0 => break,
                    k => got += k,
                }
            }
            data.truncate(got);
            self.blocks.push_front((n, data));
        }
        Ok(&self.blocks[0].1)
    }
}

impl<R: Read + Seek> Read for BlockCache<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.len() >= CACHE_BLOCK {
            self.inner.seek(SeekFrom::Start(self.pos))?;
            let n = self.inner.read(buf)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let within = (self.pos % CACHE_BLOCK as u64) as usize;
        let data = self.block(self.pos / CACHE_BLOCK as u64)?;
        let n = data.len().saturating_sub(within).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        buf[..n].copy_from_slice(&data[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for BlockCache<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::End(_) => self.inner.seek(to)?,
            _ => seek_to(self.pos, u64::MAX, to)?,
        };
        Ok(self.pos)
    }
}

/// `len` bytes of a shared image from `start`, as a device of its own; read-only. Clones share
/// the image and the byte count, so the audit can stop a partition whose reader reads without
/// end (a hostile filesystem looping) however many handles the reader holds.
pub struct Window<R> {
    inner: Rc<RefCell<R>>,
    start: u64,
    len: u64,
    pos: u64,
    read_bytes: Rc<Cell<u64>>,
    read_budget: u64,
}

impl<R> Clone for Window<R> {
    fn clone(&self) -> Self {
        Window {
            inner: self.inner.clone(),
            start: self.start,
            len: self.len,
            pos: self.pos,
            read_bytes: self.read_bytes.clone(),
            read_budget: self.read_budget,
        }
    }
}

impl<R: Read + Seek> Window<R> {
    /// The range `[start, start + len)` of `inner`, readable up to `read_budget` bytes in all.
    pub fn new(inner: Rc<RefCell<R>>, start: u64, len: u64, read_budget: u64) -> Self {
        Window {
            inner,
            start,
            len,
            pos: 0,
            read_bytes: Rc::new(Cell::new(0)),
            read_budget,
        }
    }

    /// Reads exactly `buf.len()` bytes at `off` (within the window).
    pub fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.seek(SeekFrom::Start(off))?;
        self.read_exact(buf)
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R: Read + Seek> Read for Window<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read_bytes.get() > self.read_budget {
            return Err(io::Error::other(BudgetExceeded));
        }
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let mut inner = self.inner.borrow_mut();
        inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let mut got = 0;
        while got < n {
            let k = inner.read(&mut buf[got..n])?;
            if k == 0 {
                // The image ends before the partition does: zeros, as a disk past a short
                // image would read after writing.
                buf[got..n].fill(0);
                break;
            }
            got += k;
        }
        self.pos += n as u64;
        self.read_bytes.set(self.read_bytes.get() + n as u64);
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Window<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.len, to)?;
        Ok(self.pos)
    }
}

impl<R> Write for Window<R> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the audit reads images, it never writes them",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A partition's reader read more than its budget: a hostile filesystem making it loop.
#[derive(Debug, thiserror::Error)]
#[error("read budget exceeded")]
pub struct BudgetExceeded;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn window_reads_its_range_only_and_refuses_writes() {
        let img = Rc::new(RefCell::new(Cursor::new((0u8..=255).collect::<Vec<u8>>())));
        let mut w = Window::new(img, 16, 8, 1 << 20);
        let mut all = Vec::new();
        w.read_to_end(&mut all).unwrap();
        assert_eq!(all, (16u8..24).collect::<Vec<u8>>());
        let mut b = [0u8; 2];
        w.read_at(6, &mut b).unwrap();
        assert_eq!(b, [22, 23]);
        assert!(w.write(b"x").is_err());
    }

    #[test]
    fn block_cache_reads_what_the_image_holds() {
        let data: Vec<u8> = (0..(3 * CACHE_BLOCK + 1000) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut c = BlockCache::new(Cursor::new(data.clone()));
        let mut rng = 7u64;
        for _ in 0..2000 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (rng >> 33) % (data.len() as u64 + 10);
            let len =
                [1, 512, 4096, CACHE_BLOCK - 1, CACHE_BLOCK, 3 * CACHE_BLOCK][(rng % 6) as usize];
            c.seek(SeekFrom::Start(off)).unwrap();
            let mut got = Vec::new();
            (&mut c).take(len as u64).read_to_end(&mut got).unwrap();
            let start = (off as usize).min(data.len());
            let end = (start + len).min(data.len());
            assert_eq!(got, &data[start..end], "{off} {len}");
        }
        assert!(c.blocks.len() <= CACHE_BLOCKS);
        assert_eq!(c.seek(SeekFrom::End(-1)).unwrap(), data.len() as u64 - 1);
    }

    #[test]
    fn window_stops_at_budget() {
        let img = Rc::new(RefCell::new(Cursor::new(vec![0u8; 4096])));
        let mut w = Window::new(img, 0, 4096, 1000);
        let mut b = [0u8; 600];
        w.read_at(0, &mut b).unwrap();
        w.read_at(0, &mut b).unwrap();
        let e = w.read_at(0, &mut b).unwrap_err();
        assert!(e.get_ref().is_some_and(|e| e.is::<BudgetExceeded>()));
    }
}
