//! `tek write` end to end: the real binary against a temporary state root, a small GPT image
//! built with sgdisk, and plain files as targets (no root needed). Results are checked with
//! `cmp` and `sgdisk -v`, independently of tek.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{MIB, Tek, gpt_image, have_sgdisk};

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
        tek_testkit::skip!("no sgdisk");
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
    // The ext4's 1.5 MiB payload and metadata, and the GPT, were read back.
    assert!(r["bytes_verified"].as_u64().unwrap() >= 2 * MIB, "{r}");
    assert_eq!(r["image"]["size_bytes"], 16 * MIB);
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
        tek_testkit::skip!("needs sgdisk and root");
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
    assert!(
        err.contains("1 of 1 target(s) not written: 1 refused, untouched"),
        "{err}"
    );
    assert!(
        std::fs::read(&target).unwrap().iter().all(|&b| b == 0xEE),
        "nothing written"
    );
}

#[test]
fn store_image_by_name_and_version() {
    if !have_sgdisk() {
        tek_testkit::skip!("no sgdisk");
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

/// A store reference always wins over a same-named file in the current directory; the file is
/// reached as `./NAME@VERSION`, and a reference the store lacks is an error naming that form.
#[test]
fn store_reference_wins_over_a_same_named_file() {
    if !have_sgdisk() {
        tek_testkit::skip!("no sgdisk");
        return;
    }
    let tek = Tek::new();
    let img = gpt_image(tek.dir());
    tek.ok(&["image", "import", "img@1", img.to_str().unwrap()]);
    let cwd = tek.dir().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    // A decoy in the current directory: a raw "image" of the same size and other bytes.
    std::fs::write(cwd.join("img@1"), vec![0x55u8; 16 * MIB as usize]).unwrap();
    std::fs::write(cwd.join("other@1"), vec![0x55u8; 16 * MIB as usize]).unwrap();
    let target = old_disk(tek.dir(), "target", 16 * MIB);
    let t = target.to_str().unwrap();
    let o = tek.run_in(&cwd, &["write", "img@1", t, "--yes", "--allow-unsigned"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp = Command::new("cmp").arg(&img).arg(&target).output().unwrap();
    assert!(
        cmp.status.success(),
        "the store image was written, not the file"
    );

    // The file, named as a path (a byte pattern in no filesystem: its audit is not clean).
    let o = tek.run_in(&cwd, &["write", "./img@1", t, "--yes", "--allow-unaudited"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp = Command::new("cmp")
        .arg(cwd.join("img@1"))
        .arg(&target)
        .output()
        .unwrap();
    assert!(cmp.status.success(), "./img@1 is the file");

    // Not in the store: refused (never the file), and the message says how to mean the file.
    std::fs::write(&target, vec![0xEEu8; 16 * MIB as usize]).unwrap();
    let o = tek.run_in(&cwd, &["write", "other@1", t, "--yes"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("./other@1"), "{err}");
    assert!(
        std::fs::read(&target).unwrap().iter().all(|&b| b == 0xEE),
        "nothing written"
    );
}

/// A technician without root is told that writing a disk needs root, not `busy: Permission
/// denied`; the disk is untouched. Runs tek as uid/gid 65534 through `setpriv` (util-linux).
#[test]
fn a_user_without_root_is_told_writing_a_disk_needs_root() {
    use std::os::unix::fs::PermissionsExt;
    if !client_data::loopdev::can_attach() {
        tek_testkit::skip!("needs root (a loop device, and setpriv to become nobody)");
        return;
    }
    let tek = Tek::new();
    // nobody must reach the image and the state root.
    std::fs::set_permissions(tek.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(tek.dir().join("state")).unwrap();
    std::fs::set_permissions(
        tek.dir().join("state"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let img = tek.dir().join("disk.img");
    std::fs::write(&img, vec![0x5au8; MIB as usize]).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let target = old_disk(tek.dir(), "target", 4 * MIB);
    let dev = client_data::loopdev::LoopDevice::attach(&target).unwrap();
    let o = tek_testkit::run(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(tek.dir().join("state"))
            .args([
                "write",
                img.to_str().unwrap(),
                dev.path().to_str().unwrap(),
                "--yes",
                "--allow-unaudited",
            ])
            .env("HOME", tek.dir()),
    );
    drop(dev);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("writing a disk needs root"), "{err}");
    assert!(!err.contains("busy"), "{err}");
    assert!(
        std::fs::read(&target).unwrap().iter().all(|&b| b == 0xEE),
        "nothing written"
    );
}
