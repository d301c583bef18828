//! The disk watcher: kernel uevents plus sysfs turned into "this disk is here (now like this)" and
//! "this disk is gone".
//!
//! Ordering matters. [`watch`] binds the uevent socket *before* it scans sysfs, so a disk that
//! appears during the scan is either in the scan or announced by a queued event (or both: the
//! [`DiskTable`] diff makes duplicates silent). After an overflow (ENOBUFS) the queued events are
//! dropped and sysfs is scanned again; only differences are emitted.
//!
//! A disk's identity is its kernel name plus the kernel's `diskseq`, which the kernel bumps on
//! every loop attach and media change. So a loop device detached and re-attached (even to the same
//! file, even while we were not looking) is reported `Gone` then `Present`, and the daemon never
//! mistakes a new disk for the one it was writing. Loop devices announce attach and detach as
//! `change` events (detach with `DISK_MEDIA_CHANGE=1`); a size change re-emits `Present`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::sysfs::{self, DiskInfo};
use crate::uevent::{DEFAULT_RCVBUF, Uevent, UeventError, UeventSocket};

/// What the watcher reports.
// Not boxed: events are few (one per plug), and the daemon matches on `Present(info)` directly.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum DiskEvent {
    /// The disk is present, with its current description (first sight, or something changed).
    Present(DiskInfo),
    /// The disk with this kernel name went away (removed, loop detached, media ejected).
    Gone {
        /// Kernel name, e.g. `sdb`.
        name: String,
    },
}

/// Tuning for [`watch_with`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Uevent socket receive buffer in bytes.
    pub rcvbuf: usize,
    /// Capacity of the event channel (a slow consumer makes the socket overflow, then a rescan).
    pub channel_capacity: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            rcvbuf: DEFAULT_RCVBUF,
            channel_capacity: 256,
        }
    }
}

/// Counters of a running watcher.
#[derive(Debug, Clone, Default)]
pub struct WatchStats {
    overflows: Arc<AtomicU64>,
    uevents: Arc<AtomicU64>,
}

impl WatchStats {
    /// How many times the socket overflowed (each followed by a sysfs re-scan).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// How many uevents were received.
    pub fn uevents(&self) -> u64 {
        self.uevents.load(Ordering::Relaxed)
    }
}

/// The disks known so far, and the diffing that turns observations into [`DiskEvent`]s.
#[derive(Debug, Default)]
pub struct DiskTable {
    disks: BTreeMap<String, DiskInfo>,
}

fn same_identity(a: &DiskInfo, b: &DiskInfo) -> bool {
    let (x, y) = (a, b);
    a.diskseq == b.diskseq
        && (x.major, x.minor) == (y.major, y.minor)
        && x.serial == y.serial
        && x.wwn == y.wwn
        && x.model == y.model
        && x.bus == y.bus
        && x.port_path == y.port_path
        && x.loop_backing_file == y.loop_backing_file
}

impl DiskTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The disks currently present.
    pub fn disks(&self) -> impl Iterator<Item = &DiskInfo> {
        self.disks.values()
    }

    /// Records what sysfs says about `name` now and returns the events that tells the consumer:
    /// nothing if unchanged; `Present` if new or changed; `Gone` then `Present` if it is a
    /// different disk under the same name; `Gone` if it is no longer there.
    fn observe(&mut self, name: &str, now: Option<DiskInfo>) -> Vec<DiskEvent> {
        let gone = || DiskEvent::Gone {
            name: name.to_string(),
        };
        match (self.disks.remove(name), now) {
            (None, None) => vec![],
            (Some(_), None) => vec![gone()],
            (None, Some(d)) => {
                let ev = DiskEvent::Present(d.clone());
                self.disks.insert(name.to_string(), d);
                vec![ev]
            }
            (Some(old), Some(d)) => {
                let evs = if !same_identity(&old, &d) {
                    vec![gone(), DiskEvent::Present(d.clone())]
                } else if old != d {
                    vec![DiskEvent::Present(d.clone())]
                } else {
                    vec![]
                };
                self.disks.insert(name.to_string(), d);
                evs
            }
        }
    }

    /// Applies a full scan: `Gone` for disks not in it, `Present` for new or changed ones.
    pub(crate) fn rescan(&mut self, found: Vec<DiskInfo>) -> Vec<DiskEvent> {
        let mut found: BTreeMap<String, DiskInfo> =
            found.into_iter().map(|d| (d.name.clone(), d)).collect();
        let mut names: Vec<String> = self.disks.keys().cloned().collect();
        names.extend(
            found
                .keys()
                .filter(|n| !self.disks.contains_key(*n))
                .cloned(),
        );
        names
            .into_iter()
            .flat_map(|n| {
                let now = found.remove(&n);
                self.observe(&n, now)
            })
            .collect()
    }

    /// Applies one uevent, re-reading the device from sysfs (the event says *that* something
    /// happened; sysfs says what is true now, which also absorbs stale or duplicate events).
    pub fn apply(&mut self, sys_root: &Path, ev: &Uevent) -> io::Result<Vec<DiskEvent>> {
        if ev.subsystem.as_deref() != Some("block") {
            return Ok(vec![]);
        }
        let name = ev.kernel_name().to_string();
        if ev.devtype.as_deref() == Some("partition") {
            // A partition appearing late (or going) changes nothing we report about the disk
            // unless its sysfs view changed too; observe() stays silent otherwise.
            let Some(parent) = Path::new(&ev.devpath)
                .parent()
                .and_then(|p| p.file_name())
                .map(|p| p.to_string_lossy().into_owned())
            else {
                return Ok(vec![]);
            };
            if !self.disks.contains_key(&parent) {
                return Ok(vec![]);
            }
            let now = sysfs::identify(sys_root, &parent)?;
            return Ok(self.observe(&parent, now));
        }
        let mut out = Vec::new();
        match ev.action.as_str() {
            "remove" => return Ok(self.observe(&name, None)),
            "move" => {
                if let Some(old) = ev.env.get("DEVPATH_OLD") {
                    let old = old.rsplit('/').next().unwrap_or("").to_string();
                    if old != name {
                        out.extend(self.observe(&old, None));
                    }
                }
            }
            _ => {}
        }
        // DISK_MEDIA_CHANGE=1 is how a loop detach (and a card swap) is announced: the disk the
        // event talks about (its DISKSEQ) is gone, whatever sysfs shows by now.
        if ev.env.get("DISK_MEDIA_CHANGE").map(String::as_str) == Some("1") {
            let seq = ev.env.get("DISKSEQ").and_then(|s| s.parse::<u64>().ok());
            if let Some(known) = self.disks.get(&name) {
                if seq.is_none() || known.diskseq == seq {
                    out.extend(self.observe(&name, None));
                }
            }
        }
        let now = sysfs::identify(sys_root, &name)?;
        out.extend(self.observe(&name, now));
        Ok(out)
    }
}

/// Spawns the watcher on the current tokio runtime: binds the uevent socket first, then scans
/// sysfs, emits `Present` for every disk found, then `Present`/`Gone` as things change. The
/// watcher stops when the receiver is dropped.
pub fn watch(sys_root: PathBuf) -> io::Result<mpsc::Receiver<DiskEvent>> {
    watch_with(sys_root, &WatchOptions::default()).map(|(rx, _)| rx)
}

/// [`watch`] with options, also returning live counters.
pub fn watch_with(
    sys_root: PathBuf,
    opts: &WatchOptions,
) -> io::Result<(mpsc::Receiver<DiskEvent>, WatchStats)> {
    let sock = UeventSocket::bind_with(opts.rcvbuf)?;
    let mut table = DiskTable::new();
    let initial = table.rescan(sysfs::scan_disks(&sys_root)?);
    let (tx, rx) = mpsc::channel(opts.channel_capacity.max(1));
    let stats = WatchStats::default();
    tokio::spawn(run(sock, sys_root, table, initial, tx, stats.clone()));
    Ok((rx, stats))
}

async fn run(
    mut sock: UeventSocket,
    sys_root: PathBuf,
    mut table: DiskTable,
    initial: Vec<DiskEvent>,
    tx: mpsc::Sender<DiskEvent>,
    stats: WatchStats,
) {
    if !send_all(&tx, initial).await {
        return;
    }
    // Out of file descriptors, nothing in sysfs can be read: say so once, hold disk events back,
    // and re-scan every second (and on every uevent) until a scan works; then the table diff
    // reports whatever changed meanwhile, including the events lost while short.
    let mut short_of_fds = false;
    loop {
        let got = tokio::select! {
            _ = tx.closed() => return,
            got = sock.recv() => Some(got),
            _ = tokio::time::sleep(FD_RETRY), if short_of_fds => None,
        };
        if short_of_fds {
            if let Some(Err(UeventError::Overflow)) = &got {
                stats.overflows.fetch_add(1, Ordering::Relaxed);
                sock.drain();
            } else if let Some(Ok(_)) = &got {
                stats.uevents.fetch_add(1, Ordering::Relaxed);
            }
            match sysfs::scan_disks(&sys_root) {
                Ok(found) => {
                    short_of_fds = false;
                    tracing::info!("reading disks from sysfs again (file descriptors are back)");
                    if !send_all(&tx, table.rescan(found)).await {
                        return;
                    }
                }
                Err(e) if sysfs::is_out_of_descriptors(&e) => {}
                Err(e) => tracing::error!("re-scanning disks: {e}"),
            }
            continue;
        }
        let Some(got) = got else { continue };
        let events = match got {
            Ok(uevent) => {
                stats.uevents.fetch_add(1, Ordering::Relaxed);
                match table.apply(&sys_root, &uevent) {
                    Ok(evs) => evs,
                    Err(e) if sysfs::is_out_of_descriptors(&e) => {
                        short_of_fds = true;
                        tracing::error!("{}", out_of_fds_line(&e));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("identifying {} after a uevent: {e}", uevent.devpath);
                        continue;
                    }
                }
            }
            Err(UeventError::Overflow) => {
                stats.overflows.fetch_add(1, Ordering::Relaxed);
                let dropped = sock.drain();
                tracing::warn!(
                    "uevent overflow, {dropped} queued events dropped; re-scanning sysfs"
                );
                match sysfs::scan_disks(&sys_root) {
                    Ok(found) => table.rescan(found),
                    Err(e) if sysfs::is_out_of_descriptors(&e) => {
                        short_of_fds = true;
                        tracing::error!("{}", out_of_fds_line(&e));
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("re-scanning disks after a uevent overflow: {e}");
                        continue;
                    }
                }
            }
            Err(UeventError::Malformed(why)) => {
                tracing::debug!("ignoring uevent: {why}");
                continue;
            }
            Err(UeventError::Io(e)) => {
                tracing::error!("receiving uevents: {e}");
                // Do not spin on a persistent socket error.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        if !send_all(&tx, events).await {
            return;
        }
    }
}

/// How often a watcher out of file descriptors tries to read sysfs again.
const FD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The one line a watcher logs when it runs out of file descriptors.
fn out_of_fds_line(e: &io::Error) -> String {
    format!(
        "identifying disks: out of file descriptors ({e}); disk events wait until sysfs can be \
         read again (re-scanning every {} s)",
        FD_RETRY.as_secs()
    )
}

/// Sends `events` in order; false when the receiver is gone (the watcher stops).
async fn send_all(tx: &mpsc::Sender<DiskEvent>, events: Vec<DiskEvent>) -> bool {
    for ev in events {
        tracing::debug!("disk event {ev:?}");
        if tx.send(ev).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_path::fake::FakeSys;
    use std::fs;

    fn uevent(action: &str, devpath: &str, extra: &[(&str, &str)]) -> Uevent {
        let mut msg = format!("{action}@{devpath}\0SUBSYSTEM=block\0DEVTYPE=disk\0");
        for (k, v) in extra {
            msg.push_str(&format!("{k}={v}\0"));
        }
        Uevent::parse(msg.as_bytes()).unwrap()
    }

    fn names(evs: &[DiskEvent]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                DiskEvent::Present(d) => format!("+{}", d.name),
                DiskEvent::Gone { name } => format!("-{name}"),
            })
            .collect()
    }

    const LOOP5: &str = "/devices/virtual/block/loop5";

    #[test]
    fn loop_attach_change_and_detach() {
        let sys = FakeSys::new();
        let root = sys.root();
        let dir = sys.loop_disk(5, None, 0);
        let mut t = DiskTable::new();
        assert!(t.rescan(sysfs::scan_disks(&root).unwrap()).is_empty());
        // Attach: backing file and size appear, then a change event.
        sys.attr(&dir, "loop/backing_file", "/srv/a.img\n");
        sys.attr(&dir, "size", "2048\n");
        sys.attr(&dir, "diskseq", "7\n");
        let evs = t
            .apply(&root, &uevent("change", LOOP5, &[("DISKSEQ", "7")]))
            .unwrap();
        assert_eq!(names(&evs), ["+loop5"]);
        // The kernel sends two change events per attach: the second is silent.
        assert!(
            t.apply(&root, &uevent("change", LOOP5, &[]))
                .unwrap()
                .is_empty()
        );
        // Resize re-emits Present with the new size.
        sys.attr(&dir, "size", "4096\n");
        let evs = t.apply(&root, &uevent("change", LOOP5, &[])).unwrap();
        match &evs[..] {
            [DiskEvent::Present(d)] => assert_eq!(d.size_bytes, 4096 * 512),
            other => panic!("{other:?}"),
        }
        // Detach.
        fs::remove_dir_all(dir.join("loop")).unwrap();
        sys.attr(&dir, "size", "0\n");
        let detach = uevent(
            "change",
            LOOP5,
            &[("DISK_MEDIA_CHANGE", "1"), ("DISKSEQ", "7")],
        );
        assert_eq!(names(&t.apply(&root, &detach).unwrap()), ["-loop5"]);
        assert_eq!(t.disks().count(), 0);
    }

    #[test]
    fn detach_and_reattach_to_the_same_file_is_a_new_disk() {
        let sys = FakeSys::new();
        let root = sys.root();
        let dir = sys.loop_disk(5, Some("/srv/a.img"), 2048);
        sys.attr(&dir, "diskseq", "7\n");
        let mut t = DiskTable::new();
        assert_eq!(
            names(&t.rescan(sysfs::scan_disks(&root).unwrap())),
            ["+loop5"]
        );
        // Detached and re-attached before we read sysfs: only diskseq tells.
        sys.attr(&dir, "diskseq", "9\n");
        let detach = uevent(
            "change",
            LOOP5,
            &[("DISK_MEDIA_CHANGE", "1"), ("DISKSEQ", "7")],
        );
        assert_eq!(
            names(&t.apply(&root, &detach).unwrap()),
            ["-loop5", "+loop5"]
        );
        // The stale attach event that follows changes nothing.
        assert!(
            t.apply(&root, &uevent("change", LOOP5, &[]))
                .unwrap()
                .is_empty()
        );
        // Missed both events entirely (overflow): the rescan still tells the disk changed.
        sys.attr(&dir, "diskseq", "11\n");
        assert_eq!(
            names(&t.rescan(sysfs::scan_disks(&root).unwrap())),
            ["-loop5", "+loop5"]
        );
    }

    #[test]
    fn usb_add_remove_and_rescan_diffs() {
        let sys = FakeSys::new();
        let root = sys.root();
        let mut t = DiskTable::new();
        sys.loop_disk(1, Some("/srv/keep.img"), 2048);
        assert_eq!(
            names(&t.rescan(sysfs::scan_disks(&root).unwrap())),
            ["+loop1"]
        );
        let sdb = sys.usb_disk("sdb");
        let devpath = format!("/{}", sdb.strip_prefix(&root).unwrap().to_string_lossy());
        let evs = t.apply(&root, &uevent("add", &devpath, &[])).unwrap();
        assert_eq!(names(&evs), ["+sdb"]);
        // A partition showing up late: the disk is unchanged, so nothing is re-emitted...
        let part = uevent(
            "add",
            &format!("{devpath}/sdb1"),
            &[("DEVTYPE", "partition")],
        );
        // (Its DEVTYPE=partition overrides the helper's DEVTYPE=disk.)
        assert_eq!(part.devtype.as_deref(), Some("partition"));
        assert!(t.apply(&root, &part).unwrap().is_empty());
        // ...unless the disk did change (here its size).
        sys.attr(&sdb, "size", "1000\n");
        assert_eq!(names(&t.apply(&root, &part).unwrap()), ["+sdb"]);
        // Events of other subsystems are ignored.
        let usb = Uevent {
            subsystem: Some("usb".into()),
            ..uevent("remove", "/devices/pci0000:00/0000:00:14.0/usb2/2-3", &[])
        };
        assert!(t.apply(&root, &usb).unwrap().is_empty());
        assert_eq!(
            names(&t.apply(&root, &uevent("remove", &devpath, &[])).unwrap()),
            ["-sdb"]
        );
        // Unknown disk removed: silent.
        assert!(
            t.apply(&root, &uevent("remove", &devpath, &[]))
                .unwrap()
                .is_empty()
        );
        // Overflow: sdb came back and loop1 went while we were deaf.
        fs::remove_file(root.join("class/block/loop1")).unwrap();
        let evs = t.rescan(sysfs::scan_disks(&root).unwrap());
        let mut got = names(&evs);
        got.sort();
        assert_eq!(got, ["+sdb", "-loop1"]);
        assert!(
            t.rescan(sysfs::scan_disks(&root).unwrap()).is_empty(),
            "second rescan is silent"
        );
    }

    #[test]
    fn identify_errors_reach_the_caller() {
        let sys = FakeSys::new();
        let root = sys.root();
        let dir = sys.loop_disk(2, Some("/srv/a.img"), 2048);
        sys.attr(&dir, "size", "garbage\n");
        let mut t = DiskTable::new();
        let err = t
            .apply(
                &root,
                &uevent("change", "/devices/virtual/block/loop2", &[]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("size of loop2"), "{err}");
    }
}
