//! What a partition holds, from the signatures at its start: the one table the imager (which
//! filesystem to grow), client-data (what to mount, what to refuse) and the image store (the
//! partition summary of a manifest) share.
//!
//! Only magic bytes are read, never trusted further: a signature says which tool to hand the
//! partition to, and that tool checks the rest.

use std::io::Read;
use std::path::Path;

/// Bytes of a partition's start [`identify`] looks at (btrfs keeps its superblock at 64 KiB).
pub const PROBE_LEN: usize = 0x10040 + 8;

/// What a partition's first bytes say it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// ext2/3/4 (superblock magic 0xEF53 at 1080); mounted as `ext4`.
    Ext4,
    /// XFS (`XFSB` at 0).
    Xfs,
    /// btrfs (`_BHRfS_M` at 64 KiB + 64).
    Btrfs,
    /// FAT12/16/32.
    Vfat,
    /// NTFS (`NTFS    ` OEM id at 3).
    Ntfs,
    /// A BitLocker-encrypted volume (`-FVE-FS-` OEM id at 3): its filesystem is unreadable
    /// without the recovery key, so tek neither grows it nor writes client data into it.
    BitLocker,
}

impl FsKind {
    /// The name used in manifests, reports and as mount(2)'s type where one exists.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Vfat => "vfat",
            FsKind::Ntfs => "ntfs",
            FsKind::BitLocker => "bitlocker",
        }
    }

    /// The inverse of [`FsKind::name`].
    pub fn from_name(s: &str) -> Option<FsKind> {
        [
            FsKind::Ext4,
            FsKind::Xfs,
            FsKind::Btrfs,
            FsKind::Vfat,
            FsKind::Ntfs,
            FsKind::BitLocker,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies the filesystem from a partition's first bytes (up to [`PROBE_LEN`]; shorter input
/// only finds what lies inside it).
pub fn identify(b: &[u8]) -> Option<FsKind> {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    // The OEM ids first: a BitLocker volume keeps a FAT-like boot sector.
    if at(3, b"-FVE-FS-") {
        return Some(FsKind::BitLocker);
    }
    if at(3, b"NTFS    ") {
        return Some(FsKind::Ntfs);
    }
    if at(1080, &[0x53, 0xEF]) {
        return Some(FsKind::Ext4);
    }
    if at(0, b"XFSB") {
        return Some(FsKind::Xfs);
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some(FsKind::Btrfs);
    }
    if at(0x52, b"FAT32") || at(0x36, b"FAT") {
        return Some(FsKind::Vfat);
    }
    None
}

/// The volume label kept in a superblock inside `b` (ext4, FAT, XFS, btrfs); NTFS keeps its
/// label in the MFT ([`crate::ntfs::volume_info`]).
pub fn label(b: &[u8]) -> Option<String> {
    let text = |off: usize, len: usize| -> Option<String> {
        let raw = b.get(off..off + len)?;
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        let s = String::from_utf8_lossy(&raw[..end]).trim_end().to_string();
        (!s.is_empty()).then_some(s)
    };
    match identify(b)? {
        FsKind::Ext4 => text(1024 + 0x78, 16),
        FsKind::Xfs => text(0x6C, 12),
        FsKind::Btrfs => text(0x10000 + 0x12B, 256),
        FsKind::Vfat if b.get(0x52..0x57) == Some(b"FAT32") => {
            text(0x47, 11).filter(|l| l != "NO NAME")
        }
        FsKind::Vfat => text(0x2B, 11).filter(|l| l != "NO NAME"),
        FsKind::Ntfs | FsKind::BitLocker => None,
    }
}

/// Reads the start of `dev` (a partition node, loop device or file) and identifies it.
pub fn probe(dev: &Path) -> std::io::Result<Option<FsKind>> {
    let mut f = std::fs::File::open(dev)?;
    let mut b = vec![0u8; PROBE_LEN];
    let mut got = 0;
    while got < b.len() {
        match f.read(&mut b[got..])? {
            0 => break,
            n => got += n,
        }
    }
    b.truncate(got);
    Ok(identify(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut b = vec![0u8; PROBE_LEN];
        assert_eq!(identify(&b), None);
        b[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(identify(&b), Some(FsKind::Ntfs));
        b[3..11].copy_from_slice(b"-FVE-FS-");
        assert_eq!(identify(&b), Some(FsKind::BitLocker));
        let mut e = vec![0u8; 2048];
        e[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(identify(&e), Some(FsKind::Ext4));
        assert_eq!(identify(b"XFSB"), Some(FsKind::Xfs));
        assert_eq!(
            identify(&e[..1000]),
            None,
            "short input finds nothing past its end"
        );
        e[1024 + 0x78..1024 + 0x78 + 4].copy_from_slice(b"DATA");
        assert_eq!(label(&e).as_deref(), Some("DATA"));
        for k in [FsKind::Ntfs, FsKind::BitLocker, FsKind::Ext4] {
            assert_eq!(FsKind::from_name(k.name()), Some(k));
        }
    }
}
