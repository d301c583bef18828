//! Remnants: the free space of a filesystem, from its own allocation map, and how much of it
//! still holds non-zero bytes (deleted files live on there). The maps are read directly: ext4's
//! block bitmaps (a group marked `BLOCK_UNINIT` has no bitmap: all of it but its metadata is free),
//! NTFS's `$Bitmap` (through the `ntfs` crate), FAT's first FAT (entry 0 = free cluster).
//! Every size read from the filesystem is checked against the partition before it is used, so a
//! hostile superblock ends with an error, not with a huge allocation or read.

use std::io::{Read, Seek};

use ntfs::{Ntfs, NtfsReadSeek};
use serde::{Deserialize, Serialize};

use super::window::Window;
use super::{PartitionError, io_err};

/// A partition's free space and the part of it that is not zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeSpace {
    /// Bytes the filesystem's allocation map marks free.
    pub free_bytes: u64,
    /// Bytes of free blocks (4 KiB granularity) holding at least one non-zero byte.
    pub nonzero_bytes: u64,
}

/// Free byte ranges `(offset, len)` within the partition, in order, adjacent ones merged.
pub type Ranges = Vec<(u64, u64)>;

/// The free ranges of the `fs` ("ext4", "ntfs", "fat") filesystem in `w`.
pub fn free_ranges<R: Read + Seek>(w: &mut Window<R>, fs: &str) -> Result<Ranges, PartitionError> {
    match fs {
        "ext4" => ext4(w),
        "ntfs" => ntfs(w),
        "fat" => fat(w),
        _ => Ok(Vec::new()),
    }
}

/// Measures how much of `ranges` holds non-zero bytes.
pub fn measure<R: Read + Seek>(
    w: &mut Window<R>,
    ranges: &Ranges,
) -> Result<FreeSpace, PartitionError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut out = FreeSpace {
        free_bytes: 0,
        nonzero_bytes: 0,
    };
    for &(off, len) in ranges {
        out.free_bytes += len;
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(buf.len() as u64) as usize;
            w.read_at(at, &mut buf[..n])
                .map_err(|e| io_err("reading free space", e))?;
            for block in buf[..n].chunks(4096) {
                if !all_zero(block) {
                    out.nonzero_bytes += block.len() as u64;
                }
            }
            at += n as u64;
        }
    }
    Ok(out)
}

/// 4 KiB of zeros to compare with.
static ZEROS: [u8; 4096] = [0; 4096];

/// True when every byte of `b` is zero. Compared 4 KiB at a time with [`ZEROS`] (the
/// platform's `memcmp`, vectorized), several times faster than a byte loop that stops early:
/// the free-space scan reads every free byte of the image.
pub(crate) fn all_zero(b: &[u8]) -> bool {
    b.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn bad(what: String) -> PartitionError {
    PartitionError(format!("allocation map: {what}"))
}

/// Turns a bitmap (bit set = in use, LSB first) of `units` units of `unit` bytes starting at
/// byte `base` into merged free ranges, appended to `out`.
fn bitmap_free(bits: &[u8], units: u64, unit: u64, base: u64, out: &mut Ranges) {
    for i in 0..units.min(bits.len() as u64 * 8) {
        if bits[(i / 8) as usize] & (1 << (i % 8)) == 0 {
            push(out, base + i * unit, unit);
        }
    }
}

fn push(out: &mut Ranges, off: u64, len: u64) {
    match out.last_mut() {
        Some((o, l)) if *o + *l == off => *l += len,
        _ => out.push((off, len)),
    }
}

fn u16_at(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn u32_at(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}

fn ext4<R: Read + Seek>(w: &mut Window<R>) -> Result<Ranges, PartitionError> {
    let mut sb = [0u8; 1024];
    w.read_at(1024, &mut sb)
        .map_err(|e| io_err("reading the ext4 superblock", e))?;
    let log = u32_at(&sb, 0x18);
    if log > 6 {
        return Err(bad(format!("ext4 block size 2^{} KiB", log)));
    }
    let bs = 1024u64 << log;
    let incompat = u32_at(&sb, 0x60);
    let is64 = incompat & 0x80 != 0;
    let blocks = u32_at(&sb, 4) | if is64 { u32_at(&sb, 0x150) << 32 } else { 0 };
    let first = u32_at(&sb, 0x14);
    let bpg = u32_at(&sb, 0x20);
    if blocks.saturating_mul(bs) > w.len() || bpg == 0 || bpg > bs * 8 || first >= blocks {
        return Err(bad(format!(
            "ext4 superblock claims {blocks} blocks of {bs} bytes ({bpg} per group) in a \
             partition of {} bytes",
            w.len()
        )));
    }
    let desc = if is64 { u16_at(&sb, 0xFE).max(32) } else { 32 };
    if desc > 1024 {
        return Err(bad(format!("ext4 group descriptor size {desc}")));
    }
    let groups = (blocks - first).div_ceil(bpg);
    let mut meta = Ext4Meta::new(&sb, groups, bs, desc);
    let gdt = meta.read_descriptors(w)?;
    meta.note_tables(&sb, &gdt, blocks)?;
    let mut out = Vec::new();
    let mut bitmap = vec![0u8; bs as usize];
    for g in 0..groups {
        let d = &gdt[(g * desc) as usize..((g + 1) * desc) as usize];
        let flags = u16_at(d, 0x12);
        let start = first + g * bpg;
        let in_group = bpg.min(blocks - start);
        if flags & 0x2 != 0 {
            // BLOCK_UNINIT: the group's bitmap was never written (it reads as whatever the
            // disk held); the kernel computes it when it first allocates here: every block is
            // free except the group's metadata. Deleted data of an earlier filesystem on the
            // same disk lives on in such a group, so it is measured (and scrubbed) too.
            meta.uninit_free(start, in_group, bs, &mut out);
            continue;
        }
        let at = desc_block(d, desc, 0);
        if at >= blocks {
            return Err(bad(format!(
                "ext4 group {g}'s bitmap at block {at} of {blocks}"
            )));
        }
        w.read_at(at * bs, &mut bitmap)
            .map_err(|e| io_err("reading an ext4 block bitmap", e))?;
        bitmap_free(&bitmap, in_group, bs, start * bs, &mut out);
    }
    Ok(out)
}

/// A block number from a group descriptor: the low 32 bits at `lo`, the high ones 0x20
/// further on in a 64-byte descriptor (block bitmap 0x0, inode bitmap 0x4, inode table 0x8).
fn desc_block(d: &[u8], desc: u64, lo: usize) -> u64 {
    u32_at(d, lo)
        | if desc >= 64 {
            u32_at(d, lo + 0x20) << 32
        } else {
            0
        }
}

/// What a `BLOCK_UNINIT` group holds that is not free, as the kernel's
/// `ext4_init_block_bitmap` counts it: a superblock backup with the group descriptor table
/// and its reserved growth blocks (in the groups `has_super` names), and bitmaps and inode
/// tables. Those of *every* group that fall inside it are taken (with `flex_bg` they may sit
/// in another group than their own): counting a metadata block as in use only makes the
/// measured free space smaller, while counting it free would let `--scrub-free` zero it.
struct Ext4Meta {
    /// Blocks of the descriptor table plus its reserved growth blocks, after a superblock.
    gdt_blocks: u64,
    sparse_super: bool,
    /// `sparse_super2`: backups only in these two groups (0 = none).
    backup_bgs: Option<[u64; 2]>,
    /// META_BG: descriptor blocks from `first_meta_bg` on live in the groups they describe
    /// (the first, second and last group of each run of `per_block` groups), not after the
    /// superblock.
    meta_bg: bool,
    first_meta_bg: u64,
    /// Group descriptors per block, their size, the groups and the block size.
    per_block: u64,
    desc: u64,
    groups: u64,
    bs: u64,
    /// `(first block, blocks)` of every group's bitmaps and inode table.
    extents: Vec<(u64, u64)>,
    blocks_per_group: u64,
    first: u64,
}

impl Ext4Meta {
    fn new(sb: &[u8], groups: u64, bs: u64, desc: u64) -> Ext4Meta {
        let compat = u32_at(sb, 0x5C);
        let incompat = u32_at(sb, 0x60);
        let ro_compat = u32_at(sb, 0x64);
        let meta_bg = incompat & 0x10 != 0;
        let per_block = bs / desc;
        let gdb = groups.div_ceil(per_block);
        let first_meta_bg = if meta_bg {
            u32_at(sb, 0x104).min(gdb)
        } else {
            gdb
        };
        Ext4Meta {
            // With META_BG a superblock is followed by the first `first_meta_bg` descriptor
            // blocks only (the kernel's ext4_bg_num_gdb).
            gdt_blocks: first_meta_bg + u16_at(sb, 0xCE),
            sparse_super: ro_compat & 0x1 != 0,
            backup_bgs: (compat & 0x200 != 0).then(|| [u32_at(sb, 0x24C), u32_at(sb, 0x250)]),
            meta_bg,
            first_meta_bg,
            per_block,
            desc,
            groups,
            bs,
            extents: Vec::new(),
            blocks_per_group: u32_at(sb, 0x20),
            first: u32_at(sb, 0x14),
        }
    }

    /// Block number of descriptor block `i`: after the primary superblock, or (META_BG, from
    /// `first_meta_bg` on) at the start of the first group of its meta group, after that
    /// group's superblock backup if it has one.
    fn descriptor_block(&self, i: u64) -> u64 {
        if i < self.first_meta_bg {
            return self.first + 1 + i;
        }
        let g = i * self.per_block;
        self.first + g * self.blocks_per_group + u64::from(self.has_super(g))
    }

    /// Reads every group descriptor, `groups * desc` bytes.
    fn read_descriptors<R: Read + Seek>(
        &self,
        w: &mut Window<R>,
    ) -> Result<Vec<u8>, PartitionError> {
        let gdb = self.groups.div_ceil(self.per_block);
        let mut gdt = vec![0u8; (gdb * self.bs) as usize];
        let err = |e| io_err("reading the ext4 group descriptors", e);
        // The blocks before `first_meta_bg` are contiguous: one read.
        let head = (self.first_meta_bg * self.bs) as usize;
        w.read_at(self.descriptor_block(0) * self.bs, &mut gdt[..head])
            .map_err(err)?;
        for i in self.first_meta_bg..gdb {
            let at = (i * self.bs) as usize;
            w.read_at(
                self.descriptor_block(i) * self.bs,
                &mut gdt[at..at + self.bs as usize],
            )
            .map_err(err)?;
        }
        gdt.truncate((self.groups * self.desc) as usize);
        Ok(gdt)
    }

    /// Notes where every group's bitmaps and inode table are.
    fn note_tables(&mut self, sb: &[u8], gdt: &[u8], blocks: u64) -> Result<(), PartitionError> {
        let rev = u32_at(sb, 0x4C);
        let inode_size = if rev == 0 { 128 } else { u16_at(sb, 0x58) };
        let ipg = u32_at(sb, 0x28);
        let itable = (ipg * inode_size).div_ceil(self.bs);
        if itable > blocks {
            return Err(bad(format!(
                "ext4 inode table of {itable} blocks per group in {blocks} blocks"
            )));
        }
        let desc = self.desc;
        let mut extents = Vec::with_capacity(self.groups as usize * 3);
        for g in 0..self.groups {
            let d = &gdt[(g * desc) as usize..((g + 1) * desc) as usize];
            extents.push((desc_block(d, desc, 0), 1));
            extents.push((desc_block(d, desc, 4), 1));
            extents.push((desc_block(d, desc, 8), itable));
        }
        self.extents = extents;
        Ok(())
    }

    /// Blocks at the start of group `g` that hold a superblock and descriptors (the kernel's
    /// `ext4_num_base_meta_clusters`).
    fn base_meta(&self, g: u64) -> u64 {
        let sup = u64::from(self.has_super(g));
        if !self.meta_bg || g < self.first_meta_bg * self.per_block {
            return if sup == 1 { 1 + self.gdt_blocks } else { 0 };
        }
        let i = g % self.per_block;
        sup + u64::from(i == 0 || i == 1 || i == self.per_block - 1)
    }

    /// Whether group `g` holds a superblock backup (and the descriptor table after it).
    fn has_super(&self, g: u64) -> bool {
        fn power_of(mut g: u64, b: u64) -> bool {
            while g > 1 && g % b == 0 {
                g /= b;
            }
            g == 1
        }
        if g == 0 {
            return true;
        }
        match self.backup_bgs {
            Some(bgs) => bgs.contains(&g),
            None if !self.sparse_super => true,
            None => power_of(g, 3) || power_of(g, 5) || power_of(g, 7),
        }
    }

    /// Appends the free ranges of the uninitialized group starting at block `start`.
    fn uninit_free(&self, start: u64, in_group: u64, bs: u64, out: &mut Ranges) {
        let g = (start - self.first) / self.blocks_per_group;
        let mut used = vec![false; in_group as usize];
        let mut mark = |from: u64, n: u64| {
            let (lo, hi) = (
                from.max(start),
                from.saturating_add(n).min(start + in_group),
            );
            for b in lo..hi.max(lo) {
                used[(b - start) as usize] = true;
            }
        };
        mark(start, self.base_meta(g));
        for &(from, n) in &self.extents {
            mark(from, n);
        }
        for (i, u) in used.iter().enumerate() {
            if !u {
                push(out, (start + i as u64) * bs, bs);
            }
        }
    }
}

fn ntfs<R: Read + Seek>(w: &mut Window<R>) -> Result<Ranges, PartitionError> {
    let mut fs = w.clone();
    let ntfs = Ntfs::new(&mut fs).map_err(|e| io_err("reading the NTFS boot sector", e))?;
    let cluster = ntfs.cluster_size() as u64;
    // The volume's own size (its boot sector's), not the partition's: a volume smaller than
    // its partition has a $Bitmap for the volume only (the rest is `unread::beyond_end`'s).
    let clusters = ntfs.size().min(w.len()) / cluster;
    let file = ntfs
        .file(&mut fs, 6)
        .map_err(|e| io_err("reading the MFT record of $Bitmap", e))?;
    let item = file
        .data(&mut fs, "")
        .ok_or_else(|| bad("$Bitmap has no data".into()))?
        .map_err(|e| io_err("reading $Bitmap", e))?;
    let attr = item
        .to_attribute()
        .map_err(|e| io_err("reading $Bitmap", e))?;
    let mut value = attr
        .value(&mut fs)
        .map_err(|e| io_err("reading $Bitmap", e))?;
    let want = clusters.div_ceil(8);
    if value.len() < want || value.len() > want + (1 << 20) {
        return Err(bad(format!(
            "$Bitmap of {} bytes for {clusters} clusters",
            value.len()
        )));
    }
    let mut bits = vec![0u8; want as usize];
    let mut got = 0;
    while got < bits.len() {
        let k = value
            .read(&mut fs, &mut bits[got..])
            .map_err(|e| io_err("reading $Bitmap", e))?;
        if k == 0 {
            return Err(bad("$Bitmap ends early".into()));
        }
        got += k;
    }
    let mut out = Vec::new();
    bitmap_free(&bits, clusters, cluster, 0, &mut out);
    Ok(out)
}

/// A FAT volume's layout, from its boot sector (checked against the partition).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FatGeometry {
    /// Bytes per sector.
    pub bps: u64,
    /// Sectors per cluster.
    pub spc: u64,
    /// Reserved sectors (the first FAT follows).
    pub reserved: u64,
    /// Sectors per FAT.
    pub fatsz: u64,
    /// First sector of the data region.
    pub data: u64,
    /// Data clusters.
    pub clusters: u64,
    /// The root directory's first cluster (FAT32; 0 for FAT12/16, whose root is a fixed area).
    pub root_cluster: u64,
    /// 12, 16 or 32. FAT32 is decided by the BPB (`sectors_per_fat_16 == 0`), as Windows and
    /// Linux do, not by the cluster count: mkfs.fat and Windows make FAT32 ESPs of fewer than
    /// 65525 clusters.
    pub fat_type: u64,
}

impl FatGeometry {
    /// Reads and checks the boot sector of the FAT volume in `w`.
    pub(crate) fn read<R: Read + Seek>(w: &mut Window<R>) -> Result<FatGeometry, PartitionError> {
        let mut b = [0u8; 512];
        w.read_at(0, &mut b)
            .map_err(|e| io_err("reading the FAT boot sector", e))?;
        let bps = u16_at(&b, 11);
        let spc = b[13] as u64;
        let reserved = u16_at(&b, 14);
        let nfats = b[16] as u64;
        let root_entries = u16_at(&b, 17);
        let total = match u16_at(&b, 19) {
            0 => u32_at(&b, 32),
            t => t,
        };
        let fatsz = match u16_at(&b, 22) {
            0 => u32_at(&b, 36),
            f => f,
        };
        let fat32 = u16_at(&b, 22) == 0;
        if !matches!(bps, 512 | 1024 | 2048 | 4096) || spc == 0 || nfats == 0 {
            return Err(bad(format!(
                "FAT boot sector: {bps} bytes per sector, {spc} per cluster, {nfats} FATs"
            )));
        }
        let root_secs = (root_entries * 32).div_ceil(bps);
        let data = reserved + nfats * fatsz + root_secs;
        if total.saturating_mul(bps) > w.len() || data >= total {
            return Err(bad(format!(
                "FAT boot sector claims {total} sectors of {bps} bytes in a partition of {} bytes",
                w.len()
            )));
        }
        let clusters = (total - data) / spc;
        let fat_type = if fat32 {
            32
        } else if clusters < 4085 {
            12
        } else {
            16
        };
        Ok(FatGeometry {
            bps,
            spc,
            reserved,
            fatsz,
            data,
            clusters,
            root_cluster: if fat32 { u32_at(&b, 44) } else { 0 },
            fat_type,
        })
    }
}

fn fat<R: Read + Seek>(w: &mut Window<R>) -> Result<Ranges, PartitionError> {
    let FatGeometry {
        bps,
        spc,
        reserved,
        fatsz,
        data,
        clusters,
        fat_type,
        ..
    } = FatGeometry::read(w)?;
    let need = (clusters + 2) * fat_type / 8 + 2;
    if need > fatsz * bps {
        return Err(bad(format!(
            "a FAT of {} bytes for {clusters} clusters",
            fatsz * bps
        )));
    }
    let mut table = vec![0u8; need as usize];
    w.read_at(reserved * bps, &mut table)
        .map_err(|e| io_err("reading the FAT", e))?;
    let csize = spc * bps;
    let mut out = Vec::new();
    for c in 2..clusters + 2 {
        let v = match fat_type {
            12 => {
                let o = (c * 3 / 2) as usize;
                let pair = u16_at(&table, o);
                if c % 2 == 0 { pair & 0xFFF } else { pair >> 4 }
            }
            16 => u16_at(&table, (c * 2) as usize),
            _ => u32_at(&table, (c * 4) as usize) & 0x0FFF_FFFF,
        };
        if v == 0 {
            push(&mut out, (data + (c - 2) * spc) * bps, csize);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_sees_one_byte_anywhere() {
        let mut b = vec![0u8; 3 * 4096 + 17];
        assert!(all_zero(&b) && all_zero(&b[..0]) && all_zero(&b[5..9000]));
        for at in [0, 4095, 4096, 3 * 4096 + 16] {
            b[at] = 1;
            assert!(!all_zero(&b), "{at}");
            b[at] = 0;
        }
    }

    #[test]
    fn bitmaps_become_merged_free_ranges() {
        let mut out = Vec::new();
        // units 0..10: in use 0, 3; free 1-2, 4-9 (bits past `units` ignored)
        bitmap_free(&[0b0000_1001, 0b1111_1100], 10, 4096, 1 << 20, &mut out);
        assert_eq!(
            out,
            [((1 << 20) + 4096, 8192), ((1 << 20) + 4 * 4096, 6 * 4096)]
        );
    }
}
