//! Cleaning up after a crashed agent: a `kill -9` or power loss during a migration leaves the
//! data partition mounted on a `tek-mnt-*` directory, through a loop device over the claimed
//! disk when the kernel has no partition node. Both hold the disk (the imager's eligibility
//! check then refuses it as busy), so before a job resumes on its disk the agent releases
//! exactly those holders: mounts on `tek-mnt-*` directories whose device is the disk, one of
//! its partitions, or a loop device backed by the disk; and then those loop devices. Nothing
//! else is touched.
//!
//! Devices are compared by number (`maj:min`), never by name: `/dev/loop1` is a string prefix
//! of `/dev/loop12p2`, which is another disk's partition and maybe another job's mount. All of
//! it is read through `blockdev`: the mount table and each mount's devices (btrfs and overlay
//! included) from [`blockdev::mountinfo`], the disk's partitions and the loop devices over it
//! from [`blockdev::holders`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use blockdev::SysRoot;
use blockdev::holders::block_devno;
use blockdev::mountinfo::{self, MountEntry, devno_str};

/// Prefix of the private mount directories made by `client_data::PartitionMount`.
const MOUNT_PREFIX: &str = "tek-mnt-";

/// What holds a disk: the device numbers (`maj:min`) of the disk, its partitions and the loop
/// devices over it, and those loop devices' nodes.
#[derive(Debug, Default, PartialEq)]
struct Holders {
    devs: HashSet<String>,
    loops: Vec<PathBuf>,
}

/// The disk `disk`'s partitions and the loop devices backed by it, from `sys`.
fn holders(sys: &SysRoot, disk: u64) -> Holders {
    let mut h = Holders::default();
    h.devs.insert(devno_str(disk));
    if let Some((whole, _)) = sys.disk_of_devno(disk) {
        h.devs.extend(whole.members().into_iter().map(|(_, d)| d));
    }
    for (name, own) in sys.loops_over_device(disk) {
        h.devs.insert(devno_str(own));
        h.loops.push(PathBuf::from("/dev").join(name));
    }
    h
}

/// The `tek-mnt-*` mount points among `mounts` on one of `devs`; `devices` gives a mount's
/// block devices ([`mountinfo::block_devices`]; a parameter so tests can fake `stat`).
fn stale_mounts(
    mounts: &[MountEntry],
    devs: &HashSet<String>,
    devices: &dyn Fn(&MountEntry) -> Vec<u64>,
) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| {
            Path::new(&m.mount_point)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(MOUNT_PREFIX))
        })
        .filter(|m| devices(m).into_iter().any(|d| devs.contains(&devno_str(d))))
        .map(|m| PathBuf::from(&m.mount_point))
        .collect()
}

/// Releases holders of `dev` left behind by a crashed agent (see the module docs). Best
/// effort: failures are logged, and the eligibility check reports what still holds the disk.
pub fn release(dev: &Path) {
    let Some(disk) = block_devno(dev) else {
        // A plain file target (the demo without root) has no holders to release.
        return;
    };
    let h = holders(&SysRoot::system(), disk);
    let mounts = mountinfo::current();
    let devices = |m: &MountEntry| mountinfo::block_devices(m, &mounts, 0);
    for mp in stale_mounts(&mounts, &h.devs, &devices) {
        tracing::warn!(mount = %mp.display(), disk = %dev.display(), "unmounting a stale data-partition mount");
        if let Err(e) = nix::mount::umount(&mp) {
            tracing::warn!("unmounting {}: {e}; detaching lazily", mp.display());
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&mp);
    }
    for l in h.loops {
        tracing::warn!(loop_dev = %l.display(), "detaching a stale partition loop device");
        match std::process::Command::new("losetup")
            .arg("-d")
            .arg(&l)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::warn!(
                "detaching {}: {}",
                l.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => tracing::warn!("running losetup -d {}: {e}", l.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_backs_a_nonexistent_device() {
        release(Path::new("/dev/tek-no-such-device"));
    }

    /// `/dev/loop1` (7:1) is the claimed disk; `/dev/loop12` (7:12) is another job's disk,
    /// whose partition `/dev/loop12p2` (259:3) is mounted on a `tek-mnt-*` directory too.
    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 259:3 / /tmp/tek-mnt-other rw,nosuid - ext4 /dev/loop12p2 rw
41 22 7:1 / /tmp/tek-mnt-ours rw,nosuid - ext4 /dev/loop1 rw
42 22 7:20 / /tmp/tek-mnt-part\\040loop rw,nosuid - xfs /dev/loop20 rw
43 22 0:45 / /tmp/tek-mnt-btrfs rw,nosuid - btrfs /dev/loop1 rw
44 22 7:1 / /mnt/someone-elses rw - ext4 /dev/loop1 rw
45 22 0:46 / /tmp/tek-mnt-tmpfs rw - tmpfs tmpfs rw
garbage line
";

    /// A mount's devices as [`mountinfo::block_devices`] finds them, with `stat` of the
    /// source faked: `/dev/loop1` is 7:1, `/dev/loop12p2` is 259:3.
    fn fake_devices(m: &MountEntry) -> Vec<u64> {
        let b = mountinfo::backing(m);
        let source = match b.source_path.as_deref() {
            Some("/dev/loop1") => Some(libc::makedev(7, 1)),
            Some("/dev/loop12p2") => Some(libc::makedev(259, 3)),
            _ => None,
        };
        b.devno.into_iter().chain(source).collect()
    }

    fn devs(list: &[(u32, u32)]) -> HashSet<String> {
        list.iter()
            .map(|&(a, b)| devno_str(libc::makedev(a, b)))
            .collect()
    }

    #[test]
    fn only_our_mounts_of_the_disk_and_its_loops_are_stale_never_a_name_prefix() {
        let m = mountinfo::parse(MOUNTINFO);
        let got = stale_mounts(&m, &devs(&[(7, 1), (7, 20)]), &fake_devices);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/tmp/tek-mnt-ours"),
                PathBuf::from("/tmp/tek-mnt-part loop"),
                PathBuf::from("/tmp/tek-mnt-btrfs"),
            ],
            "/dev/loop12p2 starts with /dev/loop1 but is another device; \
             /mnt/someone-elses is not ours"
        );
        assert_eq!(
            stale_mounts(&m, &devs(&[(7, 12), (259, 3)]), &fake_devices),
            vec![PathBuf::from("/tmp/tek-mnt-other")]
        );
    }

    #[test]
    fn the_disk_and_its_partitions_come_from_sysfs_by_number() {
        let sys = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = sys.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // The disk 8:16 with partition 8:18; a `queue` directory that is no partition.
        w("block/sdb/dev", "8:16\n");
        w("block/sdb/sdb2/partition", "2\n");
        w("block/sdb/sdb2/dev", "8:18\n");
        w("block/sdb/queue/dev", "9:9\n");
        std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink("../../block/sdb", sys.path().join("dev/block/8:16")).unwrap();
        let h = holders(&SysRoot::at(sys.path()), libc::makedev(8, 16));
        assert_eq!(h.devs, devs(&[(8, 16), (8, 18)]));
        assert!(h.loops.is_empty());
    }

    /// Detaches a loop device this test attached at a chosen number.
    struct Attached(PathBuf);
    impl Drop for Attached {
        fn drop(&mut self) {
            let _ = client_data::loopdev::detach_path(&self.0);
        }
    }

    fn mkfs_and_mount(dev: &Path, at: &Path) {
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(dev)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.ext4 {}", dev.display());
        std::fs::create_dir(at).unwrap();
        nix::mount::mount(
            Some(dev),
            at,
            Some("ext4"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
    }

    fn mounted(at: &Path) -> bool {
        mountinfo::current()
            .iter()
            .any(|m| Path::new(&m.mount_point) == at)
    }

    /// The bug, on real devices: the claimed disk is `/dev/loopN`, another job's disk is
    /// `/dev/loopN<d>` (its name starts with the claimed one's), both mounted on `tek-mnt-*`
    /// directories. Only the claimed disk's mount is released.
    #[test]
    fn release_spares_a_device_whose_name_has_the_disk_as_prefix() {
        if !nix::unistd::geteuid().is_root() || !client_data::loopdev::can_attach() {
            tek_testkit::skip!("needs root and loop devices");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| {
            let p = dir.path().join(n);
            std::fs::File::create(&p)
                .unwrap()
                .set_len(16 << 20)
                .unwrap();
            p
        };
        // No other name starts with "loop0" (loop00 is not a name): hold loop0 and take the next.
        let first = client_data::loopdev::LoopDevice::attach(&file("first.img")).unwrap();
        let (ours, _held) = if first.name() == "loop0" {
            let next = client_data::loopdev::LoopDevice::attach(&file("ours.img")).unwrap();
            (next, Some(first))
        } else {
            (first, None)
        };
        let n = ours.name().trim_start_matches("loop").to_string();
        // A free loopN<d>, attached at that number (losetup creates the node).
        let victim_file = file("victim.img");
        let victim = (0..10)
            .map(|d| PathBuf::from(format!("/dev/loop{n}{d}")))
            .find_map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if Path::new(&format!("/sys/block/{name}/loop")).exists() {
                    return None;
                }
                std::process::Command::new("losetup")
                    .arg(&p)
                    .arg(&victim_file)
                    .status()
                    .ok()
                    .filter(|s| s.success())
                    .map(|_| Attached(p))
            })
            .unwrap_or_else(|| panic!("attaching a loop device at /dev/loop{n}<d>"));
        let ours_at = dir.path().join("tek-mnt-ours");
        let victim_at = dir.path().join("tek-mnt-victim");
        mkfs_and_mount(ours.path(), &ours_at);
        mkfs_and_mount(&victim.0, &victim_at);
        release(ours.path());
        let released = !mounted(&ours_at);
        let spared = mounted(&victim_at);
        let _ = nix::mount::umount2(&victim_at, nix::mount::MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&ours_at, nix::mount::MntFlags::MNT_DETACH);
        assert!(released, "the claimed disk's stale mount was kept");
        assert!(
            spared,
            "{} was unmounted while releasing {}",
            victim.0.display(),
            ours.path().display()
        );
    }
}
