//! A small Windows-layout sample image for `tek demo --windows`: the partitions Windows Setup
//! makes, in its order, with Recovery *after* the Windows partition and both named "Basic data
//! partition", as Setup leaves them. The GPT and the ESP are written in pure Rust (gpt, fatfs);
//! the two NTFS volumes need `mkntfs` (package ntfs-3g), run as a subprocess.
//!
//! | # | GPT name                     | start (LBA) | size   | content                    |
//! |---|------------------------------|-------------|--------|----------------------------|
//! | 1 | EFI system partition         | 2048        | 32 MiB | FAT, label SYSTEM          |
//! | 2 | Microsoft reserved partition | 67584       | 16 MiB | nothing                    |
//! | 3 | Basic data partition         | 100352      | 64 MiB | NTFS, label Windows        |
//! | 4 | Basic data partition         | 231424      | to end | NTFS, label Recovery (WinRE type) |

use std::fs::{File, OpenOptions};
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use gpt::disk::LogicalBlockSize;
use gpt::partition_types;

/// Size of the Windows sample image.
pub const WIN_SAMPLE_SIZE: u64 = 130 << 20;
/// The hints the demo imports it with.
pub const WIN_DATA_PARTITION: &str = "label:Windows";
/// Where client data goes on it.
pub const WIN_DATA_PATH: &str = "/Users/Public/Documents/Recovered";
/// The partition to grow (Recovery follows it and moves to the disk's end).
pub const WIN_GROW_PARTITION: &str = "type:basic-data";

const SECTOR: u64 = 512;
const WIN_FIRST: u64 = 100_352;
const WIN_SECTORS: u64 = 131_072;
const REC_FIRST: u64 = 231_424;

fn mkntfs(
    img: &File,
    path: &Path,
    dir: &Path,
    first: u64,
    sectors: u64,
    label: &str,
) -> Result<()> {
    let side = dir.join(format!("{label}.ntfs"));
    let f = File::create(&side).with_context(|| format!("creating {}", side.display()))?;
    f.set_len(sectors * SECTOR)
        .with_context(|| format!("sizing {}", side.display()))?;
    drop(f);
    let out = Command::new("mkntfs")
        .args(["-q", "-F", "-Q", "-L", label, "-p"])
        .arg(first.to_string())
        .args(["-H", "255", "-S", "63"])
        .arg(&side)
        .output()
        .context("running mkntfs (package ntfs-3g; tek demo --windows needs it)")?;
    if !out.status.success() {
        bail!(
            "mkntfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let bytes = std::fs::read(&side).with_context(|| format!("reading {}", side.display()))?;
    for (i, block) in bytes.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            img.write_all_at(block, first * SECTOR + i as u64 * 4096)
                .with_context(|| format!("writing the {label} volume into {}", path.display()))?;
        }
    }
    std::fs::remove_file(&side).with_context(|| format!("removing {}", side.display()))
}

/// Builds the Windows sample at `dir/win-sample.img`.
pub fn build_windows_image(dir: &Path) -> Result<PathBuf> {
    let img = dir.join("win-sample.img");
    let f = File::create(&img).with_context(|| format!("creating {}", img.display()))?;
    f.set_len(WIN_SAMPLE_SIZE)
        .with_context(|| format!("sizing {}", img.display()))?;
    let lbas = WIN_SAMPLE_SIZE / SECTOR;
    {
        let mut g = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .with_context(|| format!("opening {}", img.display()))?;
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(lbas - 1).unwrap_or(u32::MAX))
            .overwrite_lba0(&mut g)
            .with_context(|| format!("writing the protective MBR of {}", img.display()))?;
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(LogicalBlockSize::Lb512)
            .change_partition_count(true)
            .create_from_device(g, None)
            .with_context(|| format!("creating a GPT on {}", img.display()))?;
        let last_usable = lbas - 34;
        let parts = [
            ("EFI system partition", 2048, 65_536, partition_types::EFI),
            (
                "Microsoft reserved partition",
                67_584,
                32_768,
                partition_types::MICROSOFT_RESERVED,
            ),
            (
                "Basic data partition",
                WIN_FIRST,
                WIN_SECTORS,
                partition_types::BASIC,
            ),
            (
                "Basic data partition",
                REC_FIRST,
                last_usable - REC_FIRST + 1,
                partition_types::WINDOWS_RECOVERY,
            ),
        ];
        for (i, (name, first, sectors, kind)) in parts.into_iter().enumerate() {
            disk.add_partition_at(name, i as u32 + 1, first, sectors, kind, 0)
                .with_context(|| format!("adding partition {} to {}", i + 1, img.display()))?;
        }
        disk.write()
            .with_context(|| format!("writing the GPT of {}", img.display()))?;
    }
    // The ESP: FAT labelled SYSTEM with an EFI/Boot folder (no boot manager, so no BCD store).
    let mut vol = Cursor::new(vec![0u8; 32 << 20]);
    let fat = || format!("formatting the ESP of {}", img.display());
    fatfs::format_volume(
        &mut vol,
        fatfs::FormatVolumeOptions::new().volume_label(*b"SYSTEM     "),
    )
    .with_context(fat)?;
    {
        let fs = fatfs::FileSystem::new(&mut vol, fatfs::FsOptions::new()).with_context(fat)?;
        fs.root_dir()
            .create_dir("EFI")
            .and_then(|d| d.create_dir("Boot"))
            .with_context(fat)?;
        fs.unmount().with_context(fat)?;
    }
    for (i, block) in vol.get_ref().chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            f.write_all_at(block, 2048 * SECTOR + i as u64 * 4096)
                .with_context(|| format!("writing the ESP into {}", img.display()))?;
        }
    }
    mkntfs(&f, &img, dir, WIN_FIRST, WIN_SECTORS, "Windows")?;
    mkntfs(
        &f,
        &img,
        dir,
        REC_FIRST,
        lbas - 34 - REC_FIRST + 1,
        "Recovery",
    )?;
    f.sync_all()
        .with_context(|| format!("syncing {}", img.display()))?;
    Ok(img)
}
