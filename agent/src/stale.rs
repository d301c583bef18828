//! Cleaning up after a crashed agent: a `kill -9` or power loss during a migration leaves the
//! data partition mounted on a `tek-mnt-*` directory, through a loop device over the claimed
//! disk when the kernel has no partition node. Both hold the disk (the imager's eligibility
//! check then refuses it as busy), so before a job resumes on its disk the agent releases
//! exactly those holders: mounts on `tek-mnt-*` directories whose source is the disk, one of
//! its partitions, or a loop device backed by the disk; and then those loop devices. Nothing
//! else is touched.

use std::path::{Path, PathBuf};

/// Prefix of the private mount directories made by `client_data::PartitionMount`.
const MOUNT_PREFIX: &str = "tek-mnt-";

/// Loop devices whose backing file is `dev`.
fn loops_backed_by(dev: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let backing = e.path().join("loop/backing_file");
        if let Ok(b) = std::fs::read_to_string(&backing)
            && Path::new(b.trim_end()) == dev
        {
            out.push(PathBuf::from("/dev").join(&name));
        }
    }
    out
}

/// `(source, mount point)` of every mount, from /proc/self/mountinfo.
fn mounts() -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mp = left.split(' ').nth(4)?;
            let src = right.split(' ').nth(1)?;
            Some((src.to_string(), PathBuf::from(unescape(mp))))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\134", "\\")
}

/// Releases holders of `dev` left behind by a crashed agent (see the module docs). Best
/// effort: failures are logged, and the eligibility check reports what still holds the disk.
pub fn release(dev: &Path) {
    let loops = loops_backed_by(dev);
    let dev_s = dev.display().to_string();
    for (src, mp) in mounts() {
        let ours = mp
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(MOUNT_PREFIX));
        let on_disk = src.starts_with(&dev_s) || loops.iter().any(|l| Path::new(&src) == l);
        if !(ours && on_disk) {
            continue;
        }
        tracing::warn!(source = %src, mount = %mp.display(), "unmounting a stale data-partition mount");
        if let Err(e) = nix::mount::umount(&mp) {
            tracing::warn!("unmounting {}: {e}; detaching lazily", mp.display());
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&mp);
    }
    for l in loops {
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
        assert!(loops_backed_by(Path::new("/dev/tek-no-such-device")).is_empty());
        release(Path::new("/dev/tek-no-such-device"));
    }
}
