//! The unfinished-write marker: what a disk says when a `tek write` on it never ended.
//!
//! A write holds back the image's first MiB (protective MBR + primary GPT) until everything else
//! is written and verified. A caught failure or signal then resets the partition table, but
//! `kill -9` or a power cut runs nothing. So before its first data write a target is *armed*:
//! the old partition table is reset (both GPT headers, the protective MBR), and one 4 KiB block
//! of the held-back area, at [`MARKER_OFFSET`], gets this marker. A finished write overwrites the
//! whole first MiB with the image's own bytes, which removes the marker; a write that died leaves
//! a disk without a partition table that says, to the next `tek write` or agent job on it,
//! "this disk holds an unfinished tek write from <time>".
//!
//! Format (version 1), NUL-padded to [`MARKER_LEN`]:
//! `TEK-UNFINISHED-WRITE v1\n{"started":RFC 3339,"image":"NAME@VERSION" or file name,
//! "manifest_hash":hex or null,"pid":N}\n`. Nothing in the first MiB of a GPT disk lives there:
//! the GPT's structures end at 17 KiB (512-byte sectors) or 24 KiB (4096-byte sectors), and
//! partitions start at 1 MiB. The marker holds no personal data.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::buffer::AlignedBuf;
use crate::error::ImagerError;
use crate::source::ImageInfo;
use crate::target::TargetDev;
use crate::writer::HOLDBACK;

/// Size of the marker block (one 4 KiB block: O_DIRECT-aligned on every sector size).
pub const MARKER_LEN: usize = 4096;
/// Where it lives: the last 4 KiB of the held-back first MiB.
pub const MARKER_OFFSET: u64 = HOLDBACK - MARKER_LEN as u64;
/// The first line of a version-1 marker.
pub const MARKER_MAGIC: &[u8] = b"TEK-UNFINISHED-WRITE v1\n";

/// What an unfinished write left on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfinishedWrite {
    /// When that write started (RFC 3339, UTC).
    pub started: String,
    /// The image it was writing (`NAME@VERSION`, or a file name).
    pub image: String,
    /// The store image's manifest hash, if it was one.
    pub manifest_hash: Option<String>,
    /// The writing process.
    pub pid: u32,
}

impl std::fmt::Display for UnfinishedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this disk holds an unfinished tek write from {} (image {}, process {}): \
             a partial image and no partition table",
            self.started, self.image, self.pid
        )
    }
}

/// True when a marker at [`MARKER_OFFSET`] is removed by a finished write of this image: the
/// write's first-MiB block covers it. Smaller images are written in one piece at the end
/// (nothing before), so they need none.
pub fn applies(image_size: u64) -> bool {
    image_size >= HOLDBACK
}

/// The marker block for a write of `info` starting now.
pub fn block(info: &ImageInfo) -> Vec<u8> {
    let m = UnfinishedWrite {
        started: crate::report::now_rfc3339(),
        image: match &info.version {
            Some(v) => format!("{}@{v}", info.name),
            None => info.name.clone(),
        },
        manifest_hash: info.manifest_hash.clone(),
        pid: std::process::id(),
    };
    let mut b = MARKER_MAGIC.to_vec();
    b.extend(serde_json::to_vec(&m).expect("serializing the marker"));
    b.push(b'\n');
    b.truncate(MARKER_LEN);
    b.resize(MARKER_LEN, 0);
    b
}

/// Parses a marker block; `None` when it is not one. A block with the magic but unreadable
/// details still counts (the write that left it did not finish).
pub fn parse(block: &[u8]) -> Option<UnfinishedWrite> {
    let rest = block.strip_prefix(MARKER_MAGIC)?;
    let end = rest
        .iter()
        .position(|&b| b == b'\n' || b == 0)
        .unwrap_or(rest.len());
    Some(
        serde_json::from_slice(&rest[..end]).unwrap_or_else(|_| UnfinishedWrite {
            started: "an unknown time (unreadable marker)".into(),
            image: "unknown".into(),
            manifest_hash: None,
            pid: 0,
        }),
    )
}

/// Reads the marker of the disk or file at `path` without claiming it (for the confirmation
/// prompt and the agent's check). Missing, short or unreadable targets have none.
pub fn read_path(path: &Path) -> Option<UnfinishedWrite> {
    let f = File::open(path).ok()?;
    let mut b = vec![0u8; MARKER_LEN];
    f.read_exact_at(&mut b, MARKER_OFFSET).ok()?;
    parse(&b)
}

/// Reads the marker of a claimed target (through the page cache's owner, the target itself).
pub fn read(dev: &mut TargetDev) -> Option<UnfinishedWrite> {
    if dev.size() < MARKER_OFFSET + MARKER_LEN as u64 {
        return None;
    }
    let mut b = AlignedBuf::new(MARKER_LEN);
    dev.read_at(b.as_mut_slice(), MARKER_OFFSET).ok()?;
    parse(&b.as_slice()[..MARKER_LEN])
}

/// Arms a claimed target before its first data write: resets the partition table that is on it
/// (it would describe partitions about to hold parts of another image) and, when the image is at
/// least 1 MiB, writes the marker; then flushes, so a crash right after leaves both.
pub fn arm(dev: &mut TargetDev, info: &ImageInfo) -> Result<(), ImagerError> {
    crate::gptfix::reset_partition_table(dev, info.size)?;
    if applies(info.size) && dev.size() >= MARKER_OFFSET + MARKER_LEN as u64 {
        let mut b = AlignedBuf::new(MARKER_LEN);
        b.as_mut_slice()[..MARKER_LEN].copy_from_slice(&block(info));
        dev.write_at(&b.as_slice()[..MARKER_LEN], MARKER_OFFSET)?;
    }
    dev.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64) -> ImageInfo {
        ImageInfo {
            name: "win".into(),
            version: Some("1".into()),
            manifest_hash: Some("ab".into()),
            signature: None,
            size,
            gpt_sector: None,
            file_format: None,
            hints: Default::default(),
            gpt: None,
        }
    }

    #[test]
    fn block_round_trips_and_other_bytes_are_no_marker() {
        let b = block(&info(8 << 20));
        assert_eq!(b.len(), MARKER_LEN);
        let m = parse(&b).unwrap();
        assert_eq!(m.image, "win@1");
        assert_eq!(m.pid, std::process::id());
        assert!(
            m.to_string()
                .starts_with("this disk holds an unfinished tek write from 20")
        );
        assert_eq!(parse(&[0u8; MARKER_LEN]), None);
        assert_eq!(parse(b"TEK-UNFINISHED-WRITE v2\n{}"), None);
        let mut junk = MARKER_MAGIC.to_vec();
        junk.extend(b"{not json");
        assert_eq!(parse(&junk).unwrap().image, "unknown");
    }

    #[test]
    fn arm_resets_the_table_and_leaves_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let mut old = vec![0xEEu8; 4 << 20];
        old[512..520].copy_from_slice(b"EFI PART");
        std::fs::write(&p, &old).unwrap();
        assert_eq!(read_path(&p), None);
        let mut dev = TargetDev::open(&p, 0).unwrap();
        arm(&mut dev, &info(2 << 20)).unwrap();
        assert_eq!(read(&mut dev).unwrap().image, "win@1");
        drop(dev);
        let all = std::fs::read(&p).unwrap();
        assert!(all[..34 * 512].iter().all(|&b| b == 0), "MBR + primary GPT");
        assert!(
            all[all.len() - 33 * 512..].iter().all(|&b| b == 0),
            "backup GPT"
        );
        assert_eq!(read_path(&p).unwrap().image, "win@1");
        // A small image gets no marker: its only write is the final one.
        std::fs::write(&p, &old).unwrap();
        let mut dev = TargetDev::open(&p, 0).unwrap();
        arm(&mut dev, &info(HOLDBACK - 1)).unwrap();
        assert_eq!(read(&mut dev), None);
    }
}
