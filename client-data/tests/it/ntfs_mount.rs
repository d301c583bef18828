//! NTFS data partitions on real loop devices with the real `ntfs-3g` (FUSE): a clean volume is
//! mounted read-write and its writes survive the unmount; a dirty, hibernated or BitLocker
//! volume is refused with its typed reason and left byte-for-byte as it was; a GPT name two
//! partitions share is refused with both listed. Needs root, `mkntfs` and `ntfs-3g`; skips with
//! a printed reason otherwise (CI runs as root with ntfs-3g installed).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use client_data::loopdev::{LoopDevice, can_attach};
use client_data::{DataError, MountRefusal, PartitionMount};

fn tools() -> bool {
    let ok = can_attach()
        && ["mkntfs", "ntfs-3g", "ntfs-3g.probe", "sgdisk"]
            .iter()
            .all(|t| {
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {t}"))
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
    if !ok {
        tek_testkit::skip!("needs root, loop devices, mkntfs, ntfs-3g and sgdisk");
    }
    ok
}

/// A fresh 32 MiB NTFS in a file, labelled `label`.
fn ntfs_file(dir: &Path, name: &str, label: &str) -> PathBuf {
    let p = dir.join(name);
    fs::File::create(&p).unwrap().set_len(32 << 20).unwrap();
    let o = Command::new("mkntfs")
        .args(["-q", "-F", "-Q", "-L", label])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p
}

fn refusal(r: Result<PartitionMount, DataError>) -> MountRefusal {
    match r {
        Err(DataError::MountRefused { reason, .. }) => reason,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(m) => panic!("expected a refusal, got a mount at {}", m.path().display()),
    }
}

#[test]
fn clean_ntfs_is_mounted_read_write_through_ntfs3g() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = ntfs_file(dir.path(), "v.ntfs", "Windows");
    let lo = LoopDevice::attach(&img).unwrap();
    let m = PartitionMount::mount_device(lo.path(), None).unwrap();
    let mnt = m.path().to_path_buf();
    fs::create_dir_all(mnt.join("Users/Public")).unwrap();
    fs::write(mnt.join("Users/Public/a.txt"), b"hello ntfs").unwrap();
    m.unmount().unwrap();
    assert!(!mnt.exists(), "mount point removed");
    // The daemon exited before unmount returned: the data is on the volume, read by a fresh mount.
    let m = PartitionMount::mount_device(lo.path(), None).unwrap();
    assert_eq!(
        fs::read(m.path().join("Users/Public/a.txt")).unwrap(),
        b"hello ntfs"
    );
    drop(m);
    lo.detach().unwrap();
}

#[test]
fn dirty_hibernated_and_bitlocker_volumes_are_refused_untouched() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    // Dirty: the $Volume flag Windows sets, found by tek's own reader and set here.
    let img = ntfs_file(dir.path(), "dirty.ntfs", "Windows");
    let info = {
        let mut f = fs::File::open(&img).unwrap();
        blockdev::ntfs::volume_info(&mut f, 0).unwrap()
    };
    assert!(!info.dirty());
    assert_eq!(info.label.as_deref(), Some("Windows"));
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&(info.flags | 1).to_le_bytes(), info.flags_offset)
        .unwrap();
    drop(f);
    let before = fs::read(&img).unwrap();
    let lo = LoopDevice::attach(&img).unwrap();
    assert_eq!(
        refusal(PartitionMount::mount_device(lo.path(), None)),
        MountRefusal::Dirty
    );
    lo.detach().unwrap();
    assert!(fs::read(&img).unwrap() == before, "dirty volume changed");

    // Hibernated: a hiberfil.sys whose header says "HIBR", as Windows leaves it.
    let img = ntfs_file(dir.path(), "hiber.ntfs", "Windows");
    let lo = LoopDevice::attach(&img).unwrap();
    assert_eq!(PartitionMount::check_ntfs_writable(lo.path()), Ok(()));
    {
        let m = PartitionMount::mount_device(lo.path(), None).unwrap();
        let mut hdr = vec![0u8; 64 << 10];
        hdr[..4].copy_from_slice(b"HIBR");
        fs::write(m.path().join("hiberfil.sys"), &hdr).unwrap();
        m.unmount().unwrap();
    }
    lo.detach().unwrap();
    let before = fs::read(&img).unwrap();
    let lo = LoopDevice::attach(&img).unwrap();
    let r = PartitionMount::mount_device(lo.path(), None);
    let reason = refusal(r);
    assert_eq!(reason, MountRefusal::Hibernated);
    assert!(reason.to_string().contains("hibernated"), "{reason}");
    // tek's own probe finds it, without the mount: ntfs-3g would refuse a read-write mount by
    // itself (exit 14, also read as Hibernated), and the kernel's ntfs3 is not relied on to.
    assert_eq!(
        PartitionMount::check_ntfs_writable(lo.path()),
        Err(MountRefusal::Hibernated)
    );
    lo.detach().unwrap();
    assert!(
        fs::read(&img).unwrap() == before,
        "hibernated volume changed"
    );

    // BitLocker: the -FVE-FS- boot sector, refused whatever type the caller names.
    let img = dir.path().join("bitlocker.img");
    let mut b = vec![0u8; 8 << 20];
    b[3..11].copy_from_slice(b"-FVE-FS-");
    fs::write(&img, &b).unwrap();
    let lo = LoopDevice::attach(&img).unwrap();
    assert_eq!(
        refusal(PartitionMount::mount_device(lo.path(), None)),
        MountRefusal::BitLocker
    );
    assert_eq!(
        refusal(PartitionMount::mount_device(lo.path(), Some("ntfs"))),
        MountRefusal::BitLocker
    );
    lo.detach().unwrap();
}

#[test]
fn ambiguous_gpt_name_is_refused_with_candidates_and_label_selects() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(80 << 20).unwrap();
    let o = Command::new("sgdisk")
        .args([
            "-n1:2048:+32M",
            "-t1:0700",
            "-c1:Basic data partition",
            "-n2:0:+32M",
            "-t2:2700",
            "-c2:Basic data partition",
        ])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(o.status.success());
    for (n, label) in [(1u64, "Windows"), (2, "Recovery")] {
        let part = ntfs_file(dir.path(), &format!("p{n}"), label);
        let bytes = fs::read(&part).unwrap();
        let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&bytes, (1 << 20) + (n - 1) * (32 << 20))
            .unwrap();
    }
    let e = PartitionMount::mount(&disk, "Basic data partition", None).unwrap_err();
    let DataError::NoPartition { source, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(source, blockdev::selector::SelectError::Ambiguous { .. }),
        "{e}"
    );
    let t = e.to_string();
    assert!(t.contains("number:1") && t.contains("number:2"), "{t}");
    assert!(t.contains("type:recovery"), "{t}");
    for sel in ["label:Windows", "number:1", "type:basic-data"] {
        let m = PartitionMount::mount(&disk, sel, None).unwrap();
        fs::write(m.path().join(format!("{}.txt", sel.replace(':', "_"))), sel).unwrap();
        m.unmount().unwrap();
    }
    let m = PartitionMount::mount(&disk, "label:Recovery", None).unwrap();
    assert!(
        fs::read_dir(m.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".txt"))
    );
    m.unmount().unwrap();
}

/// Two restores racing for one NTFS volume: two `ntfs-3g` mounts of one device would corrupt it
/// (two drivers caching the same metadata). ntfs-3g opens the device exclusively, so of two
/// threads mounting at once exactly one gets the volume and the other an error, and after both
/// are done the volume is consistent (`ntfsfix -n`) and holds the winner's file.
#[test]
fn racing_mounts_of_one_volume_get_it_once() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = ntfs_file(dir.path(), "race.ntfs", "Windows");
    let lo = LoopDevice::attach(&img).unwrap();
    let dev = lo.path().to_path_buf();
    for round in 0..3 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (b, dev) = (barrier.clone(), dev.clone());
                std::thread::spawn(move || {
                    b.wait();
                    match PartitionMount::mount_device(&dev, None) {
                        Ok(m) => {
                            fs::write(m.path().join(format!("r{round}-t{i}.txt")), b"x").unwrap();
                            // Hold it while the other thread tries.
                            std::thread::sleep(std::time::Duration::from_millis(300));
                            m.unmount().unwrap();
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
            .collect();
        let won: Vec<bool> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
    }
    let o = Command::new("ntfsfix")
        .arg("-n")
        .arg(&dev)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let m = PartitionMount::mount_device(&dev, None).unwrap();
    let names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    m.unmount().unwrap();
    lo.detach().unwrap();
}
