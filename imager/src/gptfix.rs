//! GPT fix-ups for the disk the image landed on, with the `gpt` crate, and the reset that makes a
//! failed disk unmistakable.
//!
//! The primary header and array lie inside the held-back first MiB, which is not on the disk yet,
//! so the crate works on a [`HoldbackDisk`]: reads and writes below 1 MiB go to the in-memory
//! buffer, the rest (the backup array and header at the disk's real end) to the target.
//! Re-initialising the headers against the disk's real size moves the backup header and array to
//! the last LBAs and fixes the primary header's pointers and last usable LBA.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use image_store::Hints;
use serde::Serialize;

use crate::error::ImagerError;
use crate::layout::Plan;
use crate::target::TargetDev;

/// What the fix-ups changed, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GptChanges {
    /// Backup header LBA in the image.
    pub backup_lba_before: u64,
    /// Backup header LBA on the disk.
    pub backup_lba_after: u64,
    /// The partition grown: (name, old last LBA, new last LBA).
    pub grown: Option<(String, u64, u64)>,
    /// Partitions moved to the disk's end by the layout map (type, GUIDs, attributes kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<MovedPartition>,
    /// New random disk and partition GUIDs were given.
    pub guids_randomized: bool,
    /// The disk GUID after the fix-ups.
    pub disk_guid: String,
    /// The grown partition: (number, first LBA, new last LBA), for the filesystem grow.
    #[serde(skip)]
    pub grown_range: Option<(u32, u64, u64)>,
    /// Bytes of GPT structures written beyond the first MiB: (offset, bytes) for read-back.
    #[serde(skip)]
    pub written: Vec<(u64, Vec<u8>)>,
}

/// One partition the layout map moved.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MovedPartition {
    /// Partition number.
    pub number: u32,
    /// GPT name.
    pub name: String,
    /// First LBA in the image.
    pub old_first_lba: u64,
    /// First LBA on the disk.
    pub new_first_lba: u64,
    /// Last LBA on the disk.
    pub new_last_lba: u64,
}

/// The disk as the GPT code sees it: the first `holdback.len()` bytes come from memory.
#[derive(Debug)]
pub struct HoldbackDisk<'a> {
    holdback: &'a mut [u8],
    file: &'a File,
    len: u64,
    pos: u64,
    written: Vec<(u64, Vec<u8>)>,
}

impl<'a> HoldbackDisk<'a> {
    /// A view of a `len`-byte disk.
    pub fn new(holdback: &'a mut [u8], file: &'a File, len: u64) -> Self {
        HoldbackDisk {
            holdback,
            file,
            len,
            pos: 0,
            written: Vec::new(),
        }
    }
}

impl Read for HoldbackDisk<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let hb = self.holdback.len() as u64;
        let n = if self.pos < hb {
            let n = buf.len().min((hb - self.pos) as usize);
            buf[..n].copy_from_slice(&self.holdback[self.pos as usize..self.pos as usize + n]);
            n
        } else {
            let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
            self.file.read_at(&mut buf[..n], self.pos)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for HoldbackDisk<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let hb = self.holdback.len() as u64;
        let n = if self.pos < hb {
            let n = buf.len().min((hb - self.pos) as usize);
            self.holdback[self.pos as usize..self.pos as usize + n].copy_from_slice(&buf[..n]);
            n
        } else {
            self.file.write_all_at(buf, self.pos)?;
            self.written.push((self.pos, buf.to_vec()));
            buf.len()
        };
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for HoldbackDisk<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if p < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = p as u64;
        Ok(self.pos)
    }
}

fn gpt_err(dev: &TargetDev, reason: impl ToString) -> ImagerError {
    ImagerError::Gpt {
        path: dev.path().to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Refuses a GPT header whose partition table the `gpt` crate must not be handed. The crate
/// asserts (panics) on entries that are not 128 bytes, and reads (and allocates) `num_parts` x
/// 128 bytes of entries whatever `num_parts` says: a header claiming 2^32 entries made it
/// allocate half a terabyte (as `image_store::gpt_summary` found at import). The primary table
/// must fit in the held-back window after the protective MBR and the header (tools write 128
/// entries); the crate falls back to the backup header (the disk's last LBA) when the primary one
/// is invalid, so that one is held to the same bound.
fn check_table_fields(dev: &TargetDev, holdback: &[u8], sector: u64) -> Result<(), ImagerError> {
    let window = (holdback.len() as u64).saturating_sub(2 * sector);
    let check = |hdr: &[u8], which: &str| -> Result<(), ImagerError> {
        if hdr.len() < 92 || &hdr[..8] != b"EFI PART" {
            return Ok(()); // not a header: the crate rejects it itself
        }
        let num_parts = u32::from_le_bytes(hdr[80..84].try_into().expect("4 bytes"));
        let entry_size = u32::from_le_bytes(hdr[84..88].try_into().expect("4 bytes"));
        if entry_size != 128 {
            return Err(gpt_err(
                dev,
                format!("the {which} GPT header has {entry_size}-byte partition entries, not 128"),
            ));
        }
        if u64::from(num_parts) * 128 > window {
            return Err(gpt_err(
                dev,
                format!(
                    "the {which} GPT header claims {num_parts} partition entries; at most {} fit \
                     in the first {} bytes",
                    window / 128,
                    holdback.len()
                ),
            ));
        }
        Ok(())
    };
    let s = sector as usize;
    check(holdback.get(s..2 * s).unwrap_or(&[]), "primary")?;
    let disk_len = dev.size();
    if disk_len >= 2 * sector {
        let mut last = vec![0u8; s];
        dev.buffered()
            .read_exact_at(&mut last, disk_len - sector)
            .map_err(|e| gpt_err(dev, format!("reading the backup GPT header: {e}")))?;
        check(&last, "backup")?;
    }
    Ok(())
}

/// Rewrites the GPT for the disk's real size; moves the partitions `plan` moved (by its shift),
/// grows the planned partition (else `hints.grow_partition`, a selector, resolved here) up to the
/// first moved partition or the last usable LBA, and gives new random GUIDs when
/// `hints.randomize_guids`. `holdback` is modified in place (primary header, array, protective
/// MBR); the backup structures are written to the disk.
pub fn fix_gpt(
    dev: &TargetDev,
    holdback: &mut [u8],
    sector: u64,
    hints: &Hints,
    plan: &Plan,
) -> Result<GptChanges, ImagerError> {
    let lb = gpt::disk::LogicalBlockSize::try_from(sector).map_err(|e| gpt_err(dev, e))?;
    let disk_len = dev.size();
    check_table_fields(dev, holdback, sector)?;
    let disk = HoldbackDisk::new(holdback, dev.buffered(), disk_len);
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .open_from_device(disk)
        .map_err(|e| gpt_err(dev, format!("reading the image's GPT: {e}")))?;
    let mut changes = GptChanges {
        backup_lba_before: g.header().backup_lba,
        ..Default::default()
    };
    let hdr = g.header().clone();
    let array_lbs = (hdr.num_parts as u64 * hdr.part_size as u64).div_ceil(sector);
    let last_lba = disk_len / sector - 1;
    let new_last_usable = last_lba - array_lbs - 1;
    let mut parts = g.partitions().clone();
    let shift_lbas = plan.layout.shift / sector;
    for &n in &plan.moved {
        let p = parts
            .get_mut(&n)
            .ok_or_else(|| gpt_err(dev, format!("partition {n} to move is not in the table")))?;
        // Only the position changes: type, unique GUID, attributes and name stay.
        let old_first = p.first_lba;
        p.first_lba += shift_lbas;
        p.last_lba += shift_lbas;
        if p.last_lba > new_last_usable {
            return Err(gpt_err(
                dev,
                format!("moved partition {n} would end past the last usable LBA"),
            ));
        }
        changes.moved.push(MovedPartition {
            number: n,
            name: p.name.clone(),
            old_first_lba: old_first,
            new_first_lba: p.first_lba,
            new_last_lba: p.last_lba,
        });
    }
    let grow = match (plan.grow, &hints.grow_partition) {
        (Some(n), _) => Some(n),
        (None, Some(text)) => Some(resolve_in_table(dev, &parts, text)?),
        (None, None) => None,
    };
    if let Some(key) = grow {
        let p = parts
            .get(&key)
            .ok_or_else(|| gpt_err(dev, format!("no partition {key} to grow")))?;
        let name = p.name.clone();
        // The grown partition ends where the next partition (moved or not) begins.
        let next = parts
            .values()
            .filter(|q| q.is_used() && q.first_lba > p.last_lba)
            .map(|q| q.first_lba)
            .min();
        let new_last = match next {
            Some(f) if plan.grow.is_none() => {
                return Err(gpt_err(
                    dev,
                    format!(
                        "cannot grow \"{}\": a partition follows it (at LBA {f}) and this \
                         image has no layout map (store it with `tek image import` to move it)",
                        name.escape_debug()
                    ),
                ));
            }
            Some(f) => f - 1,
            None => new_last_usable,
        };
        let (old, first) = (p.last_lba, p.first_lba);
        parts.get_mut(&key).expect("found above").last_lba = new_last.max(old);
        changes.grown = Some((name, old, new_last.max(old)));
        if new_last > old {
            changes.grown_range = Some((key, first, new_last));
        }
    }
    if hints.randomize_guids {
        g.update_guid(None);
        for p in parts.values_mut() {
            p.part_guid = uuid::Uuid::new_v4();
        }
        changes.guids_randomized = true;
    }
    // Re-initialises both headers against the device's end (the backup moves to the last LBA).
    g.update_partitions(parts)
        .map_err(|e| gpt_err(dev, format!("updating partitions: {e}")))?;
    g.write_inplace()
        .map_err(|e| gpt_err(dev, format!("writing the GPT: {e}")))?;
    changes.backup_lba_after = g.header().backup_lba;
    changes.disk_guid = g.guid().to_string().to_uppercase();
    let disk = g.take_device();
    changes.written = disk.written;
    patch_protective_mbr(holdback, disk_len / sector);
    Ok(changes)
}

/// Resolves a grow selector against the table itself (one-off files: no probed labels).
fn resolve_in_table(
    dev: &TargetDev,
    parts: &std::collections::BTreeMap<u32, gpt::partition::Partition>,
    text: &str,
) -> Result<u32, ImagerError> {
    use blockdev::selector::{PartitionFacts, PartitionSelector};
    let sel = PartitionSelector::parse(text).map_err(|e| gpt_err(dev, e))?;
    let facts: Vec<PartitionFacts> = parts
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(&number, p)| PartitionFacts {
            number,
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid.to_string(),
            label: None,
        })
        .collect();
    sel.resolve(&facts)
        .map(|p| p.number)
        .map_err(|e| gpt_err(dev, format!("grow_partition: {e}")))
}

/// Makes the protective MBR's 0xEE entry cover the whole disk (capped at 2^32-1 sectors).
pub fn patch_protective_mbr(lba0: &mut [u8], disk_lbas: u64) {
    if lba0.len() < 512 || lba0[510..512] != [0x55, 0xAA] {
        return;
    }
    for i in 0..4 {
        let e = 446 + i * 16;
        if lba0[e + 4] == 0xEE {
            let size = (disk_lbas - 1).min(u32::MAX as u64) as u32;
            lba0[e + 12..e + 16].copy_from_slice(&size.to_le_bytes());
        }
    }
}

/// Makes a failed disk unmistakable: zeroes the first 34 and the last 33 logical sectors (both
/// GPT headers and arrays and the protective MBR), and the image's own backup location when the
/// disk is larger than the image.
pub fn reset_partition_table(dev: &mut TargetDev, image_size: u64) -> Result<(), ImagerError> {
    let s = dev.logical_sector();
    let size = dev.size();
    let head = (34 * s).min(size);
    dev.write_zeros(0, head)?;
    let tail = (33 * s).min(size);
    dev.write_zeros(size - tail, tail)?;
    if image_size < size && image_size > tail {
        dev.write_zeros(image_size - tail, tail)?;
    }
    dev.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small GPT disk image with sgdisk (skips when it is missing).
    fn sgdisk_image(path: &std::path::Path, size: u64) -> bool {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        let ok = std::process::Command::new("sgdisk")
            .args(["-n1:2048:+1M", "-c1:boot", "-n2:0:0", "-c2:root"])
            .arg(path)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            tek_testkit::skip!("sgdisk not available");
        }
        ok
    }

    fn sgdisk_verify(path: &std::path::Path) -> String {
        let o = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn moves_backup_grows_and_randomizes() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        if !sgdisk_image(&img, 4 << 20) {
            return;
        }
        let data = std::fs::read(&img).unwrap();
        // The "disk": the image followed by 4 MiB of old data.
        let disk = dir.path().join("disk");
        let mut d = data.clone();
        d.extend(vec![0xEEu8; 4 << 20]);
        std::fs::write(&disk, &d).unwrap();
        let mut dev = TargetDev::open(&disk, 0).unwrap();
        let mut hb = data[..1 << 20].to_vec();
        let hints = Hints {
            grow_partition: Some("root".into()),
            randomize_guids: true,
            ..Default::default()
        };
        let ch = fix_gpt(&dev, &mut hb, 512, &hints, &Plan::default()).unwrap();
        dev.write_at(&hb, 0).unwrap();
        dev.sync().unwrap();
        assert_eq!(ch.backup_lba_before, (4 << 20) / 512 - 1);
        assert_eq!(ch.backup_lba_after, (8 << 20) / 512 - 1);
        assert_eq!(ch.grown.as_ref().unwrap().2, (8 << 20) / 512 - 34);
        let v = sgdisk_verify(&disk);
        assert!(v.contains("No problems found"), "{v}");
        drop(dev);

        let mut dev = TargetDev::open(&disk, 0).unwrap();
        reset_partition_table(&mut dev, 4 << 20).unwrap();
        let all = std::fs::read(&disk).unwrap();
        assert!(all[512..1024].iter().all(|&b| b == 0));
        assert!(all[all.len() - 512..].iter().all(|&b| b == 0));
        assert!(
            all[(4 << 20) - 512..4 << 20].iter().all(|&b| b == 0),
            "image's backup too"
        );
        assert!(
            !all.windows(8).any(|w| w == b"EFI PART"),
            "no GPT header left"
        );
    }

    /// CRC-32 (IEEE), as the GPT header checksum uses.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// Sets a header's entry count (and entry size) and fixes its CRC, so the `gpt` crate would
    /// trust it.
    fn forge_header(hdr: &mut [u8], num_parts: u32, entry_size: u32) {
        hdr[80..84].copy_from_slice(&num_parts.to_le_bytes());
        hdr[84..88].copy_from_slice(&entry_size.to_le_bytes());
        let size = u32::from_le_bytes(hdr[12..16].try_into().unwrap()) as usize;
        hdr[16..20].fill(0);
        let crc = crc32(&hdr[..size]);
        hdr[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn refuses_a_header_claiming_more_entries_than_fit() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        if !sgdisk_image(&img, 4 << 20) {
            return;
        }
        let good = std::fs::read(&img).unwrap();
        let hints = Hints::default();
        // Primary header: 2^32-1 entries with a valid CRC (the crate would allocate 512 GiB).
        let dev = TargetDev::open(&img, 0).unwrap();
        let mut hb = good[..1 << 20].to_vec();
        forge_header(&mut hb[512..1024], u32::MAX, 128);
        let e = fix_gpt(&dev, &mut hb, 512, &hints, &Plan::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("primary GPT header claims 4294967295 partition entries"),
            "{e}"
        );
        // One entry more than fits in the held-back window after the MBR and the header.
        let mut hb = good[..1 << 20].to_vec();
        let over = ((1u32 << 20) - 1024) / 128 + 1;
        forge_header(&mut hb[512..1024], over, 128);
        assert!(fix_gpt(&dev, &mut hb, 512, &hints, &Plan::default()).is_err());
        let mut hb = good[..1 << 20].to_vec();
        forge_header(&mut hb[512..1024], 128, 256);
        let e = fix_gpt(&dev, &mut hb, 512, &hints, &Plan::default()).unwrap_err();
        assert!(e.to_string().contains("256-byte partition entries"), "{e}");
        drop(dev);
        // Backup header (the disk's last LBA), which the crate falls back to.
        let mut bytes = good.clone();
        let n = bytes.len();
        forge_header(&mut bytes[n - 512..], u32::MAX, 128);
        std::fs::write(&img, &bytes).unwrap();
        let dev = TargetDev::open(&img, 0).unwrap();
        let mut hb = good[..1 << 20].to_vec();
        let e = fix_gpt(&dev, &mut hb, 512, &hints, &Plan::default()).unwrap_err();
        assert!(e.to_string().contains("backup GPT header claims"), "{e}");
    }

    #[test]
    fn missing_grow_partition_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        if !sgdisk_image(&img, 4 << 20) {
            return;
        }
        let dev = TargetDev::open(&img, 0).unwrap();
        let mut hb = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
        let hints = Hints {
            grow_partition: Some("nope".into()),
            ..Default::default()
        };
        let e = fix_gpt(&dev, &mut hb, 512, &hints, &Plan::default()).unwrap_err();
        assert!(
            e.to_string().contains("no partition matches name:\"nope\""),
            "{e}"
        );
    }
}
