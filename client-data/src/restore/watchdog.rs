//! The restore's watchdog: a thread that notices when the target's filesystem stops answering
//! (a stopped or hung `ntfs-3g`, a FUSE daemon waiting on a dead USB disk) and says so, then
//! gives up on it so the blocked system call returns and the restore fails with a reason
//! instead of waiting forever.
//!
//! The writer and the read-back threads tick a shared [`Progress`] after every write, file and
//! read. No tick for `warn_after` (30 s by default): a warning naming the driver and the file.
//! None for `give_up_after` (120 s): on FUSE, the `ntfs-3g` tek started is killed (its
//! connection closes, every request in flight fails with ENOTCONN), or, for a FUSE mount tek
//! did not make, its connection is aborted through `/sys/fs/fuse/connections/<id>/abort`
//! (mounting `fusectl` there first if needed). A kernel filesystem cannot be aborted; the
//! warning repeats.
//!
//! A killed or aborted FUSE daemon leaves a dead mount behind (every access: ENOTCONN), still
//! listed in `/proc/self/mountinfo`. The mounts of the target's filesystem are found there by
//! its device number (read when the target was opened: `fstat` may hang by now). When tek
//! started the daemon, they are tek's and detached (`MNT_DETACH`: nothing can be flushed any
//! more, and a plain unmount may wait on the dead connection); the mount's teardown then only
//! waits for the daemon's exit. A mount tek did not make is left alone, and the message names
//! its mount point as dead and to be unmounted.
//!
//! The watchdog runs from the first look at the target (its identity, the journal's proofs,
//! the conflict check's `fstatat` of every path) to the last read-back.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ntfs_mount::FuseDriver;
use crate::target::RestoreTarget;

/// What the restore is doing, ticked as it goes.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    ticks: AtomicU64,
    doing: Mutex<String>,
}

impl Progress {
    /// Something was done.
    pub(crate) fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Now doing `what` (e.g. "writing Docs/a.txt").
    pub(crate) fn doing(&self, what: impl FnOnce(&mut String)) {
        self.tick();
        if let Ok(mut s) = self.doing.lock() {
            s.clear();
            what(&mut s);
        }
    }

    fn now_doing(&self) -> String {
        self.doing.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Who serves the target, and how to give up on it.
#[derive(Debug, Clone)]
enum Driver {
    /// An `ntfs-3g` tek started, and the target's device number.
    Ours(FuseDriver, u64),
    /// Another FUSE daemon: the target's device number (its connection id is the kernel's
    /// encoding of it).
    Fuse(u64),
    /// A kernel filesystem.
    Kernel,
}

/// The running watchdog; stops on drop.
pub(crate) struct Watchdog {
    stop: Arc<AtomicBool>,
    gave_up: Arc<Mutex<Option<crate::DataError>>>,
    /// Set when the watchdog begins to give up (before it kills or aborts anything).
    giving_up: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches `progress` of a restore into `target`.
    pub(super) fn start(
        target: &RestoreTarget,
        driver: Option<FuseDriver>,
        progress: Arc<Progress>,
        warn_after: Duration,
        give_up_after: Duration,
    ) -> Watchdog {
        // Both as found when the target was opened: nothing here may ask the driver.
        let fuse_dev = target.dev().filter(|_| target.is_fuse());
        Watchdog::start_on(
            fuse_dev,
            target.label(),
            driver,
            progress,
            warn_after,
            give_up_after,
        )
    }

    /// Watches `progress` of work on the filesystem at `label`: `fuse_dev`, its device number
    /// when FUSE serves it (`None`: a kernel filesystem).
    pub(crate) fn start_on(
        fuse_dev: Option<u64>,
        label: &Path,
        driver: Option<FuseDriver>,
        progress: Arc<Progress>,
        warn_after: Duration,
        give_up_after: Duration,
    ) -> Watchdog {
        let driver = match (driver, fuse_dev) {
            (Some(d), Some(dev)) => Driver::Ours(d, dev),
            (_, Some(dev)) => Driver::Fuse(dev),
            _ => Driver::Kernel,
        };
        let label = label.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let gave_up = Arc::new(Mutex::new(None));
        let giving_up = Arc::new(AtomicBool::new(false));
        let (s, g, gu) = (stop.clone(), gave_up.clone(), giving_up.clone());
        let thread = std::thread::Builder::new()
            .name("tek-watchdog".into())
            .spawn(move || {
                watch(
                    &driver,
                    &label,
                    &progress,
                    Flags {
                        stop: &s,
                        giving_up: &gu,
                        gave_up: &g,
                    },
                    warn_after,
                    give_up_after,
                )
            })
            .ok();
        Watchdog {
            stop,
            gave_up,
            giving_up,
            thread,
        }
    }

    /// True once the watchdog began giving up on the driver.
    pub(crate) fn stalled(&self) -> bool {
        self.giving_up.load(Ordering::SeqCst)
    }

    /// Stops the watchdog; the error to report instead of whatever the aborted call returned,
    /// once given up. Waits for a give-up under way (kill, detach) to finish: the call it
    /// aborted may return before the watchdog has recorded why.
    pub(crate) fn finish(mut self) -> Option<crate::DataError> {
        self.stop_thread();
        self.gave_up.lock().ok()?.take()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The kernel's FUSE connection id of device `dev` (as `/sys/fs/fuse/connections` names it).
fn conn_of(dev: u64) -> u64 {
    (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev))
}

/// Where the filesystem of device `dev` is mounted, as `/proc/self/mountinfo` lists it.
fn mount_points(dev: u64) -> Vec<String> {
    let devno = blockdev::mountinfo::devno_str(dev);
    blockdev::mountinfo::current()
        .into_iter()
        .filter(|m| m.devno == devno)
        .map(|m| m.mount_point)
        .collect()
}

/// Detaches the dead mounts of our killed daemon: what was done, for the message.
fn detach(f: &FuseDriver, dev: u64) -> String {
    // Detached before the daemon is gone, a mount would still send it requests nobody
    // answers; killed, it dies at once (SIGKILL ends a stopped process too).
    if !f.wait_dead(Duration::from_secs(10)) {
        return format!(
            "; it did not end within 10 s, so its mount stays: it is dead and must be \
             unmounted ({})",
            unmount_hint(&mount_points(dev))
        );
    }
    let points = mount_points(dev);
    if points.is_empty() {
        return String::new();
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for p in &points {
        match nix::mount::umount2(Path::new(p), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => done.push(p.as_str()),
            Err(e) => failed.push(format!("{p} ({e})")),
        }
    }
    if failed.is_empty() {
        f.mark_detached();
    }
    let mut out = String::new();
    if !done.is_empty() {
        out = format!("; detached its dead mount {}", done.join(", "));
    }
    if !failed.is_empty() {
        out.push_str(&format!(
            "; detaching its dead mount failed: {}; it must be unmounted",
            failed.join(", ")
        ));
    }
    out
}

/// "umount -l /mnt/x" for each mount point, or how to find them.
fn unmount_hint(points: &[String]) -> String {
    if points.is_empty() {
        return "its mount point is not in /proc/self/mountinfo".into();
    }
    points
        .iter()
        .map(|p| format!("umount -l {p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(d: &Driver, label: &Path) -> String {
    match d {
        Driver::Ours(f, _) => format!("{} (pid {})", f.name(), f.pid()),
        Driver::Fuse(dev) => format!(
            "the FUSE daemon serving {} (connection {})",
            label.display(),
            conn_of(*dev)
        ),
        Driver::Kernel => format!("the filesystem of {}", label.display()),
    }
}

/// Gives up on the driver: what was done, or why nothing could be.
fn give_up(d: &Driver) -> Result<String, String> {
    match d {
        Driver::Ours(f, dev) => f
            .kill()
            .map(|()| {
                format!(
                    "killed it, which fails every request it had not answered{}",
                    detach(f, *dev)
                )
            })
            .map_err(|e| format!("killing it failed: {e}")),
        Driver::Fuse(dev) => {
            let dir = Path::new("/sys/fs/fuse/connections");
            let abort = dir.join(conn_of(*dev).to_string()).join("abort");
            if !abort.exists() {
                // fusectl is not always mounted (systemd mounts it; this machine may not).
                let _ = nix::mount::mount(
                    Some("fusectl"),
                    dir,
                    Some("fusectl"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                );
            }
            std::fs::write(&abort, b"1")
                .map(|()| {
                    // Not tek's mount: left for whoever made it, named.
                    format!(
                        "aborted its FUSE connection ({}); tek did not make this mount, so it \
                         stays: it is dead now and must be unmounted ({})",
                        abort.display(),
                        unmount_hint(&mount_points(*dev))
                    )
                })
                .map_err(|e| {
                    format!(
                        "aborting its FUSE connection through {}: {e}",
                        abort.display()
                    )
                })
        }
        Driver::Kernel => Err("a kernel filesystem cannot be aborted".into()),
    }
}

/// The watchdog's shared state, as its thread sees it.
struct Flags<'a> {
    stop: &'a AtomicBool,
    giving_up: &'a AtomicBool,
    gave_up: &'a Mutex<Option<crate::DataError>>,
}

fn watch(
    d: &Driver,
    label: &Path,
    p: &Progress,
    flags: Flags<'_>,
    warn_after: Duration,
    give_up_after: Duration,
) {
    let Flags {
        stop,
        giving_up,
        gave_up,
    } = flags;
    let poll = (warn_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let (mut last, mut since) = (p.ticks.load(Ordering::Relaxed), Instant::now());
    let mut warned = Duration::ZERO;
    let mut done = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(poll);
        let t = p.ticks.load(Ordering::Relaxed);
        if t != last {
            (last, since, warned) = (t, Instant::now(), Duration::ZERO);
            continue;
        }
        let idle = since.elapsed();
        if idle >= warn_after && idle >= warned + warn_after {
            warned = idle;
            tracing::warn!(
                "{} has not answered for {} s while {}",
                describe(d, label),
                idle.as_secs(),
                p.now_doing()
            );
        }
        if idle >= give_up_after && !done {
            done = true;
            let fuse = !matches!(d, Driver::Kernel);
            giving_up.store(fuse, Ordering::SeqCst);
            let driver = describe(d, label);
            let doing = p.now_doing();
            let action = match give_up(d) {
                Ok(action) => {
                    tracing::error!("{driver} did not answer for {} s: {action}", idle.as_secs());
                    action
                }
                Err(why) => {
                    tracing::error!(
                        "{driver} did not answer for {} s while {doing}; {why}",
                        idle.as_secs()
                    );
                    why
                }
            };
            // Recorded for FUSE even when the give-up failed: a call that returns after this
            // point failed because of the stall (a kernel filesystem's call just waits).
            if fuse && let Ok(mut g) = gave_up.lock() {
                *g = Some(crate::DataError::Stalled {
                    driver,
                    secs: idle.as_secs(),
                    doing,
                    action,
                });
            }
        }
    }
}
