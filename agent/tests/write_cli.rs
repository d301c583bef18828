//! `tek write` end to end: the real binary against a temporary state root, a small GPT image
//! built with sgdisk, and plain files as targets (no root needed). Results are checked with
//! `cmp` and `sgdisk -v`, independently of tek.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{MIB, Tek, gpt_image, have_sgdisk};

/// A target file of `size` bytes full of an old owner's data (0xEE).
fn old_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0xEEu8; size as usize]).unwrap();
    p
}

fn same_range(a: &Path, b: &Path, from: u64, to: u64) -> bool {
    let a = std::fs::read(a).unwrap();
    let b = std::fs::read(b).unwrap();
    a[from as usize..to as usize] == b[from as usize..to as usize]
}

fn sgdisk_ok(p: &Path) -> bool {
    let o = Command::new("sgdisk").arg("-v").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout).contains("No problems found")
}

fn first_report(json: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(json).expect("--json prints JSON");
    v.as_array().expect("an array of reports")[0].clone()
}

#[test]
fn raw_image_onto_a_file_with_json_report() {
    if !have_sgdisk() {
        eprintln!("skipping raw_image_onto_a_file_with_json_report: no sgdisk");
        return;
    }
    let tek = Tek::new();
    let img = gpt_image(tek.dir());
    let target = old_disk(tek.dir(), "target", 24 * MIB);
    let out = tek.ok(&[
        "write",
        img.to_str().unwrap(),
        target.to_str().unwrap(),
        "--yes",
        "--json",
    ]);
    let r = first_report(&out);
    assert_eq!(r["result"]["status"], "ok", "{r}");
    assert_eq!(r["format"], 1);
    assert!(r["bytes_verified"].as_u64().unwrap() >= 3 * MIB, "{r}");
    assert_eq!(r["image"]["size"], 16 * MIB);
    // The partitions' bytes are the image's; the GPT was moved to the file's real end.
    assert!(same_range(&img, &target, MIB, 15 * MIB));
    assert!(sgdisk_ok(&target));
    let all = std::fs::read(&target).unwrap();
    assert!(
        all[(3 * MIB) as usize..(15 * MIB) as usize]
            .iter()
            .all(|&b| b == 0),
        "the image's holes hold no old data"
    );
}

/// A file target grows to the image's size like a sparse disk image would, so "too small"
/// needs a real block device: a loop device over a 4 MiB file (root).
#[test]
fn too_small_target_is_refused_and_untouched() {
    if !have_sgdisk() || !client_data::loopdev::can_attach() {
        eprintln!("skipping too_small_target_is_refused_and_untouched: needs sgdisk and root");
        return;
    }
    let tek = Tek::new();
    let img = gpt_image(tek.dir());
    let target = old_disk(tek.dir(), "small", 4 * MIB);
    let dev = client_data::loopdev::LoopDevice::attach(&target).unwrap();
    let o = tek.run(&[
        "write",
        img.to_str().unwrap(),
        dev.path().to_str().unwrap(),
        "--yes",
    ]);
    drop(dev);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refused: too small"), "{err}");
    assert!(err.contains("1 of 1 target(s) not written"), "{err}");
    assert!(
        std::fs::read(&target).unwrap().iter().all(|&b| b == 0xEE),
        "nothing written"
    );
}

#[test]
fn store_image_by_name_and_version() {
    if !have_sgdisk() {
        eprintln!("skipping store_image_by_name_and_version: no sgdisk");
        return;
    }
    let tek = Tek::new();
    let img = gpt_image(tek.dir());
    tek.ok(&["image", "import", "demo@1", img.to_str().unwrap()]);
    let target = old_disk(tek.dir(), "target", 16 * MIB);
    // Unsigned images need the explicit override.
    let o = tek.run(&["write", "demo@1", target.to_str().unwrap(), "--yes"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--allow-unsigned"));
    let out = tek.ok(&[
        "write",
        "demo@1",
        target.to_str().unwrap(),
        "--yes",
        "--json",
        "--allow-unsigned",
    ]);
    let r = first_report(&out);
    assert_eq!(r["result"]["status"], "ok", "{r}");
    assert_eq!(r["image"]["name"], "demo");
    assert_eq!(r["image"]["version"], "1");
    assert!(r["image"]["manifest_hash"].as_str().unwrap().len() == 64);
    // Same size as the image: every byte must be the image's.
    assert!(same_range(&img, &target, 0, 16 * MIB));
    assert!(sgdisk_ok(&target));
}
