//! A small sample disk image and sample client data, for `tek demo` and the end-to-end tests.
//!
//! The image is a 64 MiB GPT disk made with the real tools (`sgdisk`, `mkfs.fat`, `mkfs.ext4`
//! with `-E offset=`, so no loop device or root is needed to build it):
//!
//! | # | name | start (LBA) | size   | content                       |
//! |---|------|-------------|--------|-------------------------------|
//! | 1 | ESP  | 2048        | 8 MiB  | FAT12                         |
//! | 2 | ROOT | 18432       | 16 MiB | ext4 with a few system files  |
//! | 3 | DATA | 51200       | 32 MiB | empty ext4 (client data goes here) |

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Size of the sample image.
pub const SAMPLE_SIZE: u64 = 64 << 20;
/// The GPT name of the sample image's data partition.
pub const DATA_PARTITION: &str = "DATA";

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

/// Builds the sample image at `dir/sample.img`; `flavour` goes into a file on ROOT so two
/// sample images differ.
pub fn build_image(dir: &Path, flavour: &str) -> Result<PathBuf> {
    let img = dir.join("sample.img");
    let f = std::fs::File::create(&img).with_context(|| format!("creating {}", img.display()))?;
    f.set_len(SAMPLE_SIZE)
        .with_context(|| format!("sizing {}", img.display()))?;
    drop(f);
    run(Command::new("sgdisk")
        .args([
            "-o",
            "-n1:2048:+8M",
            "-t1:ef00",
            "-c1:ESP",
            "-n2:18432:+16M",
            "-t2:8300",
            "-c2:ROOT",
            "-n3:51200:+32M",
            "-t3:8300",
            "-c3:DATA",
        ])
        .arg(&img))?;
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
    run(Command::new("mkfs.fat")
        .args(["-F", "12", "-n", "ESP", "--offset", "2048"])
        .arg(&img)
        .arg("8192"))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "ROOT", "-E"])
        .arg(format!("offset={}", 18432 * 512))
        .arg("-d")
        .arg(&root)
        .arg(&img)
        .arg("16M"))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "DATA", "-E"])
        .arg(format!("offset={}", 51200 * 512))
        .arg(&img)
        .arg("32M"))?;
    Ok(img)
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
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let photo: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::create_dir_all(d.join("Pictures"))
        .with_context(|| format!("creating {}", d.join("Pictures").display()))?;
    w(d.join("Pictures/holiday.jpg"), photo)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_image_has_a_valid_gpt_with_a_data_partition() {
        let d = tempfile::tempdir().unwrap();
        let img = build_image(d.path(), "t").unwrap();
        let out = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("No problems found"), "{text}");
        let out = Command::new("sgdisk").arg("-p").arg(&img).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(DATA_PARTITION));
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
