//! A small sample disk image and sample client data, for `tek demo` and the end-to-end tests.
//!
//! The image is a 64 MiB GPT disk. It is built with nothing a fresh Debian machine lacks: the
//! partition table by the `gpt` crate, the ESP's FAT12 by the `fatfs` crate, and the two ext4
//! filesystems by `mkfs.ext4` from e2fsprogs (Priority: required) with `-E offset=` and `-d`,
//! so neither a loop device, root, gdisk, fdisk nor dosfstools is needed to build it:
//!
//! | # | name | start (LBA) | size   | content                       |
//! |---|------|-------------|--------|-------------------------------|
//! | 1 | ESP  | 2048        | 8 MiB  | FAT12, `EFI/BOOT/README.TXT`  |
//! | 2 | ROOT | 18432       | 16 MiB | ext4 with a few system files  |
//! | 3 | DATA | 51200       | 32 MiB | empty ext4 (client data goes here) |

use std::fs::{File, OpenOptions};
use std::io::{Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use gpt::disk::LogicalBlockSize;
use gpt::partition_types::{self, Type};

/// Size of the sample image.
pub const SAMPLE_SIZE: u64 = 64 << 20;
/// The GPT name of the sample image's data partition.
pub const DATA_PARTITION: &str = "DATA";

/// The sample image's logical sector size.
const SECTOR: u64 = 512;

/// One partition of the sample image.
struct Part {
    name: &'static str,
    first_lba: u64,
    bytes: u64,
    kind: Type,
}

impl Part {
    fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
}

const ESP: Part = Part {
    name: "ESP",
    first_lba: 2048,
    bytes: 8 << 20,
    kind: partition_types::EFI,
};
const ROOT: Part = Part {
    name: "ROOT",
    first_lba: 18432,
    bytes: 16 << 20,
    kind: partition_types::LINUX_FS,
};
const DATA: Part = Part {
    name: DATA_PARTITION,
    first_lba: 51200,
    bytes: 32 << 20,
    kind: partition_types::LINUX_FS,
};

fn run(cmd: &mut Command) -> Result<()> {
    // The command line as a technician would type it, not Rust's debug quoting.
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the protective MBR and both GPT headers and arrays (128 entries, as sgdisk does).
fn write_gpt(img: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .with_context(|| format!("opening {}", img.display()))?;
    let lbas = SAMPLE_SIZE / SECTOR;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(lbas - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut f)
        .with_context(|| format!("writing the protective MBR of {}", img.display()))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .change_partition_count(true)
        .create_from_device(f, None)
        .with_context(|| format!("creating a GPT on {}", img.display()))?;
    for (i, p) in [&ESP, &ROOT, &DATA].into_iter().enumerate() {
        let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        disk.add_partition_at(p.name, id, p.first_lba, p.bytes / SECTOR, p.kind.clone(), 0)
            .with_context(|| format!("adding partition {} to {}", p.name, img.display()))?;
    }
    let f = disk
        .write()
        .with_context(|| format!("writing the GPT of {}", img.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", img.display()))
}

/// Formats the ESP as FAT12 labelled `ESP` in memory with one file in `EFI/BOOT`, and writes
/// the blocks that are not all zero into the image (so the image stays sparse).
fn write_esp(img: &File, path: &Path, flavour: &str) -> Result<()> {
    let mut vol = Cursor::new(vec![0u8; usize::try_from(ESP.bytes).unwrap_or(usize::MAX)]);
    let fat = || format!("formatting the ESP of {}", path.display());
    fatfs::format_volume(
        &mut vol,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat12)
            .bytes_per_cluster(4096)
            .volume_label(*b"ESP        "),
    )
    .with_context(fat)?;
    {
        let fs = fatfs::FileSystem::new(&mut vol, fatfs::FsOptions::new()).with_context(fat)?;
        let boot = fs
            .root_dir()
            .create_dir("EFI")
            .and_then(|d| d.create_dir("BOOT"))
            .with_context(fat)?;
        let mut readme = boot.create_file("README.TXT").with_context(fat)?;
        readme
            .write_all(format!("tek sample image ({flavour}): no boot loader\r\n").as_bytes())
            .with_context(fat)?;
        drop(readme);
        drop(boot);
        fs.unmount().with_context(fat)?;
    }
    for (i, block) in vol.get_ref().chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            img.write_all_at(block, ESP.offset() + i as u64 * 4096)
                .with_context(|| format!("writing the ESP into {}", path.display()))?;
        }
    }
    Ok(())
}

/// Builds the sample image at `dir/sample.img`; `flavour` goes into a file on ROOT so two
/// sample images differ.
pub fn build_image(dir: &Path, flavour: &str) -> Result<PathBuf> {
    let img = dir.join("sample.img");
    let f = File::create(&img).with_context(|| format!("creating {}", img.display()))?;
    f.set_len(SAMPLE_SIZE)
        .with_context(|| format!("sizing {}", img.display()))?;
    write_gpt(&img)?;
    write_esp(&f, &img, flavour)?;
    f.sync_all()
        .with_context(|| format!("syncing {}", img.display()))?;
    drop(f);
    let root = dir.join("sample-root");
    std::fs::create_dir_all(root.join("etc"))
        .with_context(|| format!("creating {}", root.display()))?;
    std::fs::write(
        root.join("etc/os-release"),
        format!("NAME=tek-sample\nVARIANT={flavour}\n"),
    )
    .with_context(|| format!("writing into {}", root.display()))?;
    std::fs::write(root.join("etc/hostname"), "replacement\n")
        .with_context(|| format!("writing into {}", root.display()))?;
    // mkfs.ext4 takes the filesystem size in KiB when no unit is given; give it in bytes/1024.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", ROOT.name, "-E"])
        .arg(format!("offset={}", ROOT.offset()))
        .arg("-d")
        .arg(&root)
        .arg(&img)
        .arg(format!("{}k", ROOT.bytes / 1024)))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", DATA.name, "-E"])
        .arg(format!("offset={}", DATA.offset()))
        .arg(&img)
        .arg(format!("{}k", DATA.bytes / 1024)))?;
    Ok(img)
}

/// `len` incompressible bytes, the same for the same `seed` (xorshift64; `seed` not 0).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a few sample client files (documents, a photo-sized blob, a nested folder) under
/// `dir/client-data` and returns that directory.
pub fn build_client_data(dir: &Path) -> Result<PathBuf> {
    let d = dir.join("client-data");
    let docs = d.join("Documents/Taxes 2025");
    std::fs::create_dir_all(&docs).with_context(|| format!("creating {}", docs.display()))?;
    let w = |p: PathBuf, data: Vec<u8>| {
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
    };
    w(
        d.join("Documents/letter.txt"),
        b"Dear client,\nyour device is repaired.\n".to_vec(),
    )?;
    w(
        docs.join("return.csv"),
        b"year,amount\n2025,1234.56\n".repeat(100),
    )?;
    // A pseudo-random "photo": incompressible, 3 MiB.
    let photo = pseudo_random(3 << 20, 0x9e37_79b9_7f4a_7c15);
    std::fs::create_dir_all(d.join("Pictures"))
        .with_context(|| format!("creating {}", d.join("Pictures").display()))?;
    w(d.join("Pictures/holiday.jpg"), photo)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap_or_else(|e| panic!("running {cmd} (tests/run installs it): {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Checked with the real tools, independent of the crates that built it: sgdisk for the
    /// table, mtools for the FAT, `dumpe2fs` and `e2fsck -fn` on a copy of each ext4.
    #[test]
    fn sample_image_has_a_valid_gpt_with_a_data_partition() {
        let d = tempfile::tempdir().unwrap();
        let img = build_image(d.path(), "t").unwrap();
        let p = img.to_str().unwrap();
        let text = tool("sgdisk", &["-v", p]);
        assert!(text.contains("No problems found"), "{text}");
        for (n, part, code) in [
            (1, &ESP, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            (2, &ROOT, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            (3, &DATA, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        ] {
            let info = tool("sgdisk", &[&format!("-i{n}"), p]);
            let last = part.first_lba + part.bytes / SECTOR - 1;
            for want in [
                format!("Partition GUID code: {code}"),
                format!("First sector: {} ", part.first_lba),
                format!("Last sector: {last} "),
                format!("Partition name: '{}'", part.name),
            ] {
                assert!(info.contains(&want), "partition {n}: want {want}:\n{info}");
            }
        }
        let esp = format!("{p}@@{}", ESP.offset());
        let dir = tool("mdir", &["-i", &esp, "::/EFI/BOOT"]);
        assert!(dir.contains("Volume in drive : is ESP"), "{dir}");
        assert!(dir.contains("README") && dir.contains("TXT"), "{dir}");
        let readme = tool("mtype", &["-i", &esp, "::/EFI/BOOT/README.TXT"]);
        assert!(readme.contains("tek sample image (t)"), "{readme}");
        let data = std::fs::read(&img).unwrap();
        for (part, label) in [(&ROOT, "ROOT"), (&DATA, "DATA")] {
            let fs = d.path().join(label);
            let at = usize::try_from(part.offset()).unwrap();
            let len = usize::try_from(part.bytes).unwrap();
            std::fs::write(&fs, &data[at..at + len]).unwrap();
            let info = tool("dumpe2fs", &["-h", fs.to_str().unwrap()]);
            assert!(
                info.contains(&format!("Filesystem volume name:   {label}")),
                "{info}"
            );
            assert!(info.contains("Filesystem state:         clean"), "{info}");
            tool("e2fsck", &["-fn", fs.to_str().unwrap()]);
        }
        assert_eq!(std::fs::metadata(&img).unwrap().len(), SAMPLE_SIZE);
    }

    #[test]
    fn client_data_is_generated() {
        let d = tempfile::tempdir().unwrap();
        let c = build_client_data(d.path()).unwrap();
        assert_eq!(
            std::fs::metadata(c.join("Pictures/holiday.jpg"))
                .unwrap()
                .len(),
            3 << 20
        );
    }
}
