//! What a disk (or image file) holds now, in a few lines for `tek write`'s confirmation: its
//! partition table (GPT, else MBR), each partition's name, size, filesystem and label (probed by
//! the same code that probes an image at import), or the filesystem on the whole disk, or that
//! its first and last MiB read as zeros. Reads only.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use image_store::manifest::GptSummary;

use super::render::size;

/// How much of each end is looked at for "blank".
const EDGE: u64 = 1 << 20;

/// The lines describing what `path` holds, indented by the caller.
pub fn describe(path: &Path) -> Result<Vec<String>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("sizing {}", path.display()))?;
    describe_in(&mut f, len).with_context(|| format!("reading {}", path.display()))
}

/// [`describe`] over any disk-like reader of `len` bytes.
pub fn describe_in<R: Read + Seek>(r: &mut R, len: u64) -> std::io::Result<Vec<String>> {
    if len == 0 {
        return Ok(vec!["empty (0 bytes)".into()]);
    }
    if let Some(mut gpt) = image_store::audit::gpt_of(r, len)? {
        image_store::probe::probe_partitions_in(r, len, &mut gpt)?;
        return Ok(gpt_lines(&gpt));
    }
    let mut head = vec![0u8; blockdev::fstype::PROBE_LEN.min(len as usize)];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut head)?;
    if let Some(kind) = blockdev::fstype::identify(&head) {
        let label = blockdev::fstype::label(&head)
            .map(|l| format!(" labelled \"{}\"", l.escape_debug()))
            .unwrap_or_default();
        return Ok(vec![format!(
            "no partition table; the whole disk is one {} filesystem{label}",
            kind.name()
        )]);
    }
    if let Some(lines) = mbr_lines(&head) {
        return Ok(lines);
    }
    if is_blank(r, len, &head)? {
        return Ok(vec![format!(
            "no partition table, no filesystem; the first and last {} read as zeros",
            size(EDGE.min(len))
        )]);
    }
    Ok(vec![
        "no partition table and no filesystem tek knows (data of some other kind)".into(),
    ])
}

fn gpt_lines(gpt: &GptSummary) -> Vec<String> {
    let n = gpt.partitions.len();
    let mut out = vec![format!(
        "GPT, {n} partition{}",
        if n == 1 { "" } else { "s" }
    )];
    let w = gpt
        .partitions
        .iter()
        .map(|p| p.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    for p in &gpt.partitions {
        let bytes =
            (p.last_lba.saturating_sub(p.first_lba) + 1).saturating_mul(gpt.logical_sector_size);
        let name = if p.name.is_empty() { "-" } else { &p.name };
        let fs = match (&p.filesystem, &p.label) {
            (Some(fs), Some(l)) => format!("{fs} \"{}\"", l.escape_debug()),
            (Some(fs), None) => fs.clone(),
            (None, _) => "no known filesystem".into(),
        };
        out.push(format!(
            "  {:>2}  {:<w$}  {:>10}  {fs}",
            p.number,
            name.escape_debug().to_string(),
            size(bytes)
        ));
    }
    out
}

/// An MBR (DOS) partition table in the first sector: its non-empty entries. `None` without the
/// 0x55AA signature or with no entry (the protective MBR of a GPT disk whose GPT is gone has
/// one entry of type 0xEE and says so).
fn mbr_lines(head: &[u8]) -> Option<Vec<String>> {
    if head.len() < 512 || head[510..512] != [0x55, 0xAA] {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..4 {
        let e = &head[446 + 16 * i..446 + 16 * (i + 1)];
        let kind = e[4];
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
        if kind == 0 || sectors == 0 {
            continue;
        }
        let what = match kind {
            0xEE => "GPT protective entry (the GPT itself is damaged or missing)".to_string(),
            0x07 => "NTFS/exFAT".into(),
            0x0B | 0x0C | 0x0E => "FAT".into(),
            0x83 => "Linux".into(),
            0x82 => "Linux swap".into(),
            0x05 | 0x0F => "extended".into(),
            k => format!("type 0x{k:02x}"),
        };
        out.push(format!(
            "  {:>2}  {:>10}  {what}",
            i + 1,
            size(sectors * 512)
        ));
    }
    if out.is_empty() {
        return None;
    }
    let n = out.len();
    out.insert(
        0,
        format!("MBR (DOS), {n} partition{}", if n == 1 { "" } else { "s" }),
    );
    Some(out)
}

fn is_blank<R: Read + Seek>(r: &mut R, len: u64, head: &[u8]) -> std::io::Result<bool> {
    if head.iter().any(|&b| b != 0) {
        return Ok(false);
    }
    let mut buf = vec![0u8; EDGE.min(len) as usize];
    for start in [0, len - buf.len() as u64] {
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(&mut buf)?;
        if buf.iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn blank_disk_and_unknown_data() {
        let mut d = Cursor::new(vec![0u8; 4 << 20]);
        let l = describe_in(&mut d, 4 << 20).unwrap();
        assert!(l[0].contains("read as zeros"), "{l:?}");
        let mut v = vec![0u8; 4 << 20];
        v[(3 << 20) + 7] = 1;
        let l = describe_in(&mut Cursor::new(v), 4 << 20).unwrap();
        assert!(l[0].contains("some other kind"), "{l:?}");
        assert_eq!(
            describe_in(&mut Cursor::new(Vec::new()), 0).unwrap(),
            ["empty (0 bytes)"]
        );
    }

    #[test]
    fn mbr_entries_and_a_whole_disk_filesystem() {
        let mut v = vec![0u8; 4 << 20];
        v[510] = 0x55;
        v[511] = 0xAA;
        v[446 + 4] = 0x83;
        v[446 + 12..446 + 16].copy_from_slice(&(4096u32).to_le_bytes());
        v[446 + 16 + 4] = 0x07;
        v[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&(2048u32).to_le_bytes());
        let l = describe_in(&mut Cursor::new(v), 4 << 20).unwrap();
        assert_eq!(l[0], "MBR (DOS), 2 partitions", "{l:?}");
        assert!(l[1].contains("2.0 MiB") && l[1].contains("Linux"), "{l:?}");
        assert!(l[2].contains("NTFS"), "{l:?}");

        let mut e = vec![0u8; 4 << 20];
        e[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        e[1024 + 0x78..1024 + 0x78 + 4].copy_from_slice(b"DATA");
        let l = describe_in(&mut Cursor::new(e), 4 << 20).unwrap();
        assert_eq!(
            l,
            ["no partition table; the whole disk is one ext4 filesystem labelled \"DATA\""]
        );
    }
}
