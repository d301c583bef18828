//! Loop devices, attached and always detached again.
//!
//! Used in production to reach a partition when the kernel has no partition node for it (these
//! bench machines' kernels have no EFI partition-table support, so `losetup -P` creates no
//! `loopNp1`): a loop device over the whole disk with an offset and a size limit. Tests and the
//! demo use it to make real block devices out of sparse files. The device is detached in `Drop`,
//! so also on error and on panic.
//!
//! We drive `losetup` rather than the LOOP_CTL ioctls: it handles the LOOP_CONFIGURE /
//! LOOP_SET_FD fallbacks and races on `/dev/loop-control` the same way on every kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Options for [`LoopDevice::attach_with`].
#[derive(Debug, Clone, Default)]
pub struct LoopOptions {
    /// Byte offset into the backing file.
    pub offset: u64,
    /// Size limit in bytes (0 = to the end of the file).
    pub size_limit: u64,
    /// Attach read-only.
    pub read_only: bool,
    /// Logical sector size (512 when `None`).
    pub sector_size: Option<u32>,
    /// Use direct I/O on the backing file (`--direct-io=on`), like a real disk bypassing the
    /// page cache of the file it sits on.
    pub direct_io: bool,
}

/// An attached loop device; detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    detached: bool,
}

/// Errors attaching or detaching.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// `losetup` could not be run.
    #[error("running losetup for {backing}: {source}")]
    Spawn {
        /// The backing file.
        backing: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `losetup` failed.
    #[error("losetup for {backing} failed: {stderr}")]
    Failed {
        /// The backing file or device.
        backing: PathBuf,
        /// What losetup said.
        stderr: String,
    },
}

impl LoopDevice {
    /// Attaches `backing` as a new loop device, whole and read-write.
    pub fn attach(backing: &Path) -> Result<Self, LoopError> {
        Self::attach_with(backing, &LoopOptions::default())
    }

    /// Attaches `backing` with the given options.
    pub fn attach_with(backing: &Path, opts: &LoopOptions) -> Result<Self, LoopError> {
        let mut cmd = Command::new("losetup");
        cmd.arg("--find").arg("--show");
        if opts.offset > 0 {
            cmd.arg("--offset").arg(opts.offset.to_string());
        }
        if opts.size_limit > 0 {
            cmd.arg("--sizelimit").arg(opts.size_limit.to_string());
        }
        if opts.read_only {
            cmd.arg("--read-only");
        }
        if let Some(ss) = opts.sector_size {
            cmd.arg("--sector-size").arg(ss.to_string());
        }
        if opts.direct_io {
            cmd.arg("--direct-io=on");
        }
        cmd.arg(backing);
        let out = cmd.output().map_err(|source| LoopError::Spawn {
            backing: backing.to_path_buf(),
            source,
        })?;
        if !out.status.success() {
            return Err(LoopError::Failed {
                backing: backing.to_path_buf(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice {
            path,
            detached: false,
        })
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel name, e.g. `loop3`.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Detaches now and reports failure (Drop detaches silently).
    pub fn detach(mut self) -> Result<(), LoopError> {
        self.detached = true;
        detach_path(&self.path)
    }

    /// Gives up ownership without detaching (the device stays attached).
    pub fn leak(mut self) -> PathBuf {
        self.detached = true;
        self.path.clone()
    }
}

/// Detaches a loop device by path.
pub fn detach_path(path: &Path) -> Result<(), LoopError> {
    let out = Command::new("losetup")
        .arg("--detach")
        .arg(path)
        .output()
        .map_err(|source| LoopError::Spawn {
            backing: path.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LoopError::Failed {
            backing: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.detached {
            // A just-closed file descriptor can keep the device busy for a moment (udev-less
            // machines have no prober, but our own flock holders may still be closing); retry.
            for _ in 0..20 {
                if detach_path(&self.path).is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            eprintln!("warning: could not detach {}", self.path.display());
        }
    }
}

/// True when this process can attach loop devices (root and `losetup` present). Tests that need
/// a loop device call this and say why they skip when it is false; CI runs as root.
pub fn can_attach() -> bool {
    nix::unistd::geteuid().is_root() && Path::new("/dev/loop-control").exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn attach_and_detach_on_drop() {
        if !can_attach() {
            tek_testkit::skip!("needs root and /dev/loop-control");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(f);
        let path;
        {
            let dev = LoopDevice::attach(&file).unwrap();
            path = dev.path().to_path_buf();
            let data = std::fs::read(&path).unwrap();
            assert_eq!(data.len(), 1 << 20);
            assert!(data.iter().all(|&b| b == 7));
        }
        let sys = format!(
            "/sys/block/{}/loop/backing_file",
            path.file_name().unwrap().to_string_lossy()
        );
        // The kernel tears the loop down asynchronously after LOOP_CLR_FD; give it a moment.
        let mut attached = true;
        for _ in 0..50 {
            attached = std::fs::read_to_string(&sys)
                .map(|b| b.trim() == file.to_string_lossy())
                .unwrap_or(false);
            if !attached {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!attached, "{} still attached", path.display());
    }

    #[test]
    fn offset_and_size_limit() {
        if !can_attach() {
            tek_testkit::skip!("needs root and /dev/loop-control");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let mut data = vec![0u8; 1 << 20];
        data[4096..8192].fill(9);
        std::fs::write(&file, &data).unwrap();
        let dev = LoopDevice::attach_with(
            &file,
            &LoopOptions {
                offset: 4096,
                size_limit: 4096,
                ..Default::default()
            },
        )
        .unwrap();
        let got = std::fs::read(dev.path()).unwrap();
        assert_eq!(got, vec![9u8; 4096]);
        dev.detach().unwrap();
    }
}
