//! `/proc/self/mountinfo` and which block devices a mount lives on, for eligibility (the imager) and stale-state checks (the agent).
//!
//! The `maj:min` field of a mountinfo line is the filesystem's `s_dev`, which is the block
//! device only for single-device filesystems such as ext4 or xfs. btrfs (every subvolume),
//! overlay, tmpfs and FUSE report an *anonymous* device `0:N` that no disk has, so a check
//! that compares only that field misses a mounted btrfs disk and a btrfs or overlay root.
//! So a mount's devices are, in addition to a real `maj:min`: its source when that is a
//! block-device path (btrfs names one of its devices there, e.g. `/dev/vda2`), and for overlay
//! the mounts holding its `lowerdir`/`upperdir` layers, resolved the same way.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One line of mountinfo (the fields eligibility needs; escapes like `\040` decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The filesystem's device as `maj:min` (`0:N` for anonymous devices).
    pub devno: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (`/dev/vda2`, `overlay`, `tmpfs`, ...).
    pub source: String,
    /// Per-superblock options as the kernel wrote them, still escaped (so a `,` inside a
    /// path, written as `\054`, does not split an option; overlay's `lowerdir=...` are here).
    pub super_opts: String,
}

/// Decodes the octal escapes the kernel writes for space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // Optional fields end with a lone "-"; fstype, source and super options follow.
            let sep = f.iter().skip(6).position(|x| *x == "-")? + 6;
            Some(MountEntry {
                devno: f.get(2)?.to_string(),
                mount_point: unescape(f.get(4)?),
                fstype: unescape(f.get(sep + 1)?),
                source: unescape(f.get(sep + 2)?),
                super_opts: f.get(sep + 3).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// This process's mounts (empty when `/proc` is unreadable).
pub fn current() -> Vec<MountEntry> {
    parse(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// `maj:min` of a device number.
pub fn devno_str(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

fn parse_devno(s: &str) -> Option<u64> {
    let (ma, mi) = s.split_once(':')?;
    Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// What a mount is made of, before looking at the filesystem: its real `maj:min` (anything but
/// major 0), its source when that is an absolute path, and overlay layer directories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backing {
    /// A real block device number from the `maj:min` field.
    pub devno: Option<u64>,
    /// The source, when it is an absolute path (a block device to `stat`).
    pub source_path: Option<String>,
    /// overlay's `lowerdir` and `upperdir` directories.
    pub layers: Vec<String>,
}

/// Splits a mount into what backs it (pure: no filesystem access).
pub fn backing(e: &MountEntry) -> Backing {
    let devno = parse_devno(&e.devno).filter(|&d| libc::major(d) != 0);
    let source_path = Some(e.source.clone()).filter(|s| s.starts_with('/'));
    let mut layers = Vec::new();
    if e.fstype == "overlay" {
        for opt in e.super_opts.split(',') {
            let opt = unescape(opt);
            if let Some(v) = opt
                .strip_prefix("lowerdir=")
                .or_else(|| opt.strip_prefix("upperdir="))
            {
                // lowerdir stacks layers with ':' (a literal colon is escaped as "\:").
                let mut cur = String::new();
                let mut chars = v.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => cur.extend(chars.next()),
                        ':' => layers.push(std::mem::take(&mut cur)),
                        c => cur.push(c),
                    }
                }
                layers.push(cur);
            }
        }
        layers.retain(|l| !l.is_empty());
    }
    Backing {
        devno,
        source_path,
        layers,
    }
}

/// The mount holding `path` among `mounts`: the one with `path`'s `st_dev`, else the one
/// with the longest mount point that is a prefix of the resolved path (the last listed wins,
/// being on top).
pub fn mount_of<'a>(path: &Path, mounts: &'a [MountEntry]) -> Option<&'a MountEntry> {
    if let Ok(md) = fs::metadata(path) {
        let d = devno_str(md.dev());
        if let Some(m) = mounts.iter().rev().find(|m| m.devno == d) {
            return Some(m);
        }
    }
    let p = fs::canonicalize(path).ok()?;
    mounts
        .iter()
        .rev()
        .filter(|m| p.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.len())
}

/// Block device numbers under `entry`: its real `maj:min`, its source if that is a block
/// device, and (overlay) those of the mounts holding its layers. `depth` bounds the recursion.
pub fn block_devices(entry: &MountEntry, mounts: &[MountEntry], depth: usize) -> Vec<u64> {
    let b = backing(entry);
    let mut out: Vec<u64> = b.devno.into_iter().collect();
    if let Some(src) = &b.source_path
        && let Ok(md) = fs::metadata(src)
        && md.file_type().is_block_device()
    {
        out.push(md.rdev());
    }
    if depth < 8 {
        for l in &b.layers {
            if let Some(m) = mount_of(Path::new(l), mounts)
                && m != entry
            {
                out.extend(block_devices(m, mounts, depth + 1));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The mount at `/` that is on top (the last one listed there).
pub fn root_mount(mounts: &[MountEntry]) -> Option<&MountEntry> {
    mounts.iter().rev().find(|m| m.mount_point == "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BTRFS_ROOT: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 0:32 /@ / rw,relatime shared:1 - btrfs /dev/vda2 rw,ssd,space_cache=v2,subvolid=256,subvol=/@
28 27 0:32 /@home /home rw,relatime shared:2 - btrfs /dev/vda2 rw,subvolid=257,subvol=/@home
29 27 254:1 / /boot/efi rw,relatime - vfat /dev/vda1 rw
30 27 0:40 / /media/my\\040stick rw - btrfs /dev/sdb rw
";

    const OVERLAY_ROOT: &str = "\
20 1 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/run/ro\\:root:/run/base\\054x,upperdir=/run/rw/upper,workdir=/run/rw/work
21 20 8:3 / /run/rw rw - ext4 /dev/sda3 rw
";

    #[test]
    fn btrfs_root_is_found_by_its_source_not_its_anonymous_device() {
        let m = parse(BTRFS_ROOT);
        assert_eq!(m.len(), 5);
        let root = root_mount(&m).unwrap();
        assert_eq!(root.devno, "0:32");
        assert_eq!(root.fstype, "btrfs");
        let b = backing(root);
        assert_eq!(b.devno, None, "0:N is no disk");
        assert_eq!(b.source_path.as_deref(), Some("/dev/vda2"));
        assert!(b.layers.is_empty());
        // A real maj:min is kept; escapes are decoded.
        assert_eq!(backing(&m[3]).devno, Some(libc::makedev(254, 1)));
        assert_eq!(m[4].mount_point, "/media/my stick");
        assert_eq!(backing(&m[0]).source_path, None, "proc is not a path");
    }

    #[test]
    fn overlay_root_names_its_layers() {
        let m = parse(OVERLAY_ROOT);
        let root = root_mount(&m).unwrap();
        let b = backing(root);
        assert_eq!(b.devno, None);
        assert_eq!(b.source_path, None);
        assert_eq!(b.layers, ["/run/ro:root", "/run/base,x", "/run/rw/upper"]);
    }

    #[test]
    fn optional_fields_and_garbage() {
        let m = parse("1 2 8:1 / /x rw shared:5 master:3 - ext4 /dev/sda1 rw\nnonsense\n\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].source, "/dev/sda1");
        assert_eq!(m[0].super_opts, "rw");
    }

    #[test]
    fn this_machines_root_resolves_to_a_block_device() {
        let m = current();
        let Some(root) = root_mount(&m) else {
            tek_testkit::skip!("no mountinfo here");
            return;
        };
        let devs = block_devices(root, &m, 0);
        let st = fs::metadata("/").unwrap().dev();
        if libc::major(st) != 0 {
            assert!(devs.contains(&st), "{devs:?}");
        }
    }
}
