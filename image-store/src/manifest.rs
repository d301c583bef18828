//! The image manifest: what an image is made of, in order, plus its GPT summary and the hints the
//! imager and agent follow. Format version [`MANIFEST_FORMAT`]; documented in ARCHITECTURE.md.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;

/// Current manifest format version. Readers refuse versions they do not know.
/// Format 2 added `gpt.partitions[].filesystem` and `.label`; format 1 is still read.
pub const MANIFEST_FORMAT: u32 = 2;

/// The oldest manifest format this version reads.
pub const MANIFEST_FORMAT_MIN: u32 = 1;

/// A stored image's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`] when written by this version.
    pub format: u32,
    /// Image name (safe characters only, see `ImageRef`).
    pub name: String,
    /// Image version.
    pub version: String,
    /// Logical size of the raw image in bytes.
    pub size: u64,
    /// SHA-256 of the whole raw image, lower-case hex.
    pub sha256: String,
    /// BLAKE3 of the whole raw image, lower-case hex.
    pub blake3: String,
    /// When it was imported, RFC 3339 UTC.
    pub created: String,
    /// How the content was cut.
    pub chunking: Chunking,
    /// Extents in image order, contiguous, covering `[0, size)` exactly.
    pub extents: Vec<Extent>,
    /// GPT summary if the image has a valid GPT.
    pub gpt: Option<GptSummary>,
    /// Hints for the imager and agent.
    pub hints: Hints,
}

/// Chunking parameters used at import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunking {
    /// Algorithm name, e.g. `fastcdc-2020`.
    pub algorithm: String,
    /// Minimum chunk size in bytes.
    pub min: u32,
    /// Average chunk size in bytes.
    pub avg: u32,
    /// Maximum chunk size in bytes.
    pub max: u32,
}

/// One extent of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Extent {
    /// Stored bytes.
    Chunk {
        /// Offset in the image.
        offset: u64,
        /// Uncompressed length.
        len: u64,
        /// BLAKE3 of the uncompressed bytes.
        id: ChunkId,
    },
    /// A run of zero bytes, not stored.
    Hole {
        /// Offset in the image.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Extent {
    /// Offset in the image.
    pub fn offset(&self) -> u64 {
        match self {
            Extent::Chunk { offset, .. } | Extent::Hole { offset, .. } => *offset,
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Chunk { len, .. } | Extent::Hole { len, .. } => *len,
        }
    }
    /// True if the extent has no bytes (never written by import).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Summary of the image's GUID partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptSummary {
    /// Logical sector size the table was found with (512 or 4096).
    pub logical_sector_size: u64,
    /// Disk GUID, canonical hyphenated upper-case form.
    pub disk_guid: String,
    /// Partitions in table order.
    pub partitions: Vec<GptPartition>,
}

/// One GPT partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptPartition {
    /// Partition number (1-based, as `sgdisk` counts).
    pub number: u32,
    /// Partition name (GPT label).
    pub name: String,
    /// Partition type GUID.
    pub type_guid: String,
    /// Unique partition GUID.
    pub unique_guid: String,
    /// First LBA (inclusive).
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// What the partition's first bytes say it holds (`blockdev::FsKind` names: `ntfs`,
    /// `bitlocker`, `ext4`, ...), probed at import; absent in format 1 and for unknown content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    /// The filesystem's label, probed at import (what `label:` hints match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A FAT partition holding the Windows boot manager's store `EFI/Microsoft/Boot/BCD`, which
    /// names partitions by GUID (so `randomize_guids` would leave the disk unbootable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub windows_bcd: bool,
}

/// Checks a `data_path` hint: absolute (`/` alone is the partition's root), no empty, `.` or
/// `..` component, no NUL, components of at most 255 bytes. The agent resolves it beneath the
/// mounted data partition; checked at import, `tek image set` and whenever a manifest is parsed.
pub fn check_data_path(p: &str) -> Result<(), String> {
    let Some(rel) = p.strip_prefix('/') else {
        return Err(format!("{p:?} must be an absolute path (start with '/')"));
    };
    if p.contains('\0') {
        return Err(format!("{p:?} contains a NUL byte"));
    }
    if rel.is_empty() {
        return Ok(());
    }
    for c in rel.split('/') {
        match c {
            "" => {
                return Err(format!(
                    "{p:?} has an empty component (\"//\" or a trailing '/')"
                ));
            }
            "." | ".." => return Err(format!("{p:?} has a {c:?} component")),
            c if c.len() > 255 => return Err(format!("{p:?} has a component over 255 bytes")),
            _ => {}
        }
    }
    Ok(())
}

/// Hints for the imager and agent, settable at import and with `tek image set`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hints {
    /// The partition that receives client data: a selector (`number:N`, `name:X`, `label:X`,
    /// `type:T`, or a bare GPT name; `blockdev::selector`).
    pub data_partition: Option<String>,
    /// Path inside that partition's filesystem where client data goes (default `/`).
    pub data_path: Option<String>,
    /// The partition to grow to fill the disk: a selector, as `data_partition`.
    pub grow_partition: Option<String>,
    /// Give the disk and its partitions new random GUIDs per device.
    pub randomize_guids: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_path_rules() {
        for ok in ["/", "/Users", "/home/client data", "/a/b/c"] {
            check_data_path(ok).unwrap();
        }
        for bad in [
            "", "Users", "/..", "/a/../b", "/a//b", "//a", "/a/", "/./a", "/a\0b",
        ] {
            assert!(check_data_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_data_path(&format!("/{}", "x".repeat(256))).is_err());
    }
}
