//! Eligibility against real mounts on loop devices (root; skips with a reason otherwise):
//! filesystems that report an anonymous `0:N` device in mountinfo (btrfs, overlay) must still
//! make their disk ineligible.

use std::path::Path;
use std::process::Command;

use client_data::loopdev::{LoopDevice, can_attach};
use imager::{Refusal, check_target};

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.success(), s)
        }
        Err(e) => (false, e.to_string()),
    }
}

/// A mount point, unmounted (lazily, so a failed test never leaves it) on drop.
struct Mounted(tempfile::TempDir);

impl Mounted {
    fn new(args: &[&str]) -> Mounted {
        let d = tempfile::tempdir().unwrap();
        let mut a = args.to_vec();
        a.push(d.path().to_str().unwrap());
        let (ok, out) = run("mount", &a);
        assert!(ok, "mount {a:?}: {out}");
        Mounted(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        run("umount", &["-l", self.0.path().to_str().unwrap()]);
    }
}

/// A 128 MiB loop device with a fresh btrfs, or `None` (and why) when this machine cannot.
fn btrfs_loop(dir: &Path) -> Option<LoopDevice> {
    if !can_attach() {
        tek_testkit::skip!("needs root and /dev/loop-control");
        return None;
    }
    if !run("mkfs.btrfs", &["--version"]).0 {
        tek_testkit::skip!("no mkfs.btrfs (btrfs-progs)");
        return None;
    }
    let f = dir.join("btrfs.img");
    std::fs::File::create(&f)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let dev = LoopDevice::attach(&f).unwrap();
    let (ok, out) = run("mkfs.btrfs", &["-q", "-f", dev.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    Some(dev)
}

#[test]
fn a_mounted_btrfs_disk_is_refused_although_mountinfo_shows_0_n() {
    let dir = tempfile::tempdir().unwrap();
    let Some(dev) = btrfs_loop(dir.path()) else {
        return;
    };
    let mnt = Mounted::new(&[dev.path().to_str().unwrap()]);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(mnt.path().to_str().unwrap()))
        .unwrap();
    assert!(line.split(' ').nth(2).unwrap().starts_with("0:"), "{line}");
    let r = check_target(dev.path(), 1, None).unwrap_err();
    assert!(
        matches!(&r, Refusal::Mounted { mountpoint, .. } if Path::new(mountpoint) == mnt.path()),
        "{r}"
    );
    drop(mnt);
    check_target(dev.path(), 1, None).expect("eligible once unmounted");
}

/// An overlay whose upper layer lives on the btrfs: the overlay mount (0:N, source "overlay")
/// resolves through its layers to the loop device, the way a btrfs or overlay root does.
#[test]
fn an_overlay_on_a_btrfs_disk_resolves_to_that_disk() {
    let dir = tempfile::tempdir().unwrap();
    let Some(dev) = btrfs_loop(dir.path()) else {
        return;
    };
    let base = Mounted::new(&[dev.path().to_str().unwrap()]);
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir(base.path().join(d)).unwrap();
    }
    let p = |d: &str| base.path().join(d).display().to_string();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("lower"),
        p("upper"),
        p("work")
    );
    let ov = Mounted::new(&["-t", "overlay", "overlay", "-o", &opts]);
    let mounts = blockdev::mountinfo::current();
    let entry = mounts
        .iter()
        .find(|m| Path::new(&m.mount_point) == ov.path())
        .expect("the overlay is listed");
    assert_eq!(entry.fstype, "overlay");
    let want = std::fs::metadata(dev.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let devs = blockdev::mountinfo::block_devices(entry, &mounts, 0);
    assert!(devs.contains(&want.rdev()), "{devs:?}");
    drop(ov);
    drop(base);
}
