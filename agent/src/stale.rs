//! Cleaning up after a crashed agent: a `kill -9` or power loss during a migration leaves the
//! data partition mounted on a `tek-mnt-*` directory, through a loop device over the claimed
//! disk when the kernel has no partition node. Both hold the disk (the imager's eligibility
//! check then refuses it as busy), so before a job resumes on its disk the agent releases
//! exactly those holders: mounts on `tek-mnt-*` directories whose device is the disk, one of
//! its partitions, or a loop device backed by the disk; and then those loop devices. Nothing
//! else is touched.
//!
//! Devices are compared by number (`major:minor`), never by name: `/dev/loop1` is a string
//! prefix of `/dev/loop12p2`, which is another disk's partition and maybe another job's mount.
//! A mount's device is field 3 of `/proc/self/mountinfo`; for filesystems with an anonymous
//! device there (major 0: btrfs, overlay) the mount source is resolved with `stat` instead.
//! Partitions come from sysfs (`/sys/dev/block/M:m/*/partition`), loop devices from
//! `/sys/class/block/loopN/loop/backing_file`, whose target is `stat`ed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Prefix of the private mount directories made by `client_data::PartitionMount`.
const MOUNT_PREFIX: &str = "tek-mnt-";

/// A block device number.
type DevNum = (u64, u64);

/// The device number of the block device at `path`, if it is one.
fn block_dev_of(path: &Path) -> Option<DevNum> {
    let st = nix::sys::stat::stat(path).ok()?;
    let kind =
        nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT;
    (kind == nix::sys::stat::SFlag::S_IFBLK).then(|| {
        (
            nix::sys::stat::major(st.st_rdev),
            nix::sys::stat::minor(st.st_rdev),
        )
    })
}

/// Parses sysfs's `MAJ:MIN` (a `dev` file, a mountinfo field).
fn parse_devnum(s: &str) -> Option<DevNum> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What holds a disk: the device numbers of the disk, its partitions and the loop devices over
/// it, and those loop devices' nodes.
#[derive(Debug, Default, PartialEq)]
struct Holders {
    devs: HashSet<DevNum>,
    loops: Vec<PathBuf>,
}

/// The disk `disk`'s partitions and the loop devices backed by it, from the sysfs at `sys`.
/// `stat_dev` resolves a backing file to a device number (a parameter so tests can fake it).
fn holders(sys: &Path, disk: DevNum, stat_dev: &dyn Fn(&Path) -> Option<DevNum>) -> Holders {
    let mut h = Holders::default();
    h.devs.insert(disk);
    let dir = sys.join(format!("dev/block/{}:{}", disk.0, disk.1));
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.join("partition").is_file()
            && let Some(d) = std::fs::read_to_string(p.join("dev"))
                .ok()
                .and_then(|s| parse_devnum(&s))
        {
            h.devs.insert(d);
        }
    }
    for e in std::fs::read_dir(sys.join("class/block"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if stat_dev(Path::new(backing.trim_end())) != Some(disk) {
            continue;
        }
        if let Some(d) = std::fs::read_to_string(e.path().join("dev"))
            .ok()
            .and_then(|s| parse_devnum(&s))
        {
            h.devs.insert(d);
            h.loops.push(PathBuf::from("/dev").join(&name));
        }
    }
    h.loops.sort();
    h
}

/// One line of mountinfo: the device number, the source and the mount point.
#[derive(Debug, PartialEq)]
struct MountEntry {
    dev: DevNum,
    source: String,
    mount_point: PathBuf,
}

/// Parses `/proc/self/mountinfo` text; malformed lines are skipped.
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut f = left.split(' ');
            let dev = parse_devnum(f.nth(2)?)?;
            let mp = f.nth(1)?;
            let src = right.split(' ').nth(1)?;
            Some(MountEntry {
                dev,
                source: unescape(src),
                mount_point: PathBuf::from(unescape(mp)),
            })
        })
        .collect()
}

/// The `tek-mnt-*` mount points among `mounts` whose device is one of `devs`.
fn stale_mounts(
    mounts: &[MountEntry],
    devs: &HashSet<DevNum>,
    stat_dev: &dyn Fn(&Path) -> Option<DevNum>,
) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| {
            m.mount_point
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(MOUNT_PREFIX))
        })
        .filter(|m| {
            devs.contains(&m.dev)
                || (m.dev.0 == 0
                    && stat_dev(Path::new(&m.source)).is_some_and(|d| devs.contains(&d)))
        })
        .map(|m| m.mount_point.clone())
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Releases holders of `dev` left behind by a crashed agent (see the module docs). Best
/// effort: failures are logged, and the eligibility check reports what still holds the disk.
pub fn release(dev: &Path) {
    let Some(disk) = block_dev_of(dev) else {
        // A plain file target (the demo without root) has no holders to release.
        return;
    };
    let h = holders(Path::new("/sys"), disk, &block_dev_of);
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for mp in stale_mounts(&parse_mountinfo(&text), &h.devs, &block_dev_of) {
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
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/tmp/a\\040b"), "/tmp/a b");
    }

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

    fn fake_stat(p: &Path) -> Option<DevNum> {
        match p.to_str()? {
            "/dev/loop1" => Some((7, 1)),
            "/dev/loop12p2" => Some((259, 3)),
            _ => None,
        }
    }

    #[test]
    fn mountinfo_is_parsed_with_device_numbers() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 7);
        assert_eq!(
            m[1],
            MountEntry {
                dev: (259, 3),
                source: "/dev/loop12p2".into(),
                mount_point: "/tmp/tek-mnt-other".into(),
            }
        );
        assert_eq!(m[3].mount_point, Path::new("/tmp/tek-mnt-part loop"));
    }

    #[test]
    fn only_our_mounts_of_the_disk_and_its_loops_are_stale_never_a_name_prefix() {
        let m = parse_mountinfo(MOUNTINFO);
        let devs: HashSet<DevNum> = [(7, 1), (7, 20)].into();
        let got = stale_mounts(&m, &devs, &fake_stat);
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
        let other: HashSet<DevNum> = [(7, 12), (259, 3)].into();
        assert_eq!(
            stale_mounts(&m, &other, &fake_stat),
            vec![PathBuf::from("/tmp/tek-mnt-other")]
        );
    }

    #[test]
    fn partitions_and_loops_over_the_disk_come_from_sysfs_by_number() {
        let sys = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = sys.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // The disk 8:16 with partition 8:18; loop20 over it, loop21 over another disk whose
        // node name has the disk's as a prefix, loop22 over a file.
        w("dev/block/8:16/sdb2/partition", "2\n");
        w("dev/block/8:16/sdb2/dev", "8:18\n");
        w("dev/block/8:16/queue/dev", "9:9\n");
        w("class/block/loop20/loop/backing_file", "/dev/sdb\n");
        w("class/block/loop20/dev", "7:20\n");
        w("class/block/loop21/loop/backing_file", "/dev/sdb1x\n");
        w("class/block/loop21/dev", "7:21\n");
        w("class/block/loop22/loop/backing_file", "/srv/sdb.img\n");
        w("class/block/loop22/dev", "7:22\n");
        w("class/block/sdb/dev", "8:16\n");
        let stat = |p: &Path| match p.to_str()? {
            "/dev/sdb" => Some((8, 16)),
            "/dev/sdb1x" => Some((8, 160)),
            _ => None,
        };
        let h = holders(sys.path(), (8, 16), &stat);
        assert_eq!(h.devs, [(8, 16), (8, 18), (7, 20)].into());
        assert_eq!(h.loops, vec![PathBuf::from("/dev/loop20")]);
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
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        parse_mountinfo(&text).iter().any(|m| m.mount_point == at)
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
