//! The one NTFS fact tek reads itself: the `$Volume` flags (MFT record 3, attribute
//! `$VOLUME_INFORMATION`), whose dirty bit Windows sets while the volume is in use and after a
//! crash, and `chkdsk` clears. A dirty volume is refused as a data target (never "fixed" behind
//! the user's back: `ntfsfix` would clear the bit without checking anything). Hibernation is
//! `ntfs-3g.probe`'s question (it reads `hiberfil.sys`).
//!
//! The image is hostile input: every offset is bounds-checked, and the multi-sector fixups of
//! the MFT record are applied (and checked) before anything in it is believed.

use std::io::{Read, Seek, SeekFrom};

/// `$VOLUME_INFORMATION` flag: the volume is dirty (in use, or not shut down cleanly).
pub const VOLUME_IS_DIRTY: u16 = 0x0001;

/// What `$Volume` says, and where its flags live on the volume (for tests that set them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// NTFS version (major, minor), 3.1 for every Windows since XP.
    pub version: (u8, u8),
    /// The `$VOLUME_INFORMATION` flags.
    pub flags: u16,
    /// Byte offset of the flags field from the start of the volume.
    pub flags_offset: u64,
    /// The volume label (`$VOLUME_NAME`), if it has one.
    pub label: Option<String>,
}

impl VolumeInfo {
    /// True if the dirty bit is set.
    pub fn dirty(&self) -> bool {
        self.flags & VOLUME_IS_DIRTY != 0
    }
}

/// Why `$Volume` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NtfsError {
    /// Reading the volume failed.
    #[error("reading NTFS structures at offset {offset}: {source}")]
    Io {
        /// Byte offset from the start of the volume.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// A structure is not what NTFS writes.
    #[error("NTFS {what} at offset {offset} is malformed: {reason}")]
    Malformed {
        /// Which structure ("boot sector", "$Volume record", ...).
        what: &'static str,
        /// Byte offset from the start of the volume.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn bad(what: &'static str, offset: u64, reason: impl Into<String>) -> NtfsError {
    NtfsError::Malformed {
        what,
        offset,
        reason: reason.into(),
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Reads the `$Volume` flags and label of the NTFS volume starting at byte `base` of `dev`
/// (offsets in errors and [`VolumeInfo::flags_offset`] are relative to the volume).
pub fn volume_info(dev: &mut (impl Read + Seek), base: u64) -> Result<VolumeInfo, NtfsError> {
    let mut read_at = |offset: u64, buf: &mut [u8]| -> Result<(), NtfsError> {
        dev.seek(SeekFrom::Start(base.saturating_add(offset)))
            .and_then(|_| dev.read_exact(buf))
            .map_err(|source| NtfsError::Io { offset, source })
    };
    let mut boot = [0u8; 512];
    read_at(0, &mut boot)?;
    if &boot[3..11] != b"NTFS    " {
        return Err(bad("boot sector", 0, "no NTFS signature"));
    }
    let bps = u64::from(u16_at(&boot, 0x0B).unwrap_or(0));
    if !(256..=4096).contains(&bps) || !bps.is_power_of_two() {
        return Err(bad("boot sector", 0x0B, format!("{bps} bytes per sector")));
    }
    let spc = match boot[0x0D] {
        0 => return Err(bad("boot sector", 0x0D, "0 sectors per cluster")),
        v if v <= 0x80 => u64::from(v),
        v => 1u64 << (256 - u32::from(v)).min(31),
    };
    let cluster = bps * spc;
    let mft_lcn = u64::from_le_bytes(boot[0x30..0x38].try_into().expect("8 bytes"));
    let record_size = match boot[0x40] as i8 {
        v if v > 0 => u64::from(v as u8) * cluster,
        v if (-31..0).contains(&v) => 1u64 << -i32::from(v),
        v => {
            return Err(bad(
                "boot sector",
                0x40,
                format!("MFT record size code {v}"),
            ));
        }
    };
    if !(512..=65536).contains(&record_size) {
        return Err(bad(
            "boot sector",
            0x40,
            format!("{record_size}-byte MFT records"),
        ));
    }
    // The first MFT records ($MFT..$Volume..) are contiguous at the start of the MFT.
    let rec_off = mft_lcn
        .checked_mul(cluster)
        .and_then(|o| o.checked_add(3 * record_size))
        .ok_or_else(|| bad("boot sector", 0x30, "MFT location overflows"))?;
    let mut rec = vec![0u8; record_size as usize];
    read_at(rec_off, &mut rec)?;
    let what = "$Volume record";
    if &rec[..4] != b"FILE" {
        return Err(bad(what, rec_off, "no FILE signature"));
    }
    apply_fixups(&mut rec, bps as usize).map_err(|r| bad(what, rec_off, r))?;
    let mut a = usize::from(u16_at(&rec, 0x14).unwrap_or(0));
    let (mut label, mut info) = (None, None);
    while let Some(ty) = u32_at(&rec, a) {
        if ty == 0xFFFF_FFFF {
            break;
        }
        let len = u32_at(&rec, a + 4).unwrap_or(0) as usize;
        if len < 24 || a + len > rec.len() {
            return Err(bad(
                what,
                rec_off + a as u64,
                format!("attribute length {len}"),
            ));
        }
        let resident = rec[a + 8] == 0;
        let vlen = u32_at(&rec, a + 0x10).unwrap_or(0) as usize;
        let voff = usize::from(u16_at(&rec, a + 0x14).unwrap_or(0));
        if resident && voff + vlen > len {
            return Err(bad(
                what,
                rec_off + a as u64,
                "attribute value past its end",
            ));
        }
        let v = a + voff;
        if ty == 0x60 && resident {
            let units: Vec<u16> = rec[v..v + vlen]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            label = Some(String::from_utf16_lossy(&units)).filter(|l| !l.is_empty());
        }
        if ty == 0x70 && resident {
            if vlen < 12 {
                return Err(bad(what, rec_off + a as u64, "short $VOLUME_INFORMATION"));
            }
            info = Some((
                (rec[v + 8], rec[v + 9]),
                u16_at(&rec, v + 10).expect("checked above"),
                rec_off + (v + 10) as u64,
            ));
        }
        a += len;
    }
    let (version, flags, flags_offset) =
        info.ok_or_else(|| bad(what, rec_off, "no resident $VOLUME_INFORMATION"))?;
    Ok(VolumeInfo {
        version,
        flags,
        flags_offset,
        label,
    })
}

/// Checks and undoes the update sequence: the last two bytes of every sector of the record hold
/// the sequence number (a torn write shows as a mismatch) and their real value is in the array.
fn apply_fixups(rec: &mut [u8], bps: usize) -> Result<(), String> {
    let usa = usize::from(u16_at(rec, 4).unwrap_or(0));
    let count = usize::from(u16_at(rec, 6).unwrap_or(0));
    if count == 0 || count - 1 != rec.len() / bps || usa + 2 * count > rec.len() {
        return Err(format!("update sequence of {count} at {usa}"));
    }
    let seq = [rec[usa], rec[usa + 1]];
    for i in 1..count {
        let end = i * bps;
        if rec[end - 2..end] != seq {
            return Err(format!("sector {i} fails its update sequence (torn write)"));
        }
        rec[end - 2] = rec[usa + 2 * i];
        rec[end - 1] = rec[usa + 2 * i + 1];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal NTFS: boot sector, MFT at cluster 4 with a `$Volume` record at index 3.
    fn fake_volume(flags: u16) -> Vec<u8> {
        let mut v = vec![0u8; 64 << 10];
        v[3..11].copy_from_slice(b"NTFS    ");
        v[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        v[0x0D] = 8; // 4 KiB clusters
        v[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        v[0x40] = (-10i8) as u8; // 1 KiB records
        let r = 4 * 4096 + 3 * 1024;
        let rec = &mut v[r..r + 1024];
        rec[..4].copy_from_slice(b"FILE");
        rec[4..6].copy_from_slice(&0x30u16.to_le_bytes());
        rec[6..8].copy_from_slice(&3u16.to_le_bytes());
        rec[0x14..0x16].copy_from_slice(&0x38u16.to_le_bytes());
        // update sequence: number 7, saved bytes 0xAA 0xBB per sector
        rec[0x30..0x36].copy_from_slice(&[7, 0, 0xAA, 0xBB, 0xAA, 0xBB]);
        rec[510..512].copy_from_slice(&[7, 0]);
        rec[1022..1024].copy_from_slice(&[7, 0]);
        let a = 0x38;
        rec[a..a + 4].copy_from_slice(&0x70u32.to_le_bytes());
        rec[a + 4..a + 8].copy_from_slice(&40u32.to_le_bytes());
        rec[a + 0x10..a + 0x14].copy_from_slice(&12u32.to_le_bytes());
        rec[a + 0x14..a + 0x16].copy_from_slice(&0x18u16.to_le_bytes());
        rec[a + 0x18 + 8] = 3;
        rec[a + 0x18 + 9] = 1;
        rec[a + 0x18 + 10..a + 0x18 + 12].copy_from_slice(&flags.to_le_bytes());
        rec[a + 40..a + 44].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        v
    }

    #[test]
    fn reads_flags_and_refuses_torn_records() {
        let clean = volume_info(&mut std::io::Cursor::new(fake_volume(0)), 0).unwrap();
        assert_eq!(clean.version, (3, 1));
        assert!(!clean.dirty());
        let dirty = volume_info(&mut std::io::Cursor::new(fake_volume(1)), 0).unwrap();
        assert!(dirty.dirty());
        assert_eq!(
            dirty.flags_offset,
            (4 * 4096 + 3 * 1024 + 0x38 + 0x18 + 10) as u64
        );
        let mut torn = fake_volume(0);
        torn[4 * 4096 + 3 * 1024 + 1023] = 9;
        let e = volume_info(&mut std::io::Cursor::new(torn), 0).unwrap_err();
        assert!(e.to_string().contains("torn write"), "{e}");
        let mut huge = fake_volume(0);
        huge[0x30..0x38].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(volume_info(&mut std::io::Cursor::new(huge), 0).is_err());
        assert!(volume_info(&mut std::io::Cursor::new(vec![0u8; 4096]), 0).is_err());
    }
}
