//! Who else uses a disk: its partitions' mounts, swap, sysfs `holders/` (dm, md, LVM), loop
//! devices backed by a file, and which disks back `/`.
//!
//! Everything is read through a [`Host`]: a sysfs root plus the mount table, swap list and `/`'s
//! device as the kernel gave them. [`Host::current`] reads this machine; tests build one from a
//! fake sysfs tree and literal mountinfo text, so every refusal the imager makes can be tested
//! without a disk.
//!
//! Block devices are looked up through their major:minor (`<sys>/dev/block/M:m`), so a partition
//! node leads to its whole disk, and the checks cover the disk and every partition on it. The
//! system disk is found from `/`'s device, following dm/md `slaves/` down to the physical disks.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::mountinfo::{self, MountEntry};
use crate::sysfs::SysRoot;

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn parse_devno(s: &str) -> Option<u64> {
    let (ma, mi) = s.split_once(':')?;
    Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// A whole disk in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeDisk {
    /// Kernel name of the whole disk (`sda`, `loop3`).
    pub name: String,
    /// Its sysfs directory (`<sys>/block/<name>`, resolved).
    pub dir: PathBuf,
}

impl WholeDisk {
    /// The disk and its partitions: (kernel name, "maj:min").
    pub fn members(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(d) = read_trim(self.dir.join("dev")) {
            out.push((self.name.clone(), d));
        }
        if let Ok(rd) = fs::read_dir(&self.dir) {
            let mut parts: Vec<(String, String)> = rd
                .flatten()
                .filter(|e| e.path().join("partition").exists())
                .filter_map(|e| {
                    let d = read_trim(e.path().join("dev"))?;
                    Some((e.file_name().to_string_lossy().into_owned(), d))
                })
                .collect();
            parts.sort();
            out.extend(parts);
        }
        out
    }

    /// The sysfs directory of `member` (the disk itself or one of its partitions).
    pub fn sys_of(&self, member: &str) -> PathBuf {
        if member == self.name {
            self.dir.clone()
        } else {
            self.dir.join(member)
        }
    }

    /// What holds `member` (sysfs `holders/`: `dm-0`, `md127`, ...), sorted.
    pub fn holders(&self, member: &str) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.sys_of(member).join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Read-only at the block layer (sysfs `ro`).
    pub fn read_only(&self) -> bool {
        read_trim(self.dir.join("ro")).is_some_and(|v| v == "1")
    }

    /// Model (sysfs `device/model`; for a loop device, its backing file).
    pub fn model(&self) -> Option<String> {
        read_trim(self.dir.join("device/model")).or_else(|| {
            read_trim(self.dir.join("loop/backing_file")).map(|b| format!("loop device on {b}"))
        })
    }

    /// Serial number (sysfs `device/serial` or `serial`).
    pub fn serial(&self) -> Option<String> {
        read_trim(self.dir.join("device/serial")).or_else(|| read_trim(self.dir.join("serial")))
    }
}

impl SysRoot {
    /// The whole disk containing device `devno`, and the partition's kernel name when `devno` is
    /// a partition (its sysfs directory holds `partition`).
    pub fn disk_of_devno(&self, devno: u64) -> Option<(WholeDisk, Option<String>)> {
        let (maj, min) = (libc::major(devno), libc::minor(devno));
        let dir = fs::canonicalize(self.path().join(format!("dev/block/{maj}:{min}"))).ok()?;
        let (dir, part) = if dir.join("partition").exists() {
            let part = dir.file_name()?.to_string_lossy().into_owned();
            (dir.parent()?.to_path_buf(), Some(part))
        } else {
            (dir, None)
        };
        let name = dir.file_name()?.to_string_lossy().into_owned();
        Some((WholeDisk { name, dir }, part))
    }

    /// Physical disks under a block device, following dm/md `slaves/` (kernel names).
    pub fn leaf_disks(&self, devno: u64, out: &mut BTreeSet<String>) {
        self.leaf_disks_at(devno, out, 0)
    }

    fn leaf_disks_at(&self, devno: u64, out: &mut BTreeSet<String>, depth: usize) {
        let Some((d, _)) = self.disk_of_devno(devno) else {
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
            if let Some(dev) = read_trim(s.path().join("dev"))
                .as_deref()
                .and_then(parse_devno)
            {
                self.leaf_disks_at(dev, out, depth + 1);
            }
        }
    }

    /// Loop devices whose backing file is `file` (kernel names, sorted).
    pub fn loops_backed_by(&self, file: &Path) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.path().join("block")) {
            for e in rd.flatten() {
                if let Some(b) = read_trim(e.path().join("loop/backing_file"))
                    && Path::new(&b) == file
                {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

impl SysRoot {
    /// Loop devices whose backing file is the block device `devno` (a partition loop with an
    /// offset over a whole disk): (kernel name, the loop device's own number), sorted. Matched
    /// by device number, never by path: `/dev/sdb` and a symlink to it are the same disk,
    /// `/dev/sdb1x` is another one.
    pub fn loops_over_device(&self, devno: u64) -> Vec<(String, u64)> {
        self.loops_over_device_with(devno, &block_devno)
    }

    /// [`SysRoot::loops_over_device`] with `stat` resolving a backing file to a device number
    /// (tests fake it).
    fn loops_over_device_with(
        &self,
        devno: u64,
        stat: &dyn Fn(&Path) -> Option<u64>,
    ) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.path().join("block")) {
            for e in rd.flatten() {
                let Some(backing) = read_trim(e.path().join("loop/backing_file")) else {
                    continue;
                };
                if stat(Path::new(&backing)) != Some(devno) {
                    continue;
                }
                if let Some(own) = read_trim(e.path().join("dev"))
                    .as_deref()
                    .and_then(parse_devno)
                {
                    out.push((e.file_name().to_string_lossy().into_owned(), own));
                }
            }
        }
        out.sort();
        out
    }
}

/// The device number of the block device at `path`; `None` when it is not one (a plain file,
/// a missing node).
pub fn block_devno(path: &Path) -> Option<u64> {
    let md = fs::metadata(path).ok()?;
    std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()).then(|| md.rdev())
}

/// Paths listed in `/proc/swaps` text (the first line is a header).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The machine as disk checks see it: sysfs, the mount table, the swap list and `/`'s device.
#[derive(Debug, Clone)]
pub struct Host {
    /// The sysfs tree.
    pub sys: SysRoot,
    /// `/proc/self/mountinfo`, parsed.
    pub mounts: Vec<MountEntry>,
    /// `/proc/swaps` paths.
    pub swaps: Vec<String>,
    /// `st_dev` of `/` (`None` when it cannot be read).
    pub root_dev: Option<u64>,
}

impl Host {
    /// This machine, read now (empty lists where `/proc` is unreadable).
    pub fn current() -> Host {
        Host {
            sys: SysRoot::system(),
            mounts: mountinfo::current(),
            swaps: parse_swaps(&fs::read_to_string("/proc/swaps").unwrap_or_default()),
            root_dev: fs::metadata("/").ok().map(|m| m.dev()),
        }
    }

    /// Kernel names of the disks that back `/`: from `/`'s `st_dev` when that is a real block
    /// device, and from the root mount's source and (overlay) layers, since btrfs and overlay
    /// report an anonymous `0:N` there (see [`mountinfo`]).
    pub fn system_disks(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Some(d) = self.root_dev {
            self.sys.leaf_disks(d, &mut out);
        }
        if let Some(root) = mountinfo::root_mount(&self.mounts) {
            for d in mountinfo::block_devices(root, &self.mounts, 0) {
                self.sys.leaf_disks(d, &mut out);
            }
        }
        out
    }

    /// Kernel names of the disks that hold `path` (a depot's state root, say): from its
    /// `st_dev` and from the mount it lives on, resolved as [`Host::system_disks`] resolves `/`.
    /// Empty when `path` cannot be read or lives on no disk (tmpfs).
    pub fn disks_backing(&self, path: &Path) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Ok(md) = fs::metadata(path) {
            self.sys.leaf_disks(md.dev(), &mut out);
        }
        if let Some(m) = mountinfo::mount_of(path, &self.mounts) {
            for d in mountinfo::block_devices(m, &self.mounts, 0) {
                self.sys.leaf_disks(d, &mut out);
            }
        }
        out
    }

    /// The first mount found on one of `members` ("maj:min" pairs as [`WholeDisk::members`]
    /// gives them): (member name, mount point). By `maj:min` and by mount source (btrfs and
    /// overlay mounts show an anonymous `0:N`).
    pub fn mounted_member(&self, members: &[(String, String)]) -> Option<(String, String)> {
        for m in &self.mounts {
            for dev in mountinfo::block_devices(m, &self.mounts, 0) {
                let dev = mountinfo::devno_str(dev);
                if let Some((name, _)) = members.iter().find(|(_, d)| *d == dev) {
                    return Some((name.clone(), m.mount_point.clone()));
                }
            }
        }
        None
    }

    /// The first swap entry that is one of `members` (a block device whose `maj:min` matches).
    pub fn swap_member(&self, members: &[(String, String)]) -> Option<String> {
        self.swaps.iter().find_map(|s| {
            let md = fs::metadata(s).ok()?;
            let d = mountinfo::devno_str(md.rdev());
            (std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type())
                && members.iter().any(|(_, m)| *m == d))
            .then(|| s.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `block/sda` with `sda1`, `block/dm-0` over `sda1`, `block/loop2` on `/srv/img`.
    fn fake() -> (tempfile::TempDir, SysRoot) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let w = |p: &str, v: &str| {
            let p = r.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, v).unwrap();
        };
        w("block/sda/dev", "8:0\n");
        w("block/sda/sda1/dev", "8:1\n");
        w("block/sda/sda1/partition", "1\n");
        w("block/sda/device/model", "Disk A  \n");
        w("block/sda/device/serial", "S1\n");
        fs::create_dir_all(r.join("block/sda/sda1/holders/dm-0")).unwrap();
        w("block/dm-0/dev", "253:0\n");
        w("block/dm-0/slaves/sda1/dev", "8:1\n");
        w("block/loop2/dev", "7:2\n");
        w("block/loop2/loop/backing_file", "/srv/img\n");
        w("block/loop2/ro", "1\n");
        fs::create_dir_all(r.join("dev/block")).unwrap();
        for (d, to) in [
            ("8:0", "sda"),
            ("8:1", "sda/sda1"),
            ("253:0", "dm-0"),
            ("7:2", "loop2"),
        ] {
            symlink(format!("../../block/{to}"), r.join("dev/block").join(d)).unwrap();
        }
        let root = SysRoot::at(r);
        (t, root)
    }

    #[test]
    fn a_partition_leads_to_its_disk_with_members_holders_and_identity() {
        let (_t, sys) = fake();
        let (d, part) = sys.disk_of_devno(libc::makedev(8, 1)).unwrap();
        assert_eq!((d.name.as_str(), part.as_deref()), ("sda", Some("sda1")));
        assert_eq!(
            d.members(),
            [("sda".into(), "8:0".into()), ("sda1".into(), "8:1".into())]
        );
        assert_eq!(d.holders("sda1"), ["dm-0"]);
        assert!(d.holders("sda").is_empty());
        assert_eq!(d.model().as_deref(), Some("Disk A"));
        assert_eq!(d.serial().as_deref(), Some("S1"));
        assert!(!d.read_only());
        assert!(sys.disk_of_devno(libc::makedev(9, 9)).is_none());
    }

    #[test]
    fn dm_is_followed_to_its_physical_disk() {
        let (_t, sys) = fake();
        let mut out = BTreeSet::new();
        sys.leaf_disks(libc::makedev(253, 0), &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["sda"]);
    }

    #[test]
    fn loops_are_found_by_backing_file() {
        let (_t, sys) = fake();
        assert_eq!(sys.loops_backed_by(Path::new("/srv/img")), ["loop2"]);
        assert!(sys.loops_backed_by(Path::new("/srv/other")).is_empty());
        let (l, _) = sys.disk_of_devno(libc::makedev(7, 2)).unwrap();
        assert!(l.read_only());
        assert_eq!(l.model().as_deref(), Some("loop device on /srv/img"));
    }

    #[test]
    fn loops_over_a_device_are_found_by_number_never_by_name() {
        let (t, sys) = fake();
        let w = |p: &str, v: &str| {
            let p = t.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, v).unwrap();
        };
        // loop20 over /dev/sdb (8:16); loop21 over a node whose name has sdb's as a prefix;
        // loop22 over a file.
        w("block/loop20/loop/backing_file", "/dev/sdb\n");
        w("block/loop20/dev", "7:20\n");
        w("block/loop21/loop/backing_file", "/dev/sdb1x\n");
        w("block/loop21/dev", "7:21\n");
        w("block/loop22/loop/backing_file", "/srv/sdb.img\n");
        w("block/loop22/dev", "7:22\n");
        let stat = |p: &Path| match p.to_str()? {
            "/dev/sdb" => Some(libc::makedev(8, 16)),
            "/dev/sdb1x" => Some(libc::makedev(8, 160)),
            _ => None,
        };
        assert_eq!(
            sys.loops_over_device_with(libc::makedev(8, 16), &stat),
            [("loop20".to_string(), libc::makedev(7, 20))]
        );
        assert!(
            sys.loops_over_device_with(libc::makedev(8, 17), &stat)
                .is_empty()
        );
    }

    #[test]
    fn block_devno_is_none_for_files_and_missing_nodes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(block_devno(f.path()), None);
        assert_eq!(block_devno(Path::new("/dev/tek-no-such-device")), None);
    }

    #[test]
    fn system_disks_come_from_root_dev_and_the_root_mount() {
        let (_t, sys) = fake();
        // `/` on a dm device over sda1, as st_dev says.
        let host = Host {
            sys: sys.clone(),
            mounts: vec![],
            swaps: vec![],
            root_dev: Some(libc::makedev(253, 0)),
        };
        assert_eq!(host.system_disks().into_iter().collect::<Vec<_>>(), ["sda"]);
        // btrfs root: anonymous st_dev, but the mount names a real maj:min elsewhere.
        let host = Host {
            sys,
            mounts: mountinfo::parse("27 1 8:1 / / rw - ext4 none rw\n"),
            swaps: vec![],
            root_dev: Some(libc::makedev(0, 32)),
        };
        assert_eq!(host.system_disks().into_iter().collect::<Vec<_>>(), ["sda"]);
        let (d, _) = host.sys.disk_of_devno(libc::makedev(8, 0)).unwrap();
        assert_eq!(
            host.mounted_member(&d.members()),
            Some(("sda1".into(), "/".into()))
        );
    }

    #[test]
    fn swaps_text_is_parsed() {
        let t = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2 partition 1 0 -2\n/swap\\040file file 1 0 -3\n";
        assert_eq!(parse_swaps(t), ["/dev/sdb2", "/swap\\040file"]);
        assert!(parse_swaps("").is_empty());
    }
}
