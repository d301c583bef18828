//! What the audit cannot read a tree from must read as zeros: a partition with no filesystem
//! the audit reads (xfs, btrfs, BitLocker, a damaged superblock, raw bytes) and the bytes of the
//! image outside every partition and outside the partition table. Both are written to every disk
//! like the rest of the image, so data hidden there would reach every client. A blank partition
//! (every byte zero, like Windows' MSR) is clean; one holding anything else is a `risk` finding
//! (`fs.unread`) a maintainer can accept only explicitly (`tek image accept`, e.g. for a BIOS boot
//! partition's boot code), and the same goes for the space outside the partitions
//! (`disk.outside-partitions`), and for the bytes of a partition after the end of the
//! filesystem the audit read (`fs.beyond-end`).

use std::io::{Read, Seek};

use super::free::{self, FreeSpace, Ranges};
use super::window::Window;
use super::{Finding, PartitionError, PartitionStatus, Severity, mib};
use crate::manifest::GptSummary;

/// Rule id of a partition holding non-zero bytes in no filesystem the audit reads.
pub const RULE_UNREAD: &str = "fs.unread";
/// Rule id of non-zero bytes outside every partition and the partition table.
pub const RULE_OUTSIDE: &str = "disk.outside-partitions";

/// Audits a partition whose tree the audit cannot read: every byte of it is read; all zeros make
/// it [`PartitionStatus::Blank`], anything else [`PartitionStatus::NotAudited`] with a `risk`
/// finding saying how much is there and what the partition's first bytes say it is.
pub(crate) fn partition<R: Read + Seek>(
    w: &mut Window<R>,
    number: u32,
    kind: Option<blockdev::FsKind>,
    findings: &mut Vec<Finding>,
) -> PartitionStatus {
    let len = w.len();
    let scan = match free::measure(w, &vec![(0, len)]) {
        Ok(s) => s,
        Err(e) => {
            return PartitionStatus::Error {
                reason: format!(
                    "reading the partition (no filesystem the audit reads): {}",
                    e.0
                ),
            };
        }
    };
    if scan.nonzero_bytes == 0 {
        return PartitionStatus::Blank { bytes: len };
    }
    let what = match kind {
        Some(blockdev::FsKind::BitLocker) => {
            "a BitLocker-encrypted volume, unreadable without its recovery key".to_string()
        }
        Some(k) => format!("a {k} filesystem, which the audit does not read"),
        None => "no filesystem the audit reads (ext4, NTFS, FAT)".to_string(),
    };
    findings.push(Finding::new(
        Severity::Risk,
        number,
        "/",
        RULE_UNREAD,
        format!(
            "{} of {} hold non-zero bytes in {what}: what they hold is unknown and would be \
             written to every disk (accept with `tek image accept` only if you know it holds no \
             personal data, e.g. boot code)",
            mib(scan.nonzero_bytes),
            mib(len)
        ),
    ));
    PartitionStatus::NotAudited { reason: what }
}

/// Reads the bytes of the image outside every partition and outside what the GPT itself needs
/// (the protective MBR's four entries and signature, both headers' defined fields, the entry
/// slots of partitions in the primary array, and the backup's slots where they equal the
/// primary's); non-zero ones are a `risk` finding on partition 0 naming where they are: the
/// MBR's boot code, a header's reserved bytes, unused or mismatched entry slots (a name field
/// can hold text), unpartitioned space. Returns what was measured (None without a GPT: the
/// whole image was then audited as partition 0).
pub(crate) fn outside<R: Read + Seek>(
    w: &mut Window<R>,
    gpt: Option<&GptSummary>,
    findings: &mut Vec<Finding>,
) -> Result<Option<FreeSpace>, PartitionError> {
    let Some(g) = gpt else { return Ok(None) };
    let ss = g.logical_sector_size;
    let size = w.len();
    let mut used: Ranges = vec![(446, 66), (ss, HEADER_FIELDS)];
    let primary = header_at(w, ss)?;
    let slots = primary.read_slots(w, ss)?;
    let base = primary.entry_lba.saturating_mul(ss);
    let esz = primary.entry_size;
    for (i, slot) in slots.iter().enumerate() {
        if slot[..16].iter().any(|&b| b != 0) {
            used.push((base + i as u64 * esz, esz));
        }
    }
    // The backup header sits where the primary says (the last LBA of the image as made). An
    // alternate LBA outside the image has no backup to protect.
    if let Some(at) = primary
        .alternate
        .checked_mul(ss)
        .filter(|&at| at.saturating_add(ss) <= size)
    {
        used.push((at, HEADER_FIELDS));
        if let Ok(backup) = header_at(w, at) {
            if backup.entry_size == esz {
                let theirs = backup.read_slots(w, ss)?;
                let bbase = backup.entry_lba.saturating_mul(ss);
                for (i, (a, b)) in slots.iter().zip(&theirs).enumerate() {
                    if a == b && a[..16].iter().any(|&x| x != 0) {
                        used.push((bbase + i as u64 * esz, esz));
                    }
                }
            }
        }
    }
    for p in &g.partitions {
        let start = p.first_lba.saturating_mul(ss);
        let end = (p.last_lba + 1).saturating_mul(ss);
        used.push((start, end.saturating_sub(start)));
    }
    let mut total = FreeSpace {
        free_bytes: 0,
        nonzero_bytes: 0,
    };
    let mut where_: Vec<&str> = Vec::new();
    for gap in complement(used, size) {
        let scan = free::measure(w, &vec![gap])?;
        total.free_bytes += scan.free_bytes;
        total.nonzero_bytes += scan.nonzero_bytes;
        if scan.nonzero_bytes > 0 {
            let place = place_of(gap.0, ss, &primary);
            if !where_.contains(&place) {
                where_.push(place);
            }
        }
    }
    if total.nonzero_bytes > 0 {
        findings.push(Finding::new(
            Severity::Risk,
            0,
            "/",
            RULE_OUTSIDE,
            format!(
                "{} of the {} outside every partition and the partition table's own fields hold \
                 non-zero bytes ({}): they would be written to every disk, and no filesystem \
                 says what they are",
                mib(total.nonzero_bytes),
                mib(total.free_bytes),
                where_.join(", ")
            ),
        ));
    }
    Ok(Some(total))
}

/// Bytes of a GPT header the specification defines (the rest of its sector is reserved, zero).
const HEADER_FIELDS: u64 = 92;

/// Entry arrays read at most (the specification's minimum is 16 KiB; slots past this are
/// measured like unpartitioned space).
const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// Where a gap starting at byte `at` lies, in words.
fn place_of(at: u64, ss: u64, primary: &Header) -> &'static str {
    let entries = primary.entry_lba.saturating_mul(ss);
    if at < 446 {
        "the protective MBR's boot code"
    } else if at < ss {
        "the first sector's reserved bytes"
    } else if at < 2 * ss {
        "the primary GPT header's reserved bytes"
    } else if at >= entries && at < entries + primary.entries.saturating_mul(primary.entry_size) {
        "unused GPT entry slots"
    } else {
        "unpartitioned space, or a backup GPT that differs from the primary"
    }
}

/// The fields of a GPT header the audit needs.
struct Header {
    /// LBA of the other header.
    alternate: u64,
    /// First LBA of this header's entry array.
    entry_lba: u64,
    /// Number of entries and the size of each.
    entries: u64,
    entry_size: u64,
}

impl Header {
    /// The entry slots of this header's array (at most [`MAX_ENTRY_ARRAY`] bytes of them; none
    /// for an entry size below the 128 bytes every entry has).
    fn read_slots<R: Read + Seek>(
        &self,
        w: &mut Window<R>,
        ss: u64,
    ) -> Result<Vec<Vec<u8>>, PartitionError> {
        if self.entry_size < 128 || self.entry_size > 4096 {
            return Ok(Vec::new());
        }
        let n = self.entries.min(MAX_ENTRY_ARRAY / self.entry_size);
        let mut buf = vec![0u8; (n * self.entry_size) as usize];
        w.read_at(self.entry_lba.saturating_mul(ss), &mut buf)
            .map_err(|e| super::io_err("reading the GPT entries", e))?;
        Ok(buf
            .chunks(self.entry_size as usize)
            .map(<[u8]>::to_vec)
            .collect())
    }
}

/// The GPT header at byte `at`.
fn header_at<R: Read + Seek>(w: &mut Window<R>, at: u64) -> Result<Header, PartitionError> {
    let mut b = [0u8; 92];
    w.read_at(at, &mut b)
        .map_err(|e| super::io_err("reading the GPT header", e))?;
    if &b[..8] != b"EFI PART" {
        return Err(PartitionError(format!(
            "no GPT header at byte {at} (the partition table the image was summarized from)"
        )));
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    Ok(Header {
        alternate: u64_at(32),
        entry_lba: u64_at(72),
        entries: u32_at(80).into(),
        entry_size: u32_at(84).into(),
    })
}

/// The parts of `[0, size)` no range of `used` covers, in order.
fn complement(mut used: Ranges, size: u64) -> Ranges {
    used.sort_unstable();
    let mut gaps = Vec::new();
    let mut at = 0u64;
    for (off, len) in used {
        let off = off.min(size);
        if off > at {
            gaps.push((at, off - at));
        }
        at = at.max(off.saturating_add(len).min(size));
    }
    if at < size {
        gaps.push((at, size - at));
    }
    gaps
}

/// Rule id of non-zero bytes in an ext4's first 1024 bytes, before its superblock.
pub const RULE_BOOT_AREA: &str = "fs.boot-area";

/// Rule id of non-zero bytes inside a partition after its filesystem's end.
pub const RULE_BEYOND: &str = "fs.beyond-end";

/// Reads the bytes of a partition after the end of the filesystem the audit read (a filesystem
/// smaller than its partition leaves them to no reader, and they are written to every disk
/// like the rest); non-zero ones are a `risk` finding. NTFS's backup boot sector, kept in the
/// first sector after the volume, is skipped when it is the boot sector's copy.
pub(crate) fn beyond_end<R: Read + Seek>(
    w: &mut Window<R>,
    fs: &str,
    number: u32,
    findings: &mut Vec<Finding>,
) -> Result<(), PartitionError> {
    let mut boot = [0u8; 2048];
    let n = (w.len() as usize).min(boot.len());
    w.read_at(0, &mut boot[..n])
        .map_err(|e| super::io_err("reading the filesystem's first sectors", e))?;
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([boot[o], boot[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes(boot[o..o + 4].try_into().expect("4")));
    let u64_at = |o: usize| u64::from_le_bytes(boot[o..o + 8].try_into().expect("8"));
    let (mut end, sector) = match fs {
        "ext4" => {
            let sb = 1024;
            let log = u32_at(sb + 0x18).min(16);
            let is64 = u32_at(sb + 0x60) & 0x80 != 0;
            let blocks = u32_at(sb + 4) | if is64 { u32_at(sb + 0x150) << 32 } else { 0 };
            (blocks.saturating_mul(1024 << log), 0)
        }
        "ntfs" => {
            let bps = u16_at(0x0B);
            (u64_at(0x28).saturating_mul(bps), bps)
        }
        "fat" => {
            let bps = u16_at(0x0B);
            let small = u16_at(0x13);
            let total = if small != 0 { small } else { u32_at(0x20) };
            (total.saturating_mul(bps), 0)
        }
        _ => return Ok(()),
    };
    if fs == "ext4" {
        // ext4 leaves its first 1024 bytes (before the superblock) to boot loaders, which
        // do not put one there on a GPT disk: no reader looks at them.
        let head = free::measure(w, &vec![(0, 1024)])?;
        if head.nonzero_bytes > 0 {
            findings.push(Finding::new(
                Severity::Risk,
                number,
                "/",
                RULE_BOOT_AREA,
                "the ext4 filesystem's first 1024 bytes (before its superblock) hold non-zero \
                 bytes: no filesystem reads them, and they would be written to every disk"
                    .into(),
            ));
        }
    }
    let len = w.len();
    if end >= len {
        return Ok(());
    }
    if sector > 0 && sector <= 4096 && end + sector <= len {
        let mut copy = vec![0u8; sector as usize];
        w.read_at(end, &mut copy)
            .map_err(|e| super::io_err("reading the NTFS backup boot sector", e))?;
        if copy[..] == boot[..(sector as usize).min(n)] {
            end += sector;
        }
    }
    let scan = free::measure(w, &vec![(end, len - end)])?;
    if scan.nonzero_bytes > 0 {
        findings.push(Finding::new(
            Severity::Risk,
            number,
            "/",
            RULE_BEYOND,
            format!(
                "{} of the {} after the {fs} filesystem's end, inside the partition, hold \
                 non-zero bytes: no filesystem reads them, and they would be written to every disk",
                mib(scan.nonzero_bytes),
                mib(scan.free_bytes)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::complement;

    #[test]
    fn complement_skips_overlaps_and_ranges_past_the_end() {
        assert_eq!(
            complement(vec![(10, 5), (0, 2), (12, 10), (90, 50)], 100),
            vec![(2, 8), (22, 68)]
        );
        assert_eq!(complement(vec![], 7), vec![(0, 7)]);
        assert_eq!(complement(vec![(0, 7)], 7), vec![]);
    }
}
