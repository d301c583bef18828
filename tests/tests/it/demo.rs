//! `tek demo` on a fresh machine (issue 13): the demo must need nothing a new Debian install
//! lacks. Debian always has e2fsprogs, util-linux and mount, but not gdisk, fdisk, dosfstools,
//! mtools or parted, so the demo runs here on a PATH where none of their tools exist.
//!
//! Needs root and loop devices (the real journey: uevent, loop device, client data); prints
//! "SKIP ..." and passes without them; CI runs as root.

use std::path::{Path, PathBuf};
use std::process::Command;

use tek_e2e::*;

/// Every tool of the packages a fresh Debian machine does not have (gdisk, fdisk, dosfstools,
/// mtools, parted), and blkid/partprobe-style helpers the demo must not rely on either.
const HIDDEN: &[&str] = &[
    // gdisk
    "sgdisk",
    "gdisk",
    "cgdisk",
    "fixparts",
    // fdisk
    "sfdisk",
    "fdisk",
    "cfdisk",
    // dosfstools
    "mkfs.fat",
    "mkfs.vfat",
    "mkfs.msdos",
    "mkdosfs",
    "fsck.fat",
    "fsck.vfat",
    "fsck.msdos",
    "dosfsck",
    "fatlabel",
    "dosfslabel",
    // mtools
    "mformat",
    "mcopy",
    "mdir",
    "mmd",
    "mtools",
    // parted
    "parted",
    "partprobe",
];

/// A directory of symlinks to every executable in the standard directories except [`HIDDEN`]:
/// a PATH on which those tools do not exist.
fn path_without_hidden(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    for d in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"] {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if HIDDEN.contains(&n) || bin.join(n).symlink_metadata().is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), bin.join(n)).unwrap();
        }
    }
    bin
}

#[test]
fn demo_needs_no_gdisk_fdisk_or_dosfstools() {
    if !need_root("demo_needs_no_gdisk_fdisk_or_dosfstools") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = path_without_hidden(dir.path());
    // The PATH really hides them, and really has what the demo does use.
    for t in ["sgdisk", "sfdisk", "mkfs.fat"] {
        let e = Command::new(t).env("PATH", &bin).output().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{t}");
    }
    assert!(bin.join("mkfs.ext4").exists() && bin.join("losetup").exists());

    let out = Command::new(tek_bin())
        .arg("demo")
        .env("PATH", &bin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tek demo failed:\n{text}\n{err}");
    // The real journey ran: a loop device seen through its uevent, data migrated and verified,
    // staging wiped, and the job done.
    assert!(!text.contains("not root"), "{text}");
    assert!(text.contains("the agent sees the kernel uevent"), "{text}");
    assert!(text.contains("arrived in bay demo-bay"), "{text}");
    assert!(
        text.contains("== Service report") && text.contains("safe to remove"),
        "{text}"
    );
    assert!(text.contains("\"migration_verified\": true"), "{text}");
    assert!(
        text.contains("sanitization record of the staging wipe"),
        "{text}"
    );
    assert!(text.contains("demo finished in"), "{text}");
    for t in ["sgdisk", "sfdisk", "mkfs.fat", "is it installed"] {
        assert!(
            !text.contains(t) && !err.contains(t),
            "mentions {t}:\n{text}\n{err}"
        );
    }
}

/// `tek demo --windows`: the Windows journey (Recovery moved to the disk's end, C: grown, client
/// data restored into NTFS through ntfs-3g), in well under a minute.
#[test]
fn demo_windows_moves_recovery_and_grows_ntfs() {
    if !need_root("demo_windows_moves_recovery_and_grows_ntfs") {
        return;
    }
    let have = |t: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !["mkntfs", "ntfs-3g", "ntfsresize"].iter().all(|t| have(t)) {
        tek_testkit::skip!("needs ntfs-3g");
        return;
    }
    let started = std::time::Instant::now();
    let out = Command::new(tek_bin())
        .args(["demo", "--windows"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("partition 4 (\"Basic data partition\") moved to the disk's end"),
        "{text}"
    );
    assert!(
        text.contains("partition 3 ntfs: ") && text.contains("grown true"),
        "{text}"
    );
    assert!(!text.contains("PROBLEMS"), "{text}");
    assert!(text.contains("\"migration_verified\": true") && text.contains("safe to remove"));
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
}
