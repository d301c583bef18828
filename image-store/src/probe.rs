//! What each partition of a just-imported image holds (filesystem signature and label), read
//! from the chunks the import stored: the GPT is known only at the end of the stream, so this
//! runs after it, on verified chunks, before the manifest is written. A BitLocker volume is
//! recorded as `bitlocker` (the agent refuses it as a data target; import warns).

use std::io::{Read, Seek, SeekFrom};

use blockdev::FsKind;

use crate::manifest::{Extent, GptSummary};
use crate::store::Store;

/// `Read + Seek` over a stored image: each read decompresses and verifies the chunk it falls in
/// (the last one is kept), holes read as zeros.
pub struct ImageReader<'a> {
    store: &'a Store,
    extents: &'a [Extent],
    size: u64,
    pos: u64,
    cached: Option<(u64, Vec<u8>)>,
}

impl<'a> ImageReader<'a> {
    /// A reader over `extents` (contiguous from 0, as in a manifest).
    pub fn new(store: &'a Store, extents: &'a [Extent]) -> Self {
        let size = extents.last().map_or(0, |e| e.offset() + e.len());
        ImageReader {
            store,
            extents,
            size,
            pos: 0,
            cached: None,
        }
    }
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let i = self
            .extents
            .partition_point(|e| e.offset() + e.len() <= self.pos);
        let e = &self.extents[i];
        let within = self.pos - e.offset();
        let n = buf.len().min((e.len() - within) as usize);
        match *e {
            Extent::Hole { .. } => buf[..n].fill(0),
            Extent::Chunk { offset, len, id } => {
                if self.cached.as_ref().map(|c| c.0) != Some(offset) {
                    let c = self
                        .store
                        .read_compressed(id, offset, len)
                        .and_then(|c| c.decompress_verify())
                        .map_err(std::io::Error::other)?;
                    self.cached = Some((offset, c.into_data()));
                }
                let data = &self.cached.as_ref().expect("cached above").1;
                buf[..n].copy_from_slice(&data[within as usize..within as usize + n]);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ImageReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

/// Fills in each partition's `filesystem` and `label` from the stored image. A partition whose
/// start cannot be read (past the image's end) keeps `None`; a chunk that fails its hash fails
/// the import.
pub fn probe_partitions(
    store: &Store,
    extents: &[Extent],
    gpt: &mut GptSummary,
) -> std::io::Result<()> {
    let mut r = ImageReader::new(store, extents);
    let size = r.size;
    probe_partitions_in(&mut r, size, gpt)
}

/// [`probe_partitions`] over any image or disk of `size` bytes (`tek write` shows what a
/// target holds before it is overwritten with this).
pub fn probe_partitions_in<R: Read + Seek>(
    r: &mut R,
    size: u64,
    gpt: &mut GptSummary,
) -> std::io::Result<()> {
    let ss = gpt.logical_sector_size;
    for p in &mut gpt.partitions {
        let Some(start) = p.first_lba.checked_mul(ss) else {
            continue;
        };
        let len = (p.last_lba.saturating_sub(p.first_lba) + 1).saturating_mul(ss);
        if start >= size {
            continue;
        }
        let n = (blockdev::fstype::PROBE_LEN as u64)
            .min(len)
            .min(size - start) as usize;
        let mut head = vec![0u8; n];
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(&mut head)?;
        let Some(kind) = blockdev::fstype::identify(&head) else {
            continue;
        };
        p.filesystem = Some(kind.name().to_string());
        if kind == FsKind::Vfat {
            p.windows_bcd = has_bcd(r, start, len);
        }
        p.label = match kind {
            // A malformed $Volume is the image's problem at write time, not the import's.
            FsKind::Ntfs => blockdev::ntfs::volume_info(&mut *r, start)
                .ok()
                .and_then(|v| v.label),
            _ => blockdev::fstype::label(&head),
        };
    }
    Ok(())
}

/// The path of the Windows boot manager's configuration store on an ESP.
pub const BCD_PATH: &str = "EFI/Microsoft/Boot/BCD";

/// True if the FAT filesystem at `[start, start + len)` holds [`BCD_PATH`] (names compared
/// case-insensitively, as FAT does). An unreadable FAT holds nothing we can see.
fn has_bcd<R: Read + Seek>(r: &mut R, start: u64, len: u64) -> bool {
    let part = Window {
        r,
        start,
        len,
        pos: 0,
    };
    // Reads only: no access dates, and fatfs writes its status flags back only if they changed.
    let opts = fatfs::FsOptions::new().update_accessed_date(false);
    let Ok(fs) = fatfs::FileSystem::new(part, opts) else {
        return false;
    };
    fs.root_dir().open_file(BCD_PATH).is_ok()
}

/// One partition of an image or disk as a read-only disk for fatfs.
struct Window<'a, R> {
    r: &'a mut R,
    start: u64,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> Read for Window<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.r.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.r.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R> std::io::Write for Window<'_, R> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "stored images are read-only",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<R> Seek for Window<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}
