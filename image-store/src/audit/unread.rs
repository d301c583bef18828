//! What the audit cannot read a tree from must read as zeros: a partition with no filesystem
//! the audit reads (xfs, btrfs, BitLocker, a damaged superblock, raw bytes) and the bytes of the
//! image outside every partition and outside the partition table. Both are written to every disk
//! like the rest of the image, so data hidden there would reach every client. A blank partition
//! (every byte zero, like Windows' MSR) is clean; one holding anything else is a `risk` finding
//! (`fs.unread`) a maintainer can accept only explicitly (`tek image accept`, e.g. for a BIOS boot
//! partition's boot code), and the same goes for the space outside the partitions
//! (`disk.outside-partitions`).

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

/// Reads the bytes of the image outside every partition and outside the GPT's own structures
/// (protective MBR, both headers and both entry arrays); non-zero ones are a `risk` finding on
/// partition 0. Returns what was measured (None without a GPT: the whole image was then audited
/// as partition 0).
pub(crate) fn outside<R: Read + Seek>(
    w: &mut Window<R>,
    gpt: Option<&GptSummary>,
    findings: &mut Vec<Finding>,
) -> Result<Option<FreeSpace>, PartitionError> {
    let Some(g) = gpt else { return Ok(None) };
    let ss = g.logical_sector_size;
    let size = w.len();
    let mut used: Ranges = vec![(0, 2 * ss)];
    let primary = header_at(w, ss)?;
    used.push(primary.entries(ss));
    // The backup header sits where the primary says (the last LBA of the image as made); its
    // entry array just before it. An alternate LBA outside the image has no backup to protect.
    if let Some(at) = primary
        .alternate
        .checked_mul(ss)
        .filter(|&at| at + ss <= size)
    {
        used.push((at, ss));
        if let Ok(backup) = header_at(w, at) {
            used.push(backup.entries(ss));
        }
    }
    for p in &g.partitions {
        let start = p.first_lba.saturating_mul(ss);
        let end = (p.last_lba + 1).saturating_mul(ss);
        used.push((start, end.saturating_sub(start)));
    }
    let gaps = complement(used, size);
    let scan = free::measure(w, &gaps)?;
    if scan.nonzero_bytes > 0 {
        findings.push(Finding::new(
            Severity::Risk,
            0,
            "/",
            RULE_OUTSIDE,
            format!(
                "{} of the {} outside every partition and the partition table hold non-zero \
                 bytes: they would be written to every disk, and no filesystem says what they are",
                mib(scan.nonzero_bytes),
                mib(scan.free_bytes)
            ),
        ));
    }
    Ok(Some(scan))
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
    /// The entry array's byte range `(offset, len)` (bounded: a hostile count cannot make the
    /// range wrap).
    fn entries(&self, ss: u64) -> (u64, u64) {
        (
            self.entry_lba.saturating_mul(ss),
            self.entries.saturating_mul(self.entry_size),
        )
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
