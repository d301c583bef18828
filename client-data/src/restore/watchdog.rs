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

use std::os::unix::fs::MetadataExt;
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
    /// An `ntfs-3g` tek started.
    Ours(FuseDriver),
    /// Another FUSE daemon: its connection id (the kernel's encoding of `st_dev`).
    Fuse(u64),
    /// A kernel filesystem.
    Kernel,
}

/// The running watchdog; stops on drop.
pub(super) struct Watchdog {
    stop: Arc<AtomicBool>,
    gave_up: Arc<Mutex<Option<crate::DataError>>>,
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
        let fuse_conn = target.dir().metadata().ok().and_then(|m| {
            (target.fs() == crate::TargetFs::Ntfs3g || is_fuse(target.dir())).then(|| {
                let dev = m.dev();
                (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev))
            })
        });
        let driver = match (driver, fuse_conn) {
            (Some(d), Some(_)) => Driver::Ours(d),
            (_, Some(c)) => Driver::Fuse(c),
            _ => Driver::Kernel,
        };
        let label = target.label().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let gave_up = Arc::new(Mutex::new(None));
        let (s, g) = (stop.clone(), gave_up.clone());
        let thread = std::thread::Builder::new()
            .name("tek-watchdog".into())
            .spawn(move || {
                watch(
                    &driver,
                    &label,
                    &progress,
                    &s,
                    &g,
                    warn_after,
                    give_up_after,
                )
            })
            .ok();
        Watchdog {
            stop,
            gave_up,
            thread,
        }
    }

    /// The error to report instead of whatever the aborted call returned, once given up.
    pub(super) fn gave_up(&self) -> Option<crate::DataError> {
        self.gave_up.lock().ok()?.take()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn is_fuse(dir: &std::fs::File) -> bool {
    #[allow(clippy::unnecessary_cast)]
    nix::sys::statfs::fstatfs(dir).is_ok_and(|s| s.filesystem_type().0 as i64 == 0x6573_5546)
}

fn describe(d: &Driver, label: &Path) -> String {
    match d {
        Driver::Ours(f) => format!("{} (pid {})", f.name(), f.pid()),
        Driver::Fuse(c) => format!(
            "the FUSE daemon serving {} (connection {c})",
            label.display()
        ),
        Driver::Kernel => format!("the filesystem of {}", label.display()),
    }
}

/// Gives up on the driver: what was done, or why nothing could be.
fn give_up(d: &Driver) -> Result<String, String> {
    match d {
        Driver::Ours(f) => f
            .kill()
            .map(|()| "killed it, which fails every request it had not answered".into())
            .map_err(|e| format!("killing it failed: {e}")),
        Driver::Fuse(c) => {
            let dir = Path::new("/sys/fs/fuse/connections");
            let abort = dir.join(c.to_string()).join("abort");
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
                .map(|()| format!("aborted its FUSE connection ({})", abort.display()))
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

fn watch(
    d: &Driver,
    label: &Path,
    p: &Progress,
    stop: &AtomicBool,
    gave_up: &Mutex<Option<crate::DataError>>,
    warn_after: Duration,
    give_up_after: Duration,
) {
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
            let driver = describe(d, label);
            let doing = p.now_doing();
            match give_up(d) {
                Ok(action) => {
                    tracing::error!("{driver} did not answer for {} s: {action}", idle.as_secs());
                    if let Ok(mut g) = gave_up.lock() {
                        *g = Some(crate::DataError::Stalled {
                            driver,
                            secs: idle.as_secs(),
                            doing,
                            action,
                        });
                    }
                }
                Err(why) => tracing::error!(
                    "{driver} did not answer for {} s while {doing}; {why}",
                    idle.as_secs()
                ),
            }
        }
    }
}
