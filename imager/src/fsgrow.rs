//! Growing the grown partition's *filesystem*, after the GPT fix-ups and before the first MiB:
//! the GPT entry alone leaves the filesystem at the image's size, so client data larger than the
//! image's free space would fail with ENOSPC on a disk that has room.
//!
//! Each filesystem is grown and checked by its own tools, on a loop device over the partition's
//! range of the claimed disk (these kernels have no partition nodes, and before the first MiB is
//! written there is no partition table for the kernel to read anyway):
//! - ext4: `e2fsck -fn` (must be clean), `resize2fs -f` (the `-f` because the check just made
//!   was read-only and records no check time), `e2fsck -fn` again;
//! - NTFS: `ntfsresize --info` (must be consistent; it refuses a dirty or hibernated volume),
//!   `ntfsresize`, then checked with `ntfsresize --info --force` and `ntfsfix -n`. ntfsresize
//!   sets the dirty bit to schedule chkdsk; the bit was clear before (the first check refuses
//!   a dirty volume), so once both checks passed tek clears the bit *it* caused (`ntfsfix -d`)
//!   and runs `ntfsresize --info` once more, which must now pass without `--force`; the bit is
//!   read back, and [`FsGrowth::first_boot`] says Windows will not run chkdsk, and why;
//! - xfs, btrfs: grown mounted (`xfs_growfs`, `btrfs filesystem resize max`) on a private
//!   mount, checked unmounted (`xfs_repair -n`, `btrfs check --readonly`).
//!
//! Any other content (vfat, BitLocker, unknown) keeps its size and the report says why. A check
//! that fails fails the write (the partition table is then reset like any failed write).
//! Old size, new size and each check's verdict and last output lines go into the report.

use std::path::Path;
use std::process::{Command, Stdio};

use blockdev::{FsKind, LoopDevice, LoopOptions};
use serde::Serialize;

use crate::error::ImagerError;

/// What happened to the grown partition's filesystem.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FsGrowth {
    /// Partition number.
    pub partition: u32,
    /// Filesystem found (`ext4`, `ntfs`, ...; `None`: not one tek knows).
    pub filesystem: Option<String>,
    /// Filesystem size before, in bytes.
    pub old_bytes: Option<u64>,
    /// Filesystem size after, in bytes.
    pub new_bytes: Option<u64>,
    /// True when the filesystem was grown.
    pub grown: bool,
    /// Why it was not grown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The checks after growing, in order (each must have passed for the write to succeed).
    pub checks: Vec<FsCheck>,
    /// What the volume's own system does about the growth at its first boot, when growing
    /// could change that (NTFS: whether Windows runs chkdsk), and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_boot: Option<String>,
}

/// One run of a filesystem's own checker.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FsCheck {
    /// The command line.
    pub command: String,
    /// True when it reported no problem (exit status 0).
    pub clean: bool,
    /// Its last output lines.
    pub output: String,
}

fn err(path: &Path, reason: impl Into<String>) -> ImagerError {
    ImagerError::Filesystem {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Runs a tool; `input` goes to its stdin. The check keeps the last output lines; `.1` is all
/// of it, for parsing.
fn run_full(
    path: &Path,
    args: &[&str],
    dev: &Path,
    input: Option<&str>,
) -> Result<(FsCheck, String), ImagerError> {
    use std::io::Write;
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .arg(dev)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| err(path, format!("running {} (is it installed?): {e}", args[0])))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(path, format!("waiting for {}: {e}", args[0])))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(12)..].join("\n");
    let check = FsCheck {
        command: format!("{} {}", args.join(" "), dev.display()),
        clean: out.status.success(),
        output: tail,
    };
    Ok((check, text))
}

fn run(
    path: &Path,
    args: &[&str],
    dev: &Path,
    input: Option<&str>,
) -> Result<FsCheck, ImagerError> {
    run_full(path, args, dev, input).map(|r| r.0)
}

/// Fails unless `c` is clean.
fn must(path: &Path, c: FsCheck, what: &str) -> Result<FsCheck, ImagerError> {
    if c.clean {
        Ok(c)
    } else {
        Err(err(
            path,
            format!("{what}: `{}` found problems:\n{}", c.command, c.output),
        ))
    }
}

/// A number after `key` in a tool's output (`Block count:  12345`).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn ext4_bytes(path: &Path, dev: &Path) -> Result<Option<u64>, ImagerError> {
    let (_, text) = run_full(path, &["dumpe2fs", "-h"], dev, None)?;
    Ok(number_after(&text, "Block count:")
        .zip(number_after(&text, "Block size:"))
        .map(|(n, b)| n * b))
}

/// Grows the filesystem in `[offset, offset + len)` of the disk at `disk` to fill it.
pub fn grow(disk: &Path, partition: u32, offset: u64, len: u64) -> Result<FsGrowth, ImagerError> {
    if !blockdev::loopdev::can_attach() {
        // An unprivileged `tek write` onto a file: no loop device, so no tool can reach it.
        return Ok(FsGrowth {
            partition,
            note: Some("not grown: reaching the partition needs a loop device (root)".into()),
            ..Default::default()
        });
    }
    let lo = LoopDevice::attach_with(
        disk,
        &LoopOptions {
            offset,
            size_limit: len,
            ..Default::default()
        },
    )
    .map_err(|e| err(disk, format!("attaching partition {partition}: {e}")))?;
    let dev = lo.path().to_path_buf();
    let kind = blockdev::fstype::probe(&dev)
        .map_err(|e| err(disk, format!("reading partition {partition}: {e}")))?;
    let mut g = FsGrowth {
        partition,
        filesystem: kind.map(|k| k.name().to_string()),
        ..Default::default()
    };
    let r = match kind {
        Some(FsKind::Ext4) => grow_ext4(disk, &dev, &mut g),
        Some(FsKind::Ntfs) => grow_ntfs(disk, &dev, &mut g),
        Some(k @ (FsKind::Xfs | FsKind::Btrfs)) => grow_mounted(disk, &dev, k, &mut g),
        Some(FsKind::BitLocker) => {
            g.note = Some(
                "a BitLocker volume cannot be grown without unlocking it; the partition grew, \
                 the volume kept its size (Windows can extend it after unlocking)"
                    .into(),
            );
            Ok(())
        }
        Some(FsKind::Vfat) => {
            g.note =
                Some("FAT is not grown; the partition grew, the filesystem kept its size".into());
            Ok(())
        }
        None => {
            g.note = Some(
                "no filesystem tek knows; the partition grew, its content is unchanged".into(),
            );
            Ok(())
        }
    };
    let detached = lo.detach();
    r?;
    detached.map_err(|e| err(disk, format!("detaching partition {partition}: {e}")))?;
    Ok(g)
}

fn grow_ext4(disk: &Path, dev: &Path, g: &mut FsGrowth) -> Result<(), ImagerError> {
    must(
        disk,
        run(disk, &["e2fsck", "-fn"], dev, None)?,
        "checking ext4 before growing it",
    )?;
    g.old_bytes = ext4_bytes(disk, dev)?;
    must(
        disk,
        run(disk, &["resize2fs", "-f"], dev, None)?,
        "growing ext4",
    )?;
    g.grown = true;
    g.new_bytes = ext4_bytes(disk, dev)?;
    g.checks.push(must(
        disk,
        run(disk, &["e2fsck", "-fn"], dev, None)?,
        "checking grown ext4",
    )?);
    Ok(())
}

fn grow_ntfs(disk: &Path, dev: &Path, g: &mut FsGrowth) -> Result<(), ImagerError> {
    // The image itself may hold a hibernated Windows (captured without a full shutdown): say so
    // plainly rather than through ntfsresize's refusal. ntfs-3g.probe changes nothing.
    let probe = run(disk, &["ntfs-3g.probe", "--readwrite"], dev, None)?;
    if !probe.clean {
        let why = if probe.output.contains("hibernat") {
            "Windows is hibernated on it (or used Fast Startup)".to_string()
        } else {
            format!("`{}`: {}", probe.command, probe.output)
        };
        return Err(err(
            disk,
            format!(
                "the image's NTFS volume (partition {}) cannot be grown: {why}; recapture the \
                 image after a full shutdown (powercfg /h off)",
                g.partition
            ),
        ));
    }
    let (before, text) = run_full(disk, &["ntfsresize", "--info", "-P"], dev, None)?;
    must(disk, before, "checking NTFS before growing it")?;
    g.old_bytes = number_after(&text, "Current volume size:");
    let was_dirty = volume_dirty(disk, dev)?;
    if was_dirty {
        return Err(err(
            disk,
            "the image's NTFS volume is dirty; it is not grown or fixed here",
        ));
    }
    // It asks for confirmation; without --force it refuses a dirty or hibernated volume.
    must(
        disk,
        run(disk, &["ntfsresize", "-P"], dev, Some("y\n"))?,
        "growing NTFS",
    )?;
    g.grown = true;
    let (forced, text) = run_full(disk, &["ntfsresize", "--info", "--force", "-P"], dev, None)?;
    g.checks.push(must(disk, forced, "checking grown NTFS")?);
    g.new_bytes = number_after(&text, "Current volume size:");
    g.checks.push(must(
        disk,
        run(disk, &["ntfsfix", "-n"], dev, None)?,
        "checking grown NTFS",
    )?);
    // ntfsresize always marks the volume dirty, which schedules chkdsk at Windows' first boot
    // (its man page: "intentional"), as a guard against its own mistakes. tek clears the mark it
    // caused because that guard has been run here instead: the volume was clean before (not
    // dirty, not hibernated, `ntfsresize --info` consistent), and after the resize `ntfsresize
    // --info --force` walked the whole MFT and bitmap and `ntfsfix -n` (the dry run of what
    // `ntfsfix -d` does: $MFT/$MFTMirr, the backup boot sector, the journal) found nothing to
    // fix, so `ntfsfix -d` changes the flag and nothing else. The report says so.
    let marked = volume_dirty(disk, dev)?;
    if marked {
        must(
            disk,
            run(disk, &["ntfsfix", "-d"], dev, None)?,
            "clearing the dirty bit ntfsresize set",
        )?;
    }
    g.checks.push(must(
        disk,
        run(disk, &["ntfsresize", "--info", "-P"], dev, None)?,
        "checking grown NTFS",
    )?);
    if volume_dirty(disk, dev)? {
        return Err(err(disk, "the grown NTFS volume is still marked dirty"));
    }
    g.first_boot = Some(ntfs_first_boot(marked));
    Ok(())
}

/// The report's sentence on chkdsk at Windows' first boot, once the volume is not dirty (read
/// back by tek after the last check); `cleared`: tek cleared the mark ntfsresize set.
fn ntfs_first_boot(cleared: bool) -> String {
    if cleared {
        "Windows will not run chkdsk for the resize: ntfsresize marked the volume dirty to \
         schedule it; tek cleared that mark (ntfsfix -d) after the grown volume passed \
         `ntfsresize --info --force` and `ntfsfix -n`, and the unmarked volume passed \
         `ntfsresize --info`"
            .into()
    } else {
        "Windows will not run chkdsk for the resize: the grown volume is not marked dirty".into()
    }
}

fn volume_dirty(disk: &Path, dev: &Path) -> Result<bool, ImagerError> {
    let mut f = std::fs::File::open(dev)
        .map_err(|e| err(disk, format!("opening {}: {e}", dev.display())))?;
    blockdev::ntfs::volume_info(&mut f, 0)
        .map(|v| v.dirty())
        .map_err(|e| err(disk, e.to_string()))
}

/// Size from the superblock: xfs (big-endian blocksize at 4, data blocks at 8) or btrfs
/// (total_bytes at 64 KiB + 0x70).
fn superblock_bytes(dev: &Path, kind: FsKind) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev).ok()?;
    let mut b = [0u8; 16];
    match kind {
        FsKind::Xfs => {
            f.read_exact_at(&mut b, 0).ok()?;
            let bs = u64::from(u32::from_be_bytes(b[4..8].try_into().ok()?));
            Some(bs * u64::from_be_bytes(b[8..16].try_into().ok()?))
        }
        FsKind::Btrfs => {
            f.read_exact_at(&mut b[..8], 0x10070).ok()?;
            Some(u64::from_le_bytes(b[..8].try_into().ok()?))
        }
        _ => None,
    }
}

fn grow_mounted(
    disk: &Path,
    dev: &Path,
    kind: FsKind,
    g: &mut FsGrowth,
) -> Result<(), ImagerError> {
    use nix::mount::{MntFlags, MsFlags};
    g.old_bytes = superblock_bytes(dev, kind);
    let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("tek-grow-XXXXXX"))
        .map_err(|e| err(disk, format!("creating a mount point: {e}")))?;
    nix::mount::mount(
        Some(dev),
        &dir,
        Some(kind.name()),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = std::fs::remove_dir(&dir);
        err(disk, format!("mounting {kind} to grow it: {e}"))
    })?;
    let mnt = dir.as_path();
    let r = match kind {
        FsKind::Xfs => run(disk, &["xfs_growfs"], mnt, None),
        _ => run(disk, &["btrfs", "filesystem", "resize", "max"], mnt, None),
    };
    let unmounted = nix::mount::umount2(mnt, MntFlags::empty());
    if unmounted.is_ok() {
        let _ = std::fs::remove_dir(mnt);
    }
    let c = r?;
    unmounted.map_err(|e| err(disk, format!("unmounting {kind} after growing it: {e}")))?;
    must(disk, c, "growing the filesystem")?;
    g.grown = true;
    g.new_bytes = superblock_bytes(dev, kind);
    let check: &[&str] = match kind {
        FsKind::Xfs => &["xfs_repair", "-n"],
        _ => &["btrfs", "check", "--readonly"],
    };
    g.checks.push(must(
        disk,
        run(disk, check, dev, None)?,
        "checking the grown filesystem",
    )?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_tool_output() {
        let t = "Block count:              24576\nBlock size:               4096\n";
        assert_eq!(number_after(t, "Block count:"), Some(24576));
        assert_eq!(number_after(t, "Block size:"), Some(4096));
        let n = "Current volume size: 67105280 bytes (68 MB)";
        assert_eq!(number_after(n, "Current volume size:"), Some(67_105_280));
        assert_eq!(number_after(n, "Inode count:"), None);
    }
}
