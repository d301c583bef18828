//! Helpers shared by the client-data integration tests: a temporary depot, a sample tree with
//! awkward names and modes, and a byte-exact tree comparison.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use client_data::{Custody, CustodyPaths, DataError, Destination};
pub use tek_testkit::tar::{file_entry, header, tar_of};

pub struct Depot {
    pub dir: tempfile::TempDir,
    pub custody: Custody,
}

pub fn paths(root: &Path) -> CustodyPaths {
    CustodyPaths::under(root)
}

pub fn depot() -> Depot {
    let dir = tempfile::tempdir().unwrap();
    let custody = Custody::open(paths(dir.path())).unwrap();
    Depot { dir, custody }
}

pub fn dest() -> Destination {
    Destination {
        job: Some("job-1".into()),
        device: client_data::DeviceIdentity::new(
            Some("SER1"),
            None,
            Some("Test Disk"),
            Some(1 << 30),
            Some("test"),
        ),
    }
}

/// A small tree with a non-UTF-8 name, a symlink, odd modes and a fixed mtime.
pub fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("Docs/sub")).unwrap();
    fs::write(root.join("Docs/a.txt"), b"hello").unwrap();
    let odd = root.join(std::ffi::OsStr::from_bytes(b"Docs/caf\xe9 \xff.bin"));
    fs::write(&odd, vec![0xAB; 200_000]).unwrap();
    fs::set_permissions(&odd, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(root.join("Docs/sub/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("Docs/sub/link")).unwrap();
    fs::set_permissions(root.join("Docs/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    Command::new("touch")
        .args(["-h", "-d", "2020-01-02 03:04:05"])
        .arg(root.join("Docs/a.txt"))
        .status()
        .unwrap();
    Command::new("touch")
        .args(["-d", "2021-05-06 07:08:09"])
        .arg(root.join("Docs/sub"))
        .status()
        .unwrap();
}

/// The two trees hold the same names and contents (`diff -r`, symlinks compared as links).
pub fn assert_same_files(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "lost+found"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// As [`assert_same_files`], and the fixture's modes survived in `b`.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same_files(a, b);
    let odd = std::ffi::OsStr::from_bytes(b"Docs/caf\xe9 \xff.bin");
    assert_eq!(fs::metadata(b.join(odd)).unwrap().mode() & 0o777, 0o640);
    assert_eq!(
        fs::metadata(b.join("Docs/sub")).unwrap().mode() & 0o777,
        0o750
    );
    assert_eq!(
        fs::metadata(a.join("Docs/a.txt")).unwrap().mtime(),
        fs::metadata(b.join("Docs/a.txt")).unwrap().mtime()
    );
    assert_eq!(
        fs::metadata(a.join("Docs/sub")).unwrap().mtime(),
        fs::metadata(b.join("Docs/sub")).unwrap().mtime()
    );
    assert_eq!(
        fs::read_link(b.join("Docs/sub/link")).unwrap(),
        Path::new("../a.txt")
    );
}

// ---- tar archives: tek_testkit::tar builds them byte by byte ----

pub fn ingest_bytes(
    d: &Depot,
    name: &str,
    bytes: &[u8],
) -> Result<client_data::DatasetInfo, DataError> {
    let p = d.dir.path().join(name);
    fs::write(&p, bytes).unwrap();
    d.custody.ingest("C-1", "T-1", &p)
}

/// Builds a 48 MiB GPT image with an ext4 "data" partition at 1 MiB, without partition nodes.
pub fn gpt_image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.img");
    fs::File::create(&img).unwrap().set_len(48 << 20).unwrap();
    let ok = Command::new("sgdisk")
        .args([
            "-n",
            "1:2048:+8M",
            "-c",
            "1:EFI",
            "-n",
            "2:0:0",
            "-c",
            "2:data",
        ])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let info = String::from_utf8(
        Command::new("sgdisk")
            .arg("-i")
            .arg("2")
            .arg(&img)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let first: u64 = info
        .lines()
        .find(|l| l.starts_with("First sector"))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let last: u64 = info
        .lines()
        .find(|l| l.starts_with("Last sector"))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let blocks = (last - first + 1) * 512 / 4096;
    let ok = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            &format!("offset={}", first * 512),
        ])
        .arg(&img)
        .arg(blocks.to_string())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    img
}

// ---- real filesystems for metadata tests ----

/// True when this process may make loop devices and mount (root, `/dev/fuse`, ntfs-3g).
pub fn can_mount_ntfs() -> bool {
    nix::unistd::geteuid().is_root()
        && Path::new("/dev/fuse").exists()
        && Command::new("ntfs-3g").arg("--version").output().is_ok()
}

/// An NTFS volume in a sparse file (`mkntfs`), mounted with ntfs-3g (`streams_interface=xattr`,
/// the default, so alternate data streams are `user.*` xattrs); unmounted on drop.
pub struct NtfsVolume {
    pub image: PathBuf,
    pub mnt: PathBuf,
    mounted: bool,
    options: &'static str,
}

impl NtfsVolume {
    pub fn new(dir: &Path, name: &str, size: u64) -> NtfsVolume {
        NtfsVolume::with_options(dir, name, size, "streams_interface=xattr")
    }

    /// As [`NtfsVolume::new`], mounted with ntfs-3g `-o options`.
    pub fn with_options(dir: &Path, name: &str, size: u64, options: &'static str) -> NtfsVolume {
        let image = dir.join(format!("{name}.ntfs"));
        fs::File::create(&image).unwrap().set_len(size).unwrap();
        let out = Command::new("mkntfs")
            .args(["-F", "-q", "-f", "-L", name])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mkntfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mnt = dir.join(format!("{name}.mnt"));
        fs::create_dir(&mnt).unwrap();
        let mut v = NtfsVolume {
            image,
            mnt,
            mounted: false,
            options,
        };
        v.mount();
        v
    }

    pub fn mount(&mut self) {
        assert!(!self.mounted);
        let out = Command::new("ntfs-3g")
            .arg("-o")
            .arg(self.options)
            .arg(&self.image)
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ntfs-3g: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = true;
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .unwrap()
                .success();
            assert!(ok, "umount {}", self.mnt.display());
            self.mounted = false;
        }
    }

    /// Unmounts and mounts again: what is read afterwards comes from the volume, not a cache.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }
}

impl Drop for NtfsVolume {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
    }
}

/// An ext4 filesystem in a sparse file on a loop device, mounted; all undone on drop.
pub struct Ext4Volume {
    pub mount: Option<client_data::PartitionMount>,
    pub lo: Option<client_data::loopdev::LoopDevice>,
}

impl Ext4Volume {
    pub fn new(dir: &Path, name: &str, size: u64) -> Ext4Volume {
        let img = dir.join(format!("{name}.ext4"));
        fs::File::create(&img).unwrap().set_len(size).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-I", "256"])
            .arg(&img)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.ext4");
        let lo = client_data::loopdev::LoopDevice::attach(&img).unwrap();
        let m = client_data::PartitionMount::mount_device(lo.path(), None).unwrap();
        Ext4Volume {
            mount: Some(m),
            lo: Some(lo),
        }
    }

    pub fn path(&self) -> &Path {
        self.mount.as_ref().unwrap().path()
    }
}

impl Drop for Ext4Volume {
    fn drop(&mut self) {
        drop(self.mount.take());
        drop(self.lo.take());
    }
}
