//! Which targets may be written: [`check_target`] looks, without writing or claiming anything,
//! and answers with the disk's identity or a typed [`Refusal`] for the technician.
//!
//! Block devices are looked up in sysfs through their major:minor (`/sys/dev/block/M:m`), so a
//! partition node leads to its whole disk, and all checks (mounts, swap, holders) cover the disk
//! and every partition on it. The system disk is found from `/`'s device, following dm/md
//! `slaves/` down to the physical disks.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ioctl;
use crate::mountinfo;

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
    #[error("too small: the image needs {need} bytes, the target has {have}")]
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
    /// Size in bytes.
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

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A block device's sysfs identity.
#[derive(Debug, Clone)]
struct SysDisk {
    /// Kernel name of the whole disk (`sda`, `loop3`).
    name: String,
    /// `/sys/block/<name>`.
    dir: PathBuf,
}

impl SysDisk {
    /// The whole disk containing device `maj:min`.
    fn of_devno(devno: u64) -> Option<SysDisk> {
        Self::of_devno_in(Path::new("/sys"), devno).map(|(d, _)| d)
    }

    /// The whole disk containing device `maj:min` under sysfs root `sys`, and the partition's
    /// kernel name when `devno` is a partition (its sysfs directory holds `partition`).
    fn of_devno_in(sys: &Path, devno: u64) -> Option<(SysDisk, Option<String>)> {
        let (maj, min) = (libc::major(devno), libc::minor(devno));
        let dir = fs::canonicalize(sys.join(format!("dev/block/{maj}:{min}"))).ok()?;
        let (dir, part) = if dir.join("partition").exists() {
            let part = dir.file_name()?.to_string_lossy().into_owned();
            (dir.parent()?.to_path_buf(), Some(part))
        } else {
            (dir, None)
        };
        let name = dir.file_name()?.to_string_lossy().into_owned();
        Some((SysDisk { name, dir }, part))
    }

    /// The disk and its partitions: (kernel name, "maj:min").
    fn members(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(d) = read_trim(self.dir.join("dev")) {
            out.push((self.name.clone(), d));
        }
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.join("partition").exists() {
                    if let Some(d) = read_trim(p.join("dev")) {
                        out.push((e.file_name().to_string_lossy().into_owned(), d));
                    }
                }
            }
        }
        out
    }

    fn sys_of(&self, member: &str) -> PathBuf {
        if member == self.name {
            self.dir.clone()
        } else {
            self.dir.join(member)
        }
    }
}

/// Physical disks under a block device, following dm/md `slaves/` (kernel names).
fn leaf_disks(devno: u64, out: &mut BTreeSet<String>, depth: usize) {
    let Some(d) = SysDisk::of_devno(devno) else {
        return;
    };
    let slaves: Vec<_> = fs::read_dir(d.dir.join("slaves"))
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    if slaves.is_empty() || depth > 8 {
        out.insert(d.name);
        return;
    }
    for s in slaves {
        if let Some(dev) = read_trim(s.path().join("dev")) {
            if let Some((ma, mi)) = dev.split_once(':') {
                if let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) {
                    leaf_disks(libc::makedev(ma, mi), out, depth + 1);
                }
            }
        }
    }
}

/// Kernel names of the disks that back `/`: from `/`'s `st_dev` when that is a real block
/// device, and from the root mount's source and (overlay) layers, since btrfs and overlay
/// report an anonymous `0:N` there (see [`mountinfo`]).
pub fn system_disks() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(md) = fs::metadata("/") {
        leaf_disks(md.dev(), &mut out, 0);
    }
    let mounts = mountinfo::current();
    if let Some(root) = mountinfo::root_mount(&mounts) {
        for d in mountinfo::block_devices(root, &mounts, 0) {
            leaf_disks(d, &mut out, 0);
        }
    }
    out
}

/// Paths listed in /proc/swaps.
fn swaps() -> Vec<String> {
    let text = fs::read_to_string("/proc/swaps").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Loop devices whose backing file is `file`.
fn loops_backed_by(file: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            if let Some(b) = read_trim(e.path().join("loop/backing_file")) {
                if Path::new(&b) == file {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    out
}

/// The eligibility check the agent reuses (no writes, no exclusive open). `image_sector` is the
/// logical sector size of the image's GPT, if it has one.
pub fn check_target(
    path: &Path,
    image_size: u64,
    image_sector: Option<u64>,
) -> Result<TargetInfo, Refusal> {
    let md = fs::metadata(path).map_err(|e| Refusal::NotBlockOrFile {
        detail: e.to_string(),
    })?;
    let ft = md.file_type();
    if ft.is_file() {
        return check_file(path, &md, image_size);
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
    let (disk, part) = SysDisk::of_devno_in(Path::new("/sys"), md.rdev()).ok_or_else(|| {
        Refusal::NotBlockOrFile {
            detail: "block device without a sysfs entry".into(),
        }
    })?;
    if system_disks().contains(&disk.name) {
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
    // By `maj:min` and by mount source (btrfs and overlay mounts show an anonymous 0:N).
    let mounts = mountinfo::current();
    for m in &mounts {
        for dev in mountinfo::block_devices(m, &mounts, 0) {
            let dev = mountinfo::devno_str(dev);
            if let Some((name, _)) = members.iter().find(|(_, d)| *d == dev) {
                return Err(Refusal::Mounted {
                    device: format!("/dev/{name}"),
                    mountpoint: m.mount_point.clone(),
                });
            }
        }
    }
    for s in swaps() {
        if let Ok(smd) = fs::metadata(&s) {
            let d = format!("{}:{}", libc::major(smd.rdev()), libc::minor(smd.rdev()));
            if smd.file_type().is_block_device() && members.iter().any(|(_, m)| *m == d) {
                return Err(Refusal::Swap { device: s });
            }
        }
    }
    for (name, _) in &members {
        let holders: Vec<String> = fs::read_dir(disk.sys_of(name).join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(h) = holders.first() {
            return Err(Refusal::HeldBy {
                device: format!("/dev/{name}"),
                holder: h.clone(),
            });
        }
    }
    let sys_ro = read_trim(disk.dir.join("ro")).is_some_and(|v| v == "1");
    let f = fs::File::open(path).map_err(|e| Refusal::Busy {
        detail: e.to_string(),
    })?;
    if sys_ro || ioctl::read_only(f.as_fd()).unwrap_or(false) {
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
    let dev_dir = disk.dir.join("device");
    let model = read_trim(dev_dir.join("model")).or_else(|| {
        read_trim(disk.dir.join("loop/backing_file")).map(|b| format!("loop device on {b}"))
    });
    let serial = read_trim(dev_dir.join("serial")).or_else(|| read_trim(disk.dir.join("serial")));
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

fn check_file(path: &Path, md: &fs::Metadata, image_size: u64) -> Result<TargetInfo, Refusal> {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(l) = loops_backed_by(&canon).first() {
        return Err(Refusal::HeldBy {
            device: canon.display().to_string(),
            holder: l.clone(),
        });
    }
    if swaps().iter().any(|s| Path::new(s) == canon) {
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
        let r = Refusal::TooSmall { need: 10, have: 5 };
        assert_eq!(
            r.to_string(),
            "too small: the image needs 10 bytes, the target has 5"
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
        let (d, part) = SysDisk::of_devno_in(sys.path(), libc::makedev(8, 1)).unwrap();
        assert_eq!((d.name.as_str(), part.as_deref()), ("sda", Some("sda1")));
        let (d, part) = SysDisk::of_devno_in(sys.path(), libc::makedev(8, 0)).unwrap();
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
}
