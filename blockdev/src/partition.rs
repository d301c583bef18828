//! Reaching one partition of a disk as a block device: the kernel's partition node when it made
//! one, else a loop device over the whole disk with the partition's byte offset and size limit.
//!
//! On real hardware the kernel reads the partition table and makes `/dev/sdb2`,
//! `/dev/nvme0n1p2`. These bench machines' kernels have no EFI partition-table support, and
//! image files have no nodes at all, so there the loop device stands in (see [`crate::loopdev`]).
//! A node is used only when sysfs says it is that disk's partition `number`: a stray file named
//! like one is never taken for it.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::loopdev::{LoopDevice, LoopError, LoopOptions};
use crate::sysfs::SysRoot;

/// Where a partition lies on its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpan {
    /// 1-based partition number.
    pub number: u32,
    /// Byte offset from the start of the disk.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// One partition as a block device; a loop device made for it is detached on drop.
#[derive(Debug)]
pub struct PartitionDevice {
    path: PathBuf,
    loopdev: Option<LoopDevice>,
}

impl PartitionDevice {
    /// Partition `span` of `disk` (a block device or an image file): the kernel's node when
    /// sysfs under `sys` lists it, else a new loop device over `disk` limited to the span.
    pub fn open(sys: &SysRoot, disk: &Path, span: PartitionSpan) -> Result<Self, LoopError> {
        if let Some(node) = partition_node(sys, disk, span.number) {
            return Ok(PartitionDevice {
                path: node,
                loopdev: None,
            });
        }
        let lo = LoopDevice::attach_with(
            disk,
            &LoopOptions {
                offset: span.offset,
                size_limit: span.size,
                ..Default::default()
            },
        )?;
        Ok(PartitionDevice {
            path: lo.path().to_path_buf(),
            loopdev: Some(lo),
        })
    }

    /// The device node to open or mount.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node, and the loop device made for it (the caller detaches it; dropping detaches).
    pub fn into_parts(self) -> (PathBuf, Option<LoopDevice>) {
        (self.path, self.loopdev)
    }
}

/// The name the kernel gives partition `number` of disk node `disk`: `sda` -> `sda2`;
/// `nvme0n1`, `loop0`, `mmcblk0` (ending in a digit) -> `...p2`.
pub fn partition_node_name(disk: &Path, number: u32) -> PathBuf {
    let dev = disk.to_string_lossy();
    let sep = if dev.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    PathBuf::from(format!("{dev}{sep}{number}"))
}

/// The kernel's node for partition `number` of the block device `disk`, if the kernel made one:
/// `disk` is a block device, sysfs under `sys` lists the partition under the disk, and the node
/// exists.
pub fn partition_node(sys: &SysRoot, disk: &Path, number: u32) -> Option<PathBuf> {
    let meta = std::fs::metadata(disk).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let node = partition_node_name(disk, number);
    let part_name = node.file_name()?;
    let disk_name = disk.file_name()?;
    let listed = sys
        .path()
        .join("class/block")
        .join(disk_name)
        .join(part_name)
        .join("partition")
        .exists();
    (listed && node.exists()).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_the_kernel() {
        assert_eq!(
            partition_node_name(Path::new("/dev/sda"), 2),
            Path::new("/dev/sda2")
        );
        assert_eq!(
            partition_node_name(Path::new("/dev/nvme0n1"), 2),
            Path::new("/dev/nvme0n1p2")
        );
        assert_eq!(
            partition_node_name(Path::new("/dev/loop7"), 1),
            Path::new("/dev/loop7p1")
        );
    }

    #[test]
    fn an_image_file_has_no_partition_node() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(partition_node(&SysRoot::at(sys.path()), f.path(), 1), None);
    }

    #[test]
    fn a_node_sysfs_does_not_list_is_not_taken() {
        // /dev/null is a character device: never a disk.
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(
            partition_node(&SysRoot::at(sys.path()), Path::new("/dev/null"), 1),
            None
        );
    }

    /// Without a partition node, the partition is a loop device over its span: its size is the
    /// span's, and its first bytes are the ones at the span's offset.
    #[test]
    fn without_a_node_a_loop_device_covers_exactly_the_span() {
        if !nix::unistd::geteuid().is_root() || !crate::loopdev::can_attach() {
            eprintln!("SKIP without_a_node_a_loop_device_covers_exactly_the_span: needs root");
            return;
        }
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"partition two starts here").unwrap();
        f.flush().unwrap();
        let sys = tempfile::tempdir().unwrap();
        let span = PartitionSpan {
            number: 2,
            offset: 1 << 20,
            size: 2 << 20,
        };
        let part = PartitionDevice::open(&SysRoot::at(sys.path()), f.path(), span).unwrap();
        let mut dev = std::fs::File::open(part.path()).unwrap();
        let mut head = [0u8; 25];
        dev.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"partition two starts here");
        assert_eq!(dev.seek(SeekFrom::End(0)).unwrap(), 2 << 20);
        drop(dev);
        let (path, lo) = part.into_parts();
        lo.expect("a loop device was made").detach().unwrap();
        assert!(
            !Path::new(&format!(
                "/sys/class/block/{}/loop",
                path.file_name().unwrap().to_string_lossy()
            ))
            .exists(),
            "the loop device is still attached"
        );
    }
}
