//! Mounting the data partition of a freshly imaged disk, found by its GPT partition name.
//!
//! The partition is reached through [`blockdev::partition`]: the kernel's partition node
//! (`/dev/sdb2`, `/dev/nvme0n1p2`) when there is one, else a loop device over the whole disk
//! with the partition's byte offset and size limit. The mount point is a fresh private (0700)
//! directory. Drop unmounts, detaches the loop device and removes the directory, also on error
//! and on panic.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use blockdev::partition::{PartitionDevice, PartitionSpan};
use blockdev::selector::{PartitionFacts, PartitionSelector};
use blockdev::{FsKind, SysRoot};

use crate::error::DataError;
use crate::loopdev::LoopDevice;

/// A mounted partition; unmounted (and its loop device detached) on drop.
#[derive(Debug)]
pub struct PartitionMount {
    dir: PathBuf,
    mounted: bool,
    loopdev: Option<LoopDevice>,
    source: PathBuf,
    /// The `ntfs-3g` FUSE daemon serving this mount (kept in the foreground), waited for after
    /// the unmount so its last writes are on the disk before the loop device goes.
    daemon: Option<crate::ntfs_mount::Daemon>,
    /// The mount's device number when a FUSE daemon of ours serves it (read once it came up:
    /// the watchdog must not ask a driver that may hang).
    fuse_dev: Option<u64>,
}

fn merr(action: &'static str, device: &Path, reason: impl ToString) -> DataError {
    DataError::Mount {
        action,
        device: device.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Byte range and number of the selected GPT partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    /// 1-based partition number.
    pub number: u32,
    /// Byte offset from the start of the disk.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// Why a partition is not mounted read-write. Each is a refusal, never "fixed": tek does not
/// run `ntfsfix`, `chkdsk`-like repairs or remove a hibernation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRefusal {
    /// A BitLocker volume (`-FVE-FS-`): its files cannot be reached without the recovery key.
    BitLocker,
    /// Windows is hibernated (or used Fast Startup) on this volume: writing to it now would be
    /// lost or corrupt the volume when Windows resumes.
    Hibernated,
    /// The NTFS dirty bit is set (`$Volume` flags): Windows must check it (`chkdsk`) first.
    Dirty,
    /// The NTFS journal (`$LogFile`) holds unfinished transactions: Windows was not shut down
    /// cleanly.
    Unclean,
    /// The driver mounted it read-only.
    ReadOnly,
    /// No filesystem tek knows (ext4, xfs, btrfs, vfat, ntfs).
    UnknownFilesystem,
    /// A check the volume must pass could not be made (tool missing, unreadable structures).
    Unchecked(String),
}

impl std::fmt::Display for MountRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MountRefusal::BitLocker => {
                "it is a BitLocker-encrypted volume (-FVE-FS-); client data cannot be written \
                 into it without the recovery key"
            }
            MountRefusal::Hibernated => {
                "Windows is hibernated on it (or left it with Fast Startup); boot Windows and shut \
                 it down fully (powercfg /h off), it is not changed here"
            }
            MountRefusal::Dirty => {
                "its NTFS dirty flag is set; run chkdsk on it in Windows, it is not fixed here"
            }
            MountRefusal::Unclean => {
                "its NTFS journal holds unfinished changes (Windows was not shut down cleanly); \
                 it is not replayed or cleared here"
            }
            MountRefusal::ReadOnly => "the driver would only mount it read-only",
            MountRefusal::UnknownFilesystem => {
                "no filesystem tek can write (ext4, xfs, btrfs, vfat, ntfs)"
            }
            MountRefusal::Unchecked(why) => return write!(f, "it could not be checked: {why}"),
        })
    }
}

/// Reads the GPT of `device` (512 then 4096-byte sectors): each partition's facts for a
/// selector, and its byte range.
fn partitions(device: &Path) -> Result<Vec<(PartitionFacts, PartitionRange)>, DataError> {
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
        let mut out = Vec::new();
        for (&number, p) in disk.partitions().iter().filter(|(_, p)| p.is_used()) {
            let offset = p
                .bytes_start(lb)
                .map_err(|e| merr("reading partition table of", device, e))?;
            let size = p
                .bytes_len(lb)
                .map_err(|e| merr("reading partition table of", device, e))?;
            let facts = PartitionFacts {
                number,
                name: p.name.clone(),
                type_guid: p.part_type_guid.guid.to_string(),
                label: None,
            };
            out.push((
                facts,
                PartitionRange {
                    number,
                    offset,
                    size,
                },
            ));
        }
        return Ok(out);
    }
    Err(merr("reading GPT of", device, last_err))
}

/// The filesystem label of the partition at `range` of `device`, if it has one.
fn read_label(device: &Path, range: &PartitionRange) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(device).ok()?;
    let mut head = vec![0u8; blockdev::fstype::PROBE_LEN.min(range.size as usize)];
    f.seek(SeekFrom::Start(range.offset)).ok()?;
    f.read_exact(&mut head).ok()?;
    match blockdev::fstype::identify(&head)? {
        FsKind::Ntfs => {
            blockdev::ntfs::volume_info(&mut f, range.offset)
                .ok()?
                .label
        }
        _ => blockdev::fstype::label(&head),
    }
}

/// Finds the partition `selector` means (`number:N`, `name:X`, `label:X`, `type:T`, or a bare
/// GPT name) in the GPT of `device`. A selector matching two partitions is refused
/// ([`DataError::NoPartition`] with [`blockdev::selector::SelectError::Ambiguous`]), never resolved by guess.
pub fn find_partition(device: &Path, selector: &str) -> Result<PartitionRange, DataError> {
    let sel = PartitionSelector::parse(selector).map_err(|source| DataError::NoPartition {
        device: device.to_path_buf(),
        source,
    })?;
    let mut parts = partitions(device)?;
    if sel.needs_labels() {
        for (facts, range) in &mut parts {
            facts.label = read_label(device, range);
        }
    }
    let facts: Vec<PartitionFacts> = parts.iter().map(|(f, _)| f.clone()).collect();
    let hit = sel
        .resolve(&facts)
        .map_err(|source| DataError::NoPartition {
            device: device.to_path_buf(),
            source,
        })?;
    Ok(parts
        .into_iter()
        .find(|(f, _)| f.number == hit.number)
        .map(|(_, r)| r)
        .expect("resolved from this list"))
}

/// Guesses the filesystem type from its superblock magic (mount(2) needs a type); a BitLocker
/// volume is `None` here (nothing to mount), [`blockdev::fstype::probe`] tells it apart.
pub fn detect_fstype(dev: &Path) -> Option<&'static str> {
    match blockdev::fstype::probe(dev).ok()?? {
        FsKind::BitLocker => None,
        k => Some(k.name()),
    }
}

impl PartitionMount {
    /// tek's own checks of an NTFS volume before any mount (dirty bit, hibernation, unclean
    /// journal), as [`PartitionMount::mount_device`] runs them; changes nothing. Public so a
    /// test can tell these refusals from a driver's own (ntfs-3g refuses a hibernated volume
    /// by itself; the kernel's ntfs3 is not relied on to).
    pub fn check_ntfs_writable(source: &Path) -> Result<(), MountRefusal> {
        crate::ntfs_mount::check_writable(source)
    }

    /// Finds the partition `selector` means (see [`find_partition`]) on `device` (block device or
    /// image file) and mounts it read-write on a fresh private directory; `fstype` auto-detected
    /// when `None`. NTFS goes to the kernel's `ntfs3` where it exists, else to `ntfs-3g`; a
    /// BitLocker, hibernated, dirty or unclean volume is refused ([`DataError::MountRefused`]).
    pub fn mount(
        device: &Path,
        selector: &str,
        fstype: Option<&str>,
    ) -> Result<PartitionMount, DataError> {
        let range = find_partition(device, selector)?;
        let span = PartitionSpan {
            number: range.number,
            offset: range.offset,
            size: range.size,
        };
        let (source, loopdev) =
            PartitionDevice::open(&SysRoot::system(), device, span)?.into_parts();
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
        let kind = blockdev::fstype::probe(&source)
            .map_err(|e| merr("reading the superblock of", &source, e))?;
        let refuse = |reason| DataError::MountRefused {
            device: source.clone(),
            reason,
        };
        // Whatever the caller asked for: a BitLocker volume is never a data target.
        if kind == Some(FsKind::BitLocker) {
            return Err(refuse(MountRefusal::BitLocker));
        }
        let fstype = match (fstype, kind) {
            (Some(t), _) => t.to_string(),
            (None, Some(k)) => k.name().to_string(),
            (None, None) => return Err(refuse(MountRefusal::UnknownFilesystem)),
        };
        let ntfs = fstype == "ntfs" || fstype == "ntfs3" || fstype == "ntfs-3g";
        if ntfs {
            crate::ntfs_mount::check_writable(&source).map_err(refuse)?;
        }
        let base = std::env::temp_dir().join("tek-mnt-XXXXXX");
        let dir = nix::unistd::mkdtemp(&base)
            .map_err(|e| merr("creating mount point for", &source, e))?;
        // The guard exists from here on, so any failure below detaches and removes the dir.
        let mut m = PartitionMount {
            dir,
            mounted: false,
            loopdev,
            source,
            daemon: None,
            fuse_dev: None,
        };
        if ntfs {
            m.daemon = crate::ntfs_mount::mount(&m.source, &m.dir)?;
            m.mounted = true;
            if m.daemon.is_some() {
                use std::os::unix::fs::MetadataExt;
                m.fuse_dev = std::fs::metadata(&m.dir).ok().map(|st| st.dev());
            }
            crate::ntfs_mount::check_mounted_rw(&m.dir).map_err(|reason| {
                DataError::MountRefused {
                    device: m.source.clone(),
                    reason,
                }
            })?;
            return Ok(m);
        }
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

    /// The `ntfs-3g` serving this mount, when tek started one (for a restore's watchdog).
    pub fn driver(&self) -> Option<crate::ntfs_mount::FuseDriver> {
        self.daemon.as_ref().map(|d| d.driver())
    }

    /// Runs `op`, a call into this mount made before a restore starts (the agent resolving the
    /// image's data path beneath it), under the restore's watchdog with `opts`' limits: when
    /// the `ntfs-3g` tek started does not answer, it is killed, its dead mount detached, and
    /// the result is [`DataError::Stalled`] instead of a call that never returns.
    pub fn guarded<T>(
        &self,
        opts: &crate::RestoreOptions,
        op: impl FnOnce() -> Result<T, DataError>,
    ) -> Result<T, DataError> {
        let Some(driver) = self.driver() else {
            return op();
        };
        let progress = std::sync::Arc::new(crate::restore::watchdog::Progress::default());
        progress.doing(|s| s.push_str("opening the restore's target folder"));
        let dog = crate::restore::watchdog::Watchdog::start_on(
            self.fuse_dev,
            &self.dir,
            Some(driver),
            progress,
            opts.stall_warning,
            opts.stall_limit,
        );
        match op() {
            Ok(v) if !dog.stalled() => Ok(v),
            Ok(_) => Err(dog.finish().expect("recorded once stalled")),
            Err(e) => Err(dog.finish().unwrap_or(e)),
        }
    }

    fn teardown(&mut self) -> Result<(), DataError> {
        let driver = self.daemon.as_ref().map(|d| d.driver());
        // The restore's watchdog killed the daemon and detached the dead mount already.
        if self.mounted && driver.as_ref().is_some_and(|d| d.was_detached()) {
            self.mounted = false;
        }
        // A killed FUSE daemon leaves a dead mount: detach it at once (a plain unmount of it
        // can wait on requests nobody will answer). EINVAL: it is no mount any more.
        if self.mounted && driver.as_ref().is_some_and(|d| d.was_killed()) {
            match nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => self.mounted = false,
                Err(e) => {
                    return Err(merr(
                        "unmounting (lazily, after its driver was killed)",
                        &self.dir,
                        e,
                    ));
                }
            }
        }
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
        // A killed daemon's end is reported, but the loop device and the mount point go all
        // the same: nothing writes to them any more. Any other failure of the daemon keeps
        // them (it may still be writing).
        let daemon = self.daemon.take().map(|d| d.wait_exit(&self.source));
        let killed = driver.as_ref().is_some_and(|d| d.was_killed());
        let after_kill = match daemon {
            Some(Err(e)) if !killed => return Err(e),
            Some(Err(e)) => Some(e),
            _ => None,
        };
        if let Some(lo) = self.loopdev.take() {
            lo.detach()?;
        }
        let _ = std::fs::remove_dir(&self.dir);
        after_kill.map_or(Ok(()), Err)
    }
}

impl Drop for PartitionMount {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("warning: {e}");
        }
    }
}
