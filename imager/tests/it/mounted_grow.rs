//! xfs and btrfs data partitions grow mounted: an image whose last partition holds xfs (or
//! btrfs) with a few files, written onto a disk four times its size with that partition to grow;
//! the write report names the filesystem, its old and new size and the checker's clean verdict
//! (`xfs_repair -n`, `btrfs check --readonly`), and independently the same checker is clean on
//! the disk's partition, which fills the disk, and a fresh mount shows the files. Needs root,
//! loop devices, sgdisk and xfsprogs / btrfs-progs; skips with a printed reason otherwise.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use client_data::loopdev::{LoopDevice, LoopOptions, can_attach};
use image_store::{Hints, ImageRef, ImportOptions, Store};
use imager::{ImageSource, TargetResult, WriteOptions, write_image};

const MIB: u64 = 1 << 20;
/// The partition starts at 1 MiB (LBA 2048).
const PART_START: u64 = MIB;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

fn ready(name: &str, tools: &[&str]) -> bool {
    let ok = can_attach()
        && tools
            .iter()
            .all(|t| run("sh", &["-c", &format!("command -v {t}")]).0);
    if !ok {
        tek_testkit::skip!("{name}: needs root, loop devices and {tools:?}");
    }
    ok
}

/// A GPT image of one `part_mib` partition named DATA at 1 MiB, made with `mkfs` (its
/// arguments before the device), holding three files.
fn image_with(dir: &Path, mkfs: &[&str], fstype: &str, part_mib: u64) -> std::path::PathBuf {
    let img = dir.join(format!("{fstype}.img"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(PART_START + part_mib * MIB + MIB).unwrap();
    drop(f);
    let (ok, out) = run(
        "sgdisk",
        &[
            "-o",
            "-n",
            &format!("1:2048:+{part_mib}M"),
            "-c",
            "1:DATA",
            "-t",
            "1:8300",
            img.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let part = LoopDevice::attach_with(
        &img,
        &LoopOptions {
            offset: PART_START,
            size_limit: part_mib * MIB,
            ..Default::default()
        },
    )
    .unwrap();
    let dev = part.path().to_str().unwrap().to_string();
    let mut args = mkfs[1..].to_vec();
    args.push(&dev);
    let (ok, out) = run(mkfs[0], &args);
    assert!(ok, "{mkfs:?}: {out}");
    let mnt = tempfile::tempdir().unwrap();
    let (ok, out) = run("mount", &["-t", fstype, &dev, mnt.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    for i in 0..3 {
        std::fs::write(mnt.path().join(format!("file{i}")), vec![b'a' + i; 1 << 20]).unwrap();
    }
    assert!(run("umount", &[mnt.path().to_str().unwrap()]).0);
    drop(part);
    img
}

/// Writes `img` onto a disk four times its size growing DATA; checks the report and the disk.
fn grows_mounted_and_checks_clean(fstype: &str, mkfs: &[&str], check: &[&str], part_mib: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = image_with(dir.path(), mkfs, fstype, part_mib);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let r: ImageRef = "s@1".parse().unwrap();
    let opts = ImportOptions {
        hints: Hints {
            grow_partition: Some("name:DATA".into()),
            data_partition: Some("name:DATA".into()),
            ..Hints::default()
        },
        ..ImportOptions::default()
    };
    store.import(&r, &img, &opts, None).unwrap();
    let image = store.load(&r, &dir.path().join("keys")).unwrap();
    let src = ImageSource::Stored {
        store: Arc::new(store),
        image,
    };
    let disk_size = 4 * std::fs::metadata(&img).unwrap().len();
    let disk_file = dir.path().join("disk");
    std::fs::File::create(&disk_file)
        .unwrap()
        .set_len(disk_size)
        .unwrap();
    let lo = LoopDevice::attach(&disk_file).unwrap();
    let reps = write_image(
        &src,
        &[lo.path().to_path_buf()],
        &WriteOptions::default(),
        None,
    );
    let rep = &reps[0];
    assert!(
        matches!(rep.result, TargetResult::Ok),
        "{}",
        serde_json::to_string_pretty(rep).unwrap()
    );
    let fsg = rep.filesystem.as_ref().expect("filesystem grown");
    assert_eq!(fsg.filesystem.as_deref(), Some(fstype), "{fsg:?}");
    // Grown to the partition's end: before the backup GPT's 33 sectors.
    let part_len = disk_size - PART_START - 33 * 512;
    let (old, new) = (fsg.old_bytes.unwrap(), fsg.new_bytes.unwrap());
    assert!(fsg.grown && old <= part_mib * MIB, "{fsg:?}");
    assert!(
        new > part_len - 8 * MIB && new <= part_len,
        "{new} of {part_len}"
    );
    let c = &fsg.checks[0];
    assert!(
        c.command.starts_with(&check.join(" ")) && c.clean,
        "{fsg:?}"
    );
    let (_, v) = run("sgdisk", &["-v", lo.path().to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    // Independently: the checker on the disk's partition, and the files through a fresh mount.
    let part = LoopDevice::attach_with(
        lo.path(),
        &LoopOptions {
            offset: PART_START,
            size_limit: part_len,
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let dev = part.path().to_str().unwrap().to_string();
    let mut args = check[1..].to_vec();
    args.push(&dev);
    let (ok, out) = run(check[0], &args);
    assert!(ok, "{check:?}: {out}");
    let mnt = tempfile::tempdir().unwrap();
    let (ok, out) = run(
        "mount",
        &["-o", "ro", "-t", fstype, &dev, mnt.path().to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let st = nix::sys::statvfs::statvfs(mnt.path()).unwrap();
    let seen = st.blocks() as u64 * st.fragment_size() as u64;
    let files: Vec<Vec<u8>> = (0..3)
        .map(|i| std::fs::read(mnt.path().join(format!("file{i}"))).unwrap_or_default())
        .collect();
    assert!(run("umount", &[mnt.path().to_str().unwrap()]).0);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(f, &vec![b'a' + i as u8; 1 << 20], "file{i}");
    }
    assert!(
        seen > 2 * part_mib * MIB,
        "the mounted {fstype} has {seen} bytes"
    );
}

#[test]
fn xfs_grows_mounted_and_xfs_repair_is_clean() {
    let tools = ["sgdisk", "mkfs.xfs", "xfs_growfs", "xfs_repair"];
    if !ready("xfs_grows_mounted_and_xfs_repair_is_clean", &tools) {
        return;
    }
    // 300 MiB: mkfs.xfs's smallest filesystem.
    grows_mounted_and_checks_clean(
        "xfs",
        &["mkfs.xfs", "-q", "-L", "DATA"],
        &["xfs_repair", "-n"],
        300,
    );
}

#[test]
fn btrfs_grows_mounted_and_btrfs_check_is_clean() {
    let tools = ["sgdisk", "mkfs.btrfs", "btrfs"];
    if !ready("btrfs_grows_mounted_and_btrfs_check_is_clean", &tools) {
        return;
    }
    grows_mounted_and_checks_clean(
        "btrfs",
        &["mkfs.btrfs", "-q", "-L", "DATA"],
        &["btrfs", "check", "--readonly"],
        160,
    );
}
