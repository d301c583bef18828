//! Reading an image's GPT during a streaming import.
//!
//! The import never has the whole image at hand (it may be a compressed stream), so it keeps the
//! first and last [`EDGE`] bytes and hands the `gpt` crate a [`SparseImage`]: a read-only
//! `Read + Seek` device that serves those two windows and zeros elsewhere. A GPT lives entirely in
//! those windows (protective MBR, primary header and entries at the start; backup entries and
//! header at the end) for both 512- and 4096-byte logical sectors.

use std::io::{Read, Seek, SeekFrom, Write};

use gpt::disk::LogicalBlockSize;

use crate::manifest::{GptPartition, GptSummary};

/// Bytes kept from each end of the image.
pub const EDGE: usize = 1 << 20;

/// The image as far as GPT parsing needs it: head and tail windows, zeros between.
#[derive(Debug)]
pub struct SparseImage {
    head: Vec<u8>,
    tail: Vec<u8>,
    size: u64,
    pos: u64,
}

impl SparseImage {
    /// `head` starts at offset 0, `tail` ends at `size`.
    pub fn new(head: Vec<u8>, tail: Vec<u8>, size: u64) -> Self {
        SparseImage {
            head,
            tail,
            size,
            pos: 0,
        }
    }

    fn byte_at(&self, off: u64) -> u8 {
        if off < self.head.len() as u64 {
            return self.head[off as usize];
        }
        let tail_start = self.size - self.tail.len() as u64;
        if off >= tail_start {
            return self.tail[(off - tail_start) as usize];
        }
        0
    }
}

impl Read for SparseImage {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self.byte_at(self.pos + i as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseImage {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "read-only view of an image",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseImage {
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

fn guid(u: &uuid::Uuid) -> String {
    u.hyphenated().to_string().to_uppercase()
}

/// The `gpt` crate asserts (panics) on partition entries that are not 128 bytes, and reads (and
/// allocates) `num_parts` x 128 bytes of entries whatever `num_parts` says: 2^32 entries on a
/// large image made an import hang for hours. So check both header fields ourselves before
/// handing it the image: 128-byte entries, and no more than fit in the window the table must
/// lie in ([`EDGE`], 8192 entries; tools write 128). Checked for both headers.
fn table_fields_ok(img: &SparseImage, ss: u64) -> bool {
    let fields_ok = |at: u64| {
        let b = |i: u64| img.byte_at(at + i);
        let num_parts = u32::from_le_bytes([b(80), b(81), b(82), b(83)]);
        let size = u32::from_le_bytes([b(84), b(85), b(86), b(87)]);
        size == 128 && u64::from(num_parts) * 128 <= EDGE as u64
    };
    let is_header = |at: u64| {
        (0..8)
            .map(|i| img.byte_at(at + i))
            .eq(b"EFI PART".iter().copied())
    };
    // The crate falls back to the backup header (last sector) when the primary one is
    // invalid, so both are checked where present.
    let last = (img.size / ss - 1) * ss;
    [ss, last]
        .into_iter()
        .all(|at| !is_header(at) || fields_ok(at))
}

/// Reads the GPT if the image has a valid one, trying 512- then 4096-byte sectors.
pub fn summarize(img: SparseImage) -> Option<GptSummary> {
    let mut img = img;
    for (ss, lb) in [
        (512u64, LogicalBlockSize::Lb512),
        (4096, LogicalBlockSize::Lb4096),
    ] {
        if img.size < ss * 3 || !table_fields_ok(&img, ss) {
            continue;
        }
        img.pos = 0;
        let cfg = gpt::GptConfig::new().writable(false).logical_block_size(lb);
        let res = cfg.open_from_device(&mut img);
        let Ok(disk) = res else { continue };
        let partitions = disk
            .partitions()
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| GptPartition {
                number: *n,
                name: p.name.clone(),
                type_guid: guid(&p.part_type_guid.guid),
                unique_guid: guid(&p.part_guid),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                filesystem: None,
                label: None,
                windows_bcd: false,
            })
            .collect();
        return Some(GptSummary {
            logical_sector_size: ss,
            disk_guid: guid(disk.guid()),
            partitions,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a GPT disk in memory with the gpt crate.
    pub(crate) fn gpt_image(size: u64, ss: LogicalBlockSize) -> Vec<u8> {
        let mut dev = std::io::Cursor::new(vec![0u8; size as usize]);
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
            u32::try_from((size / u64::from(ss)) - 1).unwrap_or(0xFF_FF_FF_FF),
        );
        mbr.overwrite_lba0(&mut dev).unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(ss)
            .create_from_device(&mut dev, None)
            .unwrap();
        disk.update_partitions(std::collections::BTreeMap::new())
            .unwrap();
        disk.add_partition("ROOT", 1 << 20, gpt::partition_types::LINUX_FS, 0, None)
            .unwrap();
        disk.add_partition("DATA", 1 << 20, gpt::partition_types::LINUX_FS, 0, None)
            .unwrap();
        disk.write().unwrap();
        dev.into_inner()
    }

    fn summarize_bytes(b: &[u8]) -> Option<GptSummary> {
        let size = b.len() as u64;
        let e = EDGE.min(b.len());
        summarize(SparseImage::new(
            b[..e].to_vec(),
            b[b.len() - e..].to_vec(),
            size,
        ))
    }

    #[test]
    fn finds_512_and_4096_tables() {
        for ss in [LogicalBlockSize::Lb512, LogicalBlockSize::Lb4096] {
            let img = gpt_image(8 << 20, ss);
            let s = summarize_bytes(&img).expect("gpt");
            assert_eq!(s.logical_sector_size, u64::from(ss));
            let names: Vec<_> = s.partitions.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["ROOT", "DATA"]);
            assert_eq!(s.partitions[0].number, 1);
        }
    }

    #[test]
    fn no_gpt_and_odd_entry_size() {
        assert!(summarize_bytes(&vec![7u8; 3 << 20]).is_none());
        let mut img = gpt_image(4 << 20, LogicalBlockSize::Lb512);
        img[512 + 84] = 64; // entry size 64: must not panic
        let n = img.len();
        img[n - 512 + 84] = 64;
        assert!(summarize_bytes(&img).is_none());
    }
}
