//! Mounting the data partition of a freshly imaged disk, found by its GPT partition name.
//!
//! The partition is reached through [`blockdev::partition`]: the kernel's partition node
//! (`/dev/sdb2`, `/dev/nvme0n1p2`) when there is one, else a loop device over the whole disk
//! with the partition's byte offset and size limit. The mount point is a fresh private (0700)
//! directory. Drop unmounts, detaches the loop device and removes the directory, also on error
//! and on panic.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use blockdev::SysRoot;
use blockdev::partition::PartitionDevice;

use crate::error::DataError;
use crate::loopdev::LoopDevice;

/// A mounted partition; unmounted (and its loop device detached) on drop.
#[derive(Debug)]
pub struct PartitionMount {
    dir: PathBuf,
    mounted: bool,
    loopdev: Option<LoopDevice>,
    source: PathBuf,
}

fn merr(action: &'static str, device: &Path, reason: impl ToString) -> DataError {
    DataError::Mount {
        action,
        device: device.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Byte range and number of a named GPT partition.
pub use blockdev::partition::PartitionSpan as PartitionRange;

/// Finds the partition named `name` in the GPT of `device` (tries 512 then 4096-byte sectors).
pub fn find_partition(device: &Path, name: &str) -> Result<PartitionRange, DataError> {
    let mut last_err = String::new();
    for lb in [
        gpt::disk::LogicalBlockSize::Lb512,
        gpt::disk::LogicalBlockSize::Lb4096,
    ] {
        let disk = match gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb)
            .open(device)
        {
            Ok(d) => d,
            Err(e) => {
                last_err = e.to_string();
                continue;
            }
        };
        let mut names = Vec::new();
        for (&number, p) in disk.partitions() {
            if p.name == name {
                let offset = p
                    .bytes_start(lb)
                    .map_err(|e| merr("reading partition table of", device, e))?;
                let size = p
                    .bytes_len(lb)
                    .map_err(|e| merr("reading partition table of", device, e))?;
                return Ok(PartitionRange {
                    number,
                    offset,
                    size,
                });
            }
            names.push(p.name.clone());
        }
        return Err(merr(
            "finding partition in",
            device,
            format!("no GPT partition named {name:?} (found {names:?})"),
        ));
    }
    Err(merr("reading GPT of", device, last_err))
}

/// Guesses the filesystem type from its superblock magic (mount(2) needs a type).
pub fn detect_fstype(dev: &Path) -> Option<&'static str> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(dev).ok()?;
    let mut b = vec![0u8; 68 * 1024];
    let mut got = 0;
    while got < b.len() {
        match f.read(&mut b[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    b.truncate(got);
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xEF]) {
        return Some("ext4");
    }
    if at(0, b"XFSB") {
        return Some("xfs");
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some("btrfs");
    }
    if at(0x52, b"FAT32") || at(0x36, b"FAT") {
        return Some("vfat");
    }
    let _ = f.seek(SeekFrom::Start(0));
    None
}

impl PartitionMount {
    /// Finds the partition by GPT name on `device` (block device or image file) and mounts it on a
    /// fresh private directory; `fstype` auto-detected when `None`.
    pub fn mount(
        device: &Path,
        partition_name: &str,
        fstype: Option<&str>,
    ) -> Result<PartitionMount, DataError> {
        let range = find_partition(device, partition_name)?;
        let (source, loopdev) =
            PartitionDevice::open(&SysRoot::system(), device, range)?.into_parts();
        Self::mount_source(source, loopdev, fstype)
    }

    /// Mounts a device node (a whole filesystem) directly.
    pub fn mount_device(dev: &Path, fstype: Option<&str>) -> Result<PartitionMount, DataError> {
        Self::mount_source(dev.to_path_buf(), None, fstype)
    }

    fn mount_source(
        source: PathBuf,
        loopdev: Option<LoopDevice>,
        fstype: Option<&str>,
    ) -> Result<PartitionMount, DataError> {
        let fstype = match fstype {
            Some(t) => t.to_string(),
            None => detect_fstype(&source)
                .ok_or_else(|| merr("detecting filesystem on", &source, "unknown superblock"))?
                .to_string(),
        };
        let base = std::env::temp_dir().join("tek-mnt-XXXXXX");
        let dir = nix::unistd::mkdtemp(&base)
            .map_err(|e| merr("creating mount point for", &source, e))?;
        // The guard exists from here on, so any failure below detaches and removes the dir.
        let mut m = PartitionMount {
            dir,
            mounted: false,
            loopdev,
            source,
        };
        nix::mount::mount(
            Some(&m.source),
            &m.dir,
            Some(fstype.as_str()),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| merr("mounting", &m.source, format!("{fstype}: {e}")))?;
        m.mounted = true;
        Ok(m)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The device node mounted (partition node or loop device).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Unmounts, detaches and removes the mount point, reporting failures.
    pub fn unmount(mut self) -> Result<(), DataError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), DataError> {
        if self.mounted {
            let mut last = None;
            // A just-closed file can keep the filesystem busy for a moment.
            for _ in 0..50 {
                match nix::mount::umount2(&self.dir, MntFlags::empty()) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if let Some(e) = last {
                return Err(merr("unmounting", &self.dir, e));
            }
            self.mounted = false;
        }
        if let Some(lo) = self.loopdev.take() {
            lo.detach()?;
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

impl Drop for PartitionMount {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("warning: {e}");
        }
    }
}
