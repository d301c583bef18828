//! Which targets may be written: [`check_target`] looks, without writing or claiming anything,
//! and answers with the disk's identity or a typed [`Refusal`] for the technician.
//!
//! What the checks look at comes from the `blockdev` crate through a [`Host`]: sysfs (a partition
//! node leads to its whole disk; mounts, swap and holders are checked on the disk and every
//! partition on it), the mount table, the swap list and the disks behind `/`.
//! [`check_target_on`] takes the `Host` as an argument, so every refusal is tested on a fake
//! sysfs tree and literal mountinfo text as well as on loop devices.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use blockdev::holders::Host;
use serde::Serialize;

use crate::ioctl;

/// Why a target may not be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// Not a block device or regular file (or does not exist).
    #[error("not a block device or regular file ({detail})")]
    NotBlockOrFile {
        /// What it is instead.
        detail: String,
    },
    /// The disk or one of its partitions is mounted.
    #[error("{device} is mounted at {mountpoint}")]
    Mounted {
        /// The mounted device (disk or partition).
        device: String,
        /// Where.
        mountpoint: String,
    },
    /// The disk or one of its partitions is used as swap.
    #[error("{device} is in use as swap")]
    Swap {
        /// The swap device.
        device: String,
    },
    /// Held by device-mapper, md or LVM (sysfs `holders/`), or a file backing a loop device.
    #[error("{device} is held by {holder}")]
    HeldBy {
        /// The held device.
        device: String,
        /// The holder (e.g. `dm-0`, `md127`, `loop3`).
        holder: String,
    },
    /// The disk that backs the root filesystem.
    #[error("{disk} backs the root filesystem")]
    SystemDisk {
        /// The disk.
        disk: String,
    },
    /// Read-only device or file.
    #[error("read-only")]
    ReadOnly,
    /// Smaller than the image.
    #[error(
        "too small: the image needs {} ({need} bytes), the target has {} ({have} bytes)",
        blockdev::sysfs::human_size(*need),
        blockdev::sysfs::human_size(*have)
    )]
    TooSmall {
        /// Image size.
        need: u64,
        /// Target size.
        have: u64,
    },
    /// The image's GPT was made for another logical sector size.
    #[error("sector size mismatch: the image's GPT uses {image}-byte sectors, the disk {disk}")]
    SectorSize {
        /// The image's logical sector size.
        image: u64,
        /// The disk's.
        disk: u64,
    },
    /// A partition node: only a whole disk is a target (writing a partition would leave the
    /// rest of its disk, possibly the system's, as it is and call the result a disk).
    #[error("{device} is a partition of {disk}; give the whole disk")]
    Partition {
        /// The partition node given.
        device: String,
        /// Its disk.
        disk: String,
    },
    /// The device node now reaches another disk than the one checked or detected (its kernel
    /// `diskseq` differs: re-plugged, swapped, or a loop device re-attached).
    #[error("the disk at {path} changed {when} (diskseq {expected}, now {actual})")]
    DiskChanged {
        /// The device node.
        path: String,
        /// When: "since it was detected", "between claim and O_DIRECT open", ...
        when: String,
        /// The diskseq expected.
        expected: u64,
        /// The diskseq found.
        actual: u64,
    },
    /// This user may not open the target: the device node is root's (and the disk group's).
    #[error(
        "permission denied opening {path}: writing a disk needs root (run the command with \
         sudo), or read and write access to the device node"
    )]
    NoPermission {
        /// The device node.
        path: String,
    },
    /// Someone else has it open exclusively or holds its lock.
    #[error("busy: {detail}")]
    Busy {
        /// What the kernel said.
        detail: String,
    },
}

/// A target's identity, shown before writing and recorded in the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TargetInfo {
    /// The path as given.
    pub path: PathBuf,
    /// Model (sysfs `device/model`; for loop devices, the backing file).
    pub model: Option<String>,
    /// Serial number (sysfs `device/serial` or `serial`).
    pub serial: Option<String>,
    /// Size in bytes (`size_bytes` in JSON, as every size tek prints).
    #[serde(rename = "size_bytes")]
    pub size: u64,
    /// Logical sector size.
    pub logical_sector: u64,
    /// Physical sector size.
    pub physical_sector: u64,
    /// True for a block device.
    pub is_block: bool,
    /// The disk's kernel `diskseq` when checked (block devices on Linux 5.15+), so the claim
    /// can prove it holds the disk that was checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diskseq: Option<u64>,
}

/// Kernel names of the disks that back `/` on this machine (see [`Host::system_disks`]).
pub fn system_disks() -> BTreeSet<String> {
    Host::current().system_disks()
}

/// The eligibility check the agent reuses (no writes, no exclusive open). `image_sector` is the
/// logical sector size of the image's GPT, if it has one.
pub fn check_target(
    path: &Path,
    image_size: u64,
    image_sector: Option<u64>,
) -> Result<TargetInfo, Refusal> {
    check_target_on(&Host::current(), path, image_size, image_sector)
}

/// [`check_target`] against `host`'s sysfs, mounts and swaps (a fake one in tests).
pub fn check_target_on(
    host: &Host,
    path: &Path,
    image_size: u64,
    image_sector: Option<u64>,
) -> Result<TargetInfo, Refusal> {
    let md = fs::metadata(path).map_err(|e| Refusal::NotBlockOrFile {
        detail: e.to_string(),
    })?;
    let ft = md.file_type();
    if ft.is_file() {
        return check_file(host, path, &md, image_size);
    }
    if !ft.is_block_device() {
        return Err(Refusal::NotBlockOrFile {
            detail: if ft.is_dir() {
                "a directory"
            } else {
                "a special file"
            }
            .into(),
        });
    }
    let (disk, part) =
        host.sys
            .disk_of_devno(md.rdev())
            .ok_or_else(|| Refusal::NotBlockOrFile {
                detail: "block device without a sysfs entry".into(),
            })?;
    if host.system_disks().contains(&disk.name) {
        return Err(Refusal::SystemDisk {
            disk: format!("/dev/{}", disk.name),
        });
    }
    if let Some(part) = part {
        return Err(Refusal::Partition {
            device: format!("/dev/{part}"),
            disk: format!("/dev/{}", disk.name),
        });
    }
    let members = disk.members();
    if let Some((name, mountpoint)) = host.mounted_member(&members) {
        return Err(Refusal::Mounted {
            device: format!("/dev/{name}"),
            mountpoint,
        });
    }
    if let Some(device) = host.swap_member(&members) {
        return Err(Refusal::Swap { device });
    }
    for (name, _) in &members {
        if let Some(h) = disk.holders(name).into_iter().next() {
            return Err(Refusal::HeldBy {
                device: format!("/dev/{name}"),
                holder: h,
            });
        }
    }
    // sysfs `ro` before opening: a write-protected disk is refused for that, not for whatever
    // opening it says.
    if disk.read_only() {
        return Err(Refusal::ReadOnly);
    }
    let f = fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Refusal::NoPermission {
            path: path.display().to_string(),
        },
        _ => Refusal::Busy {
            detail: e.to_string(),
        },
    })?;
    if ioctl::read_only(f.as_fd()).unwrap_or(false) {
        return Err(Refusal::ReadOnly);
    }
    let size = ioctl::get_size64(f.as_fd()).map_err(|e| Refusal::NotBlockOrFile {
        detail: format!("getting size: {e}"),
    })?;
    let logical = ioctl::logical_sector_size(f.as_fd()).unwrap_or(512);
    let physical = ioctl::physical_sector_size(f.as_fd()).unwrap_or(logical);
    if size < image_size {
        return Err(Refusal::TooSmall {
            need: image_size,
            have: size,
        });
    }
    if let Some(s) = image_sector.filter(|&s| s != logical) {
        return Err(Refusal::SectorSize {
            image: s,
            disk: logical,
        });
    }
    let model = disk.model();
    let serial = disk.serial();
    Ok(TargetInfo {
        path: path.to_path_buf(),
        model,
        serial,
        size,
        logical_sector: logical,
        physical_sector: physical,
        is_block: true,
        diskseq: ioctl::diskseq(f.as_fd()).ok(),
    })
}

fn check_file(
    host: &Host,
    path: &Path,
    md: &fs::Metadata,
    image_size: u64,
) -> Result<TargetInfo, Refusal> {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(l) = host.sys.loops_backed_by(&canon).first() {
        return Err(Refusal::HeldBy {
            device: canon.display().to_string(),
            holder: l.clone(),
        });
    }
    if host.swaps.iter().any(|s| Path::new(s) == canon) {
        return Err(Refusal::Swap {
            device: canon.display().to_string(),
        });
    }
    if nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(Refusal::ReadOnly);
    }
    Ok(TargetInfo {
        path: path.to_path_buf(),
        model: Some("regular file".into()),
        serial: None,
        // A file target grows to the image's size.
        size: md.len().max(image_size),
        logical_sector: 512,
        physical_sector: 512,
        is_block: false,
        diskseq: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_missing_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_target(dir.path(), 1, None),
            Err(Refusal::NotBlockOrFile { .. })
        ));
        assert!(matches!(
            check_target(&dir.path().join("nope"), 1, None),
            Err(Refusal::NotBlockOrFile { .. })
        ));
        assert!(matches!(
            check_target(Path::new("/dev/null"), 1, None),
            Err(Refusal::NotBlockOrFile { .. })
        ));
    }

    #[test]
    fn a_regular_file_is_eligible_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let info = check_target(&p, 1000, Some(512)).unwrap();
        assert_eq!(info.size, 1000);
        assert!(!info.is_block);
    }

    #[test]
    fn refusals_read_well() {
        let r = Refusal::TooSmall {
            need: 64 << 20,
            have: 8 << 20,
        };
        assert_eq!(
            r.to_string(),
            "too small: the image needs 64.0 MiB (67108864 bytes), the target has 8.0 MiB (8388608 bytes)"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["reason"], "too_small");
    }

    /// A fake sysfs: `dev/block/8:0 -> ../../block/sda`, `8:1 -> ../../block/sda/sda1`.
    #[test]
    fn a_partition_node_leads_to_its_disk_and_is_named() {
        let sys = tempfile::tempdir().unwrap();
        let sda = sys.path().join("block/sda");
        fs::create_dir_all(sda.join("sda1")).unwrap();
        fs::write(sda.join("sda1/partition"), "1\n").unwrap();
        fs::create_dir_all(sys.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink("../../block/sda", sys.path().join("dev/block/8:0")).unwrap();
        std::os::unix::fs::symlink("../../block/sda/sda1", sys.path().join("dev/block/8:1"))
            .unwrap();
        let sys = blockdev::SysRoot::at(sys.path());
        let (d, part) = sys.disk_of_devno(libc::makedev(8, 1)).unwrap();
        assert_eq!((d.name.as_str(), part.as_deref()), ("sda", Some("sda1")));
        let (d, part) = sys.disk_of_devno(libc::makedev(8, 0)).unwrap();
        assert_eq!((d.name.as_str(), part), ("sda", None));
        let r = Refusal::Partition {
            device: "/dev/sda1".into(),
            disk: "/dev/sda".into(),
        };
        assert_eq!(
            r.to_string(),
            "/dev/sda1 is a partition of /dev/sda; give the whole disk"
        );
        assert_eq!(serde_json::to_value(&r).unwrap()["reason"], "partition");
    }

    #[test]
    fn the_root_disk_is_refused() {
        let disks = system_disks();
        let Some(d) = disks.iter().next() else {
            tek_testkit::skip!("/ is not on a block device here");
            return;
        };
        let p = PathBuf::from(format!("/dev/{d}"));
        if !p.exists() {
            tek_testkit::skip!("{} has no device node", p.display());
            return;
        }
        let r = check_target(&p, 1, None).unwrap_err();
        assert!(matches!(r, Refusal::SystemDisk { .. }), "{r}");
    }

    /// A fake machine: sysfs with `sdx` (8:16, partitions `sdx1` 8:17 and `sdx2` 8:18), `sdy`
    /// (8:32) and `sdr` (8:48, the root disk), and block device nodes for them in a temp dir
    /// (never opened: every refusal below comes before the open, and a test must not open a
    /// node that may reach a real disk).
    struct FakeHost {
        _dir: tempfile::TempDir,
        nodes: PathBuf,
        host: Host,
    }

    fn fake_host(mountinfo: &str) -> Option<FakeHost> {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let nodes = dir.path().join("dev");
        fs::create_dir_all(&nodes).unwrap();
        let w = |p: &str, v: &str| {
            let p = sys.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, v).unwrap();
        };
        let mut links = vec![];
        for (disk, maj_min, parts) in [
            ("sdx", (8, 16), &["sdx1", "sdx2"][..]),
            ("sdy", (8, 32), &[][..]),
            ("sdr", (8, 48), &[][..]),
        ] {
            w(
                &format!("block/{disk}/dev"),
                &format!("{}:{}\n", maj_min.0, maj_min.1),
            );
            links.push((maj_min, disk.to_string()));
            for (i, p) in parts.iter().enumerate() {
                let min = maj_min.1 + 1 + i as u32;
                w(&format!("block/{disk}/{p}/dev"), &format!("8:{min}\n"));
                w(
                    &format!("block/{disk}/{p}/partition"),
                    &format!("{}\n", i + 1),
                );
                links.push(((8, min), format!("{disk}/{p}")));
            }
        }
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        for ((ma, mi), to) in &links {
            std::os::unix::fs::symlink(
                format!("../../block/{to}"),
                sys.join(format!("dev/block/{ma}:{mi}")),
            )
            .unwrap();
            let name = to.rsplit('/').next().unwrap();
            let node = nodes.join(name);
            let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
            let dev = libc::makedev(*ma, *mi);
            if let Err(e) = nix::sys::stat::mknod(&node, nix::sys::stat::SFlag::S_IFBLK, mode, dev)
            {
                tek_testkit::skip!("cannot mknod a block device node here ({e}); needs root");
                return None;
            }
        }
        let host = Host {
            sys: blockdev::SysRoot::at(sys),
            mounts: blockdev::mountinfo::parse(mountinfo),
            swaps: vec![],
            root_dev: Some(libc::makedev(8, 48)),
        };
        Some(FakeHost {
            _dir: dir,
            nodes,
            host,
        })
    }

    impl FakeHost {
        fn check(&self, name: &str) -> Result<TargetInfo, Refusal> {
            check_target_on(&self.host, &self.nodes.join(name), 1, None)
        }

        fn sys(&self, p: &str) -> PathBuf {
            self.host.sys.path().join(p)
        }
    }

    #[test]
    fn fake_tree_root_disk_and_partitions_are_refused() {
        let Some(f) = fake_host("") else { return };
        assert_eq!(
            f.check("sdr").unwrap_err(),
            Refusal::SystemDisk {
                disk: "/dev/sdr".into()
            }
        );
        assert_eq!(
            f.check("sdx2").unwrap_err(),
            Refusal::Partition {
                device: "/dev/sdx2".into(),
                disk: "/dev/sdx".into()
            }
        );
        // A block node the fake sysfs does not know.
        let odd = f.nodes.join("odd");
        nix::sys::stat::mknod(
            &odd,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            libc::makedev(8, 200),
        )
        .unwrap();
        assert!(matches!(
            check_target_on(&f.host, &odd, 1, None).unwrap_err(),
            Refusal::NotBlockOrFile { detail } if detail.contains("sysfs")
        ));
    }

    #[test]
    fn fake_tree_root_disk_behind_a_btrfs_root_is_refused() {
        // `/` reports an anonymous device; the root mount names sdx2 by maj:min.
        let Some(mut f) = fake_host("27 1 8:18 /@ / rw - btrfs none rw\n") else {
            return;
        };
        f.host.root_dev = Some(libc::makedev(0, 32));
        assert_eq!(
            f.check("sdx").unwrap_err(),
            Refusal::SystemDisk {
                disk: "/dev/sdx".into()
            }
        );
    }

    #[test]
    fn fake_tree_a_mounted_partition_refuses_its_disk() {
        let Some(f) = fake_host("40 1 8:17 / /media/my\\040stick rw - ext4 /nonexistent rw\n")
        else {
            return;
        };
        assert_eq!(
            f.check("sdx").unwrap_err(),
            Refusal::Mounted {
                device: "/dev/sdx1".into(),
                mountpoint: "/media/my stick".into()
            }
        );
    }

    #[test]
    fn fake_tree_swap_and_holders_are_refused() {
        let Some(mut f) = fake_host("") else { return };
        f.host.swaps = vec![f.nodes.join("sdx2").display().to_string()];
        assert_eq!(
            f.check("sdx").unwrap_err(),
            Refusal::Swap {
                device: f.nodes.join("sdx2").display().to_string()
            }
        );
        fs::create_dir_all(f.sys("block/sdy/holders/dm-3")).unwrap();
        assert_eq!(
            f.check("sdy").unwrap_err(),
            Refusal::HeldBy {
                device: "/dev/sdy".into(),
                holder: "dm-3".into()
            }
        );
    }

    #[test]
    fn fake_tree_sysfs_read_only_is_refused_before_opening() {
        let Some(f) = fake_host("") else { return };
        fs::write(f.sys("block/sdy/ro"), "1\n").unwrap();
        assert_eq!(f.check("sdy").unwrap_err(), Refusal::ReadOnly);
    }

    #[test]
    fn fake_tree_a_file_backing_a_loop_device_is_refused() {
        let Some(f) = fake_host("") else { return };
        let file = f.nodes.join("img");
        fs::write(&file, b"x").unwrap();
        let canon = fs::canonicalize(&file).unwrap();
        let w = f.sys("block/loop9/loop/backing_file");
        fs::create_dir_all(w.parent().unwrap()).unwrap();
        fs::write(&w, format!("{}\n", canon.display())).unwrap();
        assert_eq!(
            check_target_on(&f.host, &file, 1, None).unwrap_err(),
            Refusal::HeldBy {
                device: canon.display().to_string(),
                holder: "loop9".into()
            }
        );
    }
}
