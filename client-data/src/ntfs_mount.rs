//! NTFS data partitions: the checks a Windows volume must pass before tek writes into it, and
//! the mount itself, with the kernel's `ntfs3` where the kernel has it, else `ntfs-3g` (FUSE).
//!
//! Checks, in order, none of which changes the volume:
//! 1. the `$Volume` dirty bit, read by tek itself (`blockdev::ntfs`): set -> [`MountRefusal::Dirty`];
//! 2. `ntfs-3g.probe --readwrite`, which reads `hiberfil.sys` and the `$LogFile` the way the
//!    driver does: exit 14 -> [`MountRefusal::Hibernated`], 15 -> [`MountRefusal::Unclean`].
//!    ntfs-3g would otherwise mount a hibernated volume read-only, and by default *replays and
//!    clears* an unclean journal (`recover`); the mount passes `norecover` as a second guard;
//! 3. after the mount, the mount must be read-write (`statvfs`), else [`MountRefusal::ReadOnly`].
//!
//! Mounted `noatime` with either driver (see [`NTFS_3G_OPTIONS`]).
//!
//! `ntfs-3g` runs in the foreground (`no_detach`) as our child: after umount(2) we wait for it
//! to exit, because on a FUSE mount of a regular file (not `fuseblk`) the kernel does not wait
//! for the daemon to flush, and detaching the loop device under it would lose its last writes.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::DataError;
use crate::mount::MountRefusal;

/// `ntfs-3g.probe` / `ntfs-3g` exit code for a hibernated volume (`NTFS_VOLUME_HIBERNATED`).
const EXIT_HIBERNATED: i32 = 14;
/// Exit code for an unclean journal (`NTFS_VOLUME_UNCLEAN_UNMOUNT`).
const EXIT_UNCLEAN: i32 = 15;
/// How long a mount or the daemon's exit after an unmount may take.
const DAEMON_WAIT: Duration = Duration::from_secs(60);

/// The running `ntfs-3g` of one mount.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    driver: FuseDriver,
}

/// The FUSE daemon tek started for a mount, as a restore's watchdog sees it: named in its
/// messages, and killed when it stops answering (see `restore::watchdog`).
#[derive(Debug, Clone)]
pub struct FuseDriver {
    name: &'static str,
    pid: u32,
    killed: Arc<AtomicBool>,
    /// Set once its dead mount was detached (by the watchdog), so the teardown does not try
    /// to unmount it again.
    detached: Arc<AtomicBool>,
}

impl FuseDriver {
    /// "ntfs-3g".
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills it (SIGKILL also ends a stopped process). Safe by pid: it is our child and not
    /// yet waited for, so the pid cannot have been reused.
    pub fn kill(&self) -> std::io::Result<()> {
        self.killed.store(true, Ordering::SeqCst);
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(Into::into)
    }

    /// True once [`FuseDriver::kill`] was called.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Waits up to `limit` for the killed daemon to be gone (a zombie: its `/dev/fuse`
    /// descriptor is closed, so the kernel has failed every request it had not answered).
    /// Not reaped here: the [`Daemon`] waits for it. True when it is gone.
    pub fn wait_dead(&self, limit: Duration) -> bool {
        let stat = format!("/proc/{}/stat", self.pid);
        let started = Instant::now();
        loop {
            // The state follows the command name in parentheses: "812 (ntfs-3g) Z ...".
            let state = std::fs::read_to_string(&stat).ok().and_then(|t| {
                let rest = &t[t.rfind(')')? + 1..];
                rest.split_whitespace().next().map(str::to_string)
            });
            match state.as_deref() {
                None | Some("Z" | "X") => return true,
                _ if started.elapsed() >= limit => return false,
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Records that its mount was detached after it was killed.
    pub(crate) fn mark_detached(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    /// True once its dead mount was detached.
    pub fn was_detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }
}

fn merr(action: &'static str, device: &Path, reason: impl ToString) -> DataError {
    DataError::Mount {
        action,
        device: device.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Refuses a volume that must not be mounted read-write (see the module doc); changes nothing.
pub fn check_writable(source: &Path) -> Result<(), MountRefusal> {
    let mut f = std::fs::File::open(source)
        .map_err(|e| MountRefusal::Unchecked(format!("opening {}: {e}", source.display())))?;
    let vol = blockdev::ntfs::volume_info(&mut f, 0)
        .map_err(|e| MountRefusal::Unchecked(e.to_string()))?;
    if vol.dirty() {
        return Err(MountRefusal::Dirty);
    }
    let out = Command::new("ntfs-3g.probe")
        .arg("--readwrite")
        .arg(source)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            MountRefusal::Unchecked(format!(
                "running ntfs-3g.probe (package ntfs-3g), which checks for hibernation: {e}"
            ))
        })?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(EXIT_HIBERNATED) => Err(MountRefusal::Hibernated),
        Some(EXIT_UNCLEAN) => Err(MountRefusal::Unclean),
        code => Err(MountRefusal::Unchecked(format!(
            "ntfs-3g.probe --readwrite exited with {}: {}",
            code.map_or("a signal".to_string(), |c| format!("code {c}")),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// The options tek mounts an NTFS with through `ntfs-3g` (besides `no_detach`), which
/// `bench/ntfs.sh` gives its `cp -a` baseline too:
/// - `norecover`: never replay an unclean journal (see the module doc);
/// - `windows_names`: refuse names Windows cannot open (the restore maps them first);
/// - `noatime`: the read-back must not change the access times just restored (ntfs-3g
///   ignores `O_NOATIME`; mounted `relatime`, its default, every read moves them and the
///   read-back has to set them again, one FUSE round trip more per file);
/// - `big_writes`: writes reach the daemon in up to 128 KiB requests instead of 4 KiB ones
///   (ntfs-3g 2022.10.3 honours it on volumes of 4 GiB and more);
/// - `nosuid,nodev,noexec`: the volume came from a client's disk.
pub const NTFS_3G_OPTIONS: &str = "norecover,windows_names,noatime,big_writes,nosuid,nodev,noexec";

/// True if the running kernel has the `ntfs3` driver (Debian's kernels do; these test machines'
/// do not).
fn kernel_has_ntfs3() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().last() == Some("ntfs3"))
    })
}

/// Mounts the NTFS at `source` on `dir`: `Some(daemon)` when `ntfs-3g` serves it.
pub fn mount(source: &Path, dir: &Path) -> Result<Option<Daemon>, DataError> {
    use nix::mount::MsFlags;
    if kernel_has_ntfs3() {
        // ntfs3 refuses a dirty volume itself unless `force`, which is never passed.
        nix::mount::mount(
            Some(source),
            dir,
            Some("ntfs3"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .map_err(|e| merr("mounting", source, format!("ntfs3: {e}")))?;
        return Ok(None);
    }
    let mut child = Command::new("ntfs-3g")
        .arg("-o")
        .arg(format!("no_detach,{NTFS_3G_OPTIONS}"))
        .arg(source)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| merr("mounting", source, format!("running ntfs-3g: {e}")))?;
    let mut pipe = child.stderr.take().expect("piped");
    // Drained all along, so a chatty daemon never blocks on a full pipe.
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let driver = FuseDriver {
        name: "ntfs-3g",
        pid: child.id(),
        killed: Arc::new(AtomicBool::new(false)),
        detached: Arc::new(AtomicBool::new(false)),
    };
    let mut d = Daemon {
        child,
        stderr: Some(stderr),
        driver,
    };
    let started = Instant::now();
    loop {
        if let Some(status) = d
            .child
            .try_wait()
            .map_err(|e| merr("mounting", source, e))?
        {
            let text = d.take_stderr();
            return Err(match status.code() {
                Some(EXIT_HIBERNATED) => DataError::MountRefused {
                    device: source.to_path_buf(),
                    reason: MountRefusal::Hibernated,
                },
                Some(EXIT_UNCLEAN) => DataError::MountRefused {
                    device: source.to_path_buf(),
                    reason: MountRefusal::Unclean,
                },
                _ => merr(
                    "mounting",
                    source,
                    format!("ntfs-3g: {status}: {}", text.trim()),
                ),
            });
        }
        if is_mount_point(dir) {
            return Ok(Some(d));
        }
        if started.elapsed() > DAEMON_WAIT {
            let _ = d.child.kill();
            let _ = d.child.wait();
            return Err(merr(
                "mounting",
                source,
                "ntfs-3g did not mount within 60 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True once `dir` is on another filesystem than its parent.
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Ok(b)) = (std::fs::metadata(dir), std::fs::metadata(dir.join(".."))) else {
        return false;
    };
    a.dev() != b.dev()
}

/// The mount must be read-write: a driver that silently falls back to read-only would let a
/// restore fail half-way, or, worse, a check pass on a volume it cannot change.
pub fn check_mounted_rw(dir: &Path) -> Result<(), MountRefusal> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| MountRefusal::Unchecked(format!("statvfs {}: {e}", dir.display())))?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(MountRefusal::ReadOnly);
    }
    Ok(())
}

impl Daemon {
    /// The daemon as a restore's watchdog sees it.
    pub fn driver(&self) -> FuseDriver {
        self.driver.clone()
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Waits (after the unmount) for the daemon to write its last changes and exit.
    pub fn wait_exit(mut self, source: &Path) -> Result<(), DataError> {
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(_)) if self.driver.was_killed() => {
                    return Err(merr(
                        "unmounting",
                        source,
                        format!(
                            "ntfs-3g (pid {}) was killed by tek after it stopped answering: \
                             what it had not written is not on the volume",
                            self.driver.pid
                        ),
                    ));
                }
                Ok(Some(status)) => {
                    let text = self.take_stderr();
                    return Err(merr(
                        "unmounting",
                        source,
                        format!("ntfs-3g ended with {status}: {}", text.trim()),
                    ));
                }
                Ok(None) if started.elapsed() < DAEMON_WAIT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    return Err(merr(
                        "unmounting",
                        source,
                        format!(
                            "ntfs-3g (pid {}) still runs 60 s after the unmount; not killed, \
                             it may still be writing",
                            self.child.id()
                        ),
                    ));
                }
                Err(e) => return Err(merr("unmounting", source, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_reasons() {
        for r in [
            MountRefusal::BitLocker,
            MountRefusal::Hibernated,
            MountRefusal::Dirty,
            MountRefusal::Unclean,
        ] {
            let t = r.to_string();
            assert!(!t.contains("Hibernated") && t.len() > 20, "{t}");
        }
        let e = check_writable(Path::new("/nonexistent-volume")).unwrap_err();
        assert!(matches!(e, MountRefusal::Unchecked(_)), "{e}");
    }
}
