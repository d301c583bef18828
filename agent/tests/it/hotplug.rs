//! Disk detection against the real kernel: loop devices attached on sparse files must show up as
//! `Present` within 2 s and leave as `Gone`, and an overflowing uevent socket must still end in
//! the right state after the sysfs re-scan.
//!
//! These tests need root (they attach loop devices) and skip with a message otherwise. Other
//! engineers attach loop devices on this machine at the same time, so every assertion looks only
//! at devices whose backing file this test created.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blockdev::sysfs::{self, Bus, DiskInfo};
use blockdev::watch::{DiskEvent, WatchOptions, watch, watch_with};
use client_data::loopdev::{LoopDevice, LoopOptions, can_attach};
use tokio::sync::mpsc::Receiver;

const MIB: u64 = 1 << 20;

fn skip(test: &str) -> bool {
    if can_attach() {
        return false;
    }
    tek_testkit::skip!("{test}: needs root and /dev/loop-control to attach loop devices");
    true
}

/// A sparse backing file of `size` bytes; returns its canonical path (what the kernel reports).
fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    fs::File::create(&p).unwrap().set_len(size).unwrap();
    fs::canonicalize(&p).unwrap()
}

/// Waits for the first event satisfying `pick`, up to `within`.
async fn wait_for<T>(
    rx: &mut Receiver<DiskEvent>,
    within: Duration,
    mut pick: impl FnMut(&DiskEvent) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if let Some(t) = pick(&ev) {
            return Some(t);
        }
    }
}

fn present_with_backing(ev: &DiskEvent, backing: &Path) -> Option<DiskInfo> {
    match ev {
        DiskEvent::Present(d) if d.loop_backing_file.as_deref() == Some(backing) => Some(d.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn attached_loop_is_present_then_gone() {
    if skip("attached_loop_is_present_then_gone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = sparse(dir.path(), "bay.img", 64 * MIB);
    let mut rx = watch(PathBuf::from("/sys")).unwrap();

    let t0 = Instant::now();
    let dev = LoopDevice::attach(&backing).unwrap();
    let name = dev.name();
    let d = wait_for(&mut rx, Duration::from_secs(2), |ev| {
        present_with_backing(ev, &backing)
    })
    .await
    .unwrap_or_else(|| panic!("no Present for {name} ({}) within 2 s", backing.display()));
    eprintln!(
        "{name} Present after {:?}: {}",
        t0.elapsed(),
        sysfs::describe(&d)
    );
    assert_eq!(d.name, name);
    assert_eq!(d.dev_path, dev.path());
    assert_eq!(d.size_bytes, 64 * MIB);
    assert_eq!(d.bus, Bus::Virtual);
    assert_eq!(d.major, 7);
    assert_eq!(d.port_path, None);
    assert!(!d.read_only);

    drop(dev);
    let gone = wait_for(&mut rx, Duration::from_secs(2), |ev| match ev {
        DiskEvent::Gone { name: n } if *n == name => Some(()),
        _ => None,
    })
    .await;
    assert!(gone.is_some(), "no Gone for {name} within 2 s of detaching");
}

#[tokio::test]
async fn identify_reads_loop_options_from_sysfs() {
    if skip("identify_reads_loop_options_from_sysfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = sparse(dir.path(), "ro.img", 16 * MIB);
    let opts = LoopOptions {
        read_only: true,
        sector_size: Some(4096),
        size_limit: 8 * MIB,
        ..LoopOptions::default()
    };
    let dev = LoopDevice::attach_with(&backing, &opts).unwrap();
    let d = sysfs::identify(Path::new("/sys"), &dev.name())
        .unwrap()
        .expect("attached loop device identified");
    assert!(d.read_only);
    assert_eq!(d.logical_block_size, 4096);
    assert_eq!(d.size_bytes, 8 * MIB);
    assert_eq!(d.loop_backing_file.as_deref(), Some(backing.as_path()));
    let listed = sysfs::scan_disks(Path::new("/sys")).unwrap();
    assert!(listed.contains(&d), "scan_disks does not list {d:?}");
    let name = dev.name();
    dev.detach().unwrap();
    // Detached: identify says absent (unless someone else grabbed the same loop meanwhile).
    // LOOP_CLR_FD only marks the device for teardown on last close, so give the kernel a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = sysfs::identify(Path::new("/sys"), &name).unwrap();
        if now.and_then(|d| d.loop_backing_file).as_deref() != Some(backing.as_path()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still attached 2 s after detach"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn overflow_rescan_reports_the_final_state() {
    if skip("overflow_rescan_reports_the_final_state") {
        return;
    }
    // A current-thread runtime: while this test runs blocking losetup calls the watcher task
    // cannot run, so the tiny socket buffer fills up and the kernel drops events (ENOBUFS).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let opts = WatchOptions {
            rcvbuf: 1, // the kernel rounds up to its minimum (a couple of KiB)
            ..WatchOptions::default()
        };
        let (mut rx, stats) = watch_with(PathBuf::from("/sys"), &opts).unwrap();
        let mut kept = Vec::new();
        let mut dropped = BTreeSet::new();
        for i in 0..8 {
            let backing = sparse(dir.path(), &format!("flood{i}.img"), (4 + i) * MIB);
            let dev = LoopDevice::attach(&backing).unwrap();
            if i % 2 == 0 {
                kept.push((dev, backing));
            } else {
                dev.detach().unwrap();
                dropped.insert(backing);
            }
        }
        let want: BTreeMap<PathBuf, String> = kept
            .iter()
            .map(|(dev, backing)| (backing.clone(), dev.name()))
            .collect();
        let ours: BTreeSet<PathBuf> = want.keys().chain(dropped.iter()).cloned().collect();
        // name -> backing file, for our devices only.
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        let current = |seen: &BTreeMap<String, PathBuf>| -> BTreeMap<PathBuf, String> {
            seen.iter().map(|(n, b)| (b.clone(), n.clone())).collect()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while current(&seen) != want {
            let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                panic!(
                    "final state not reached: want {want:?}, have {:?} ({} overflows)",
                    current(&seen),
                    stats.overflows()
                );
            };
            match ev {
                DiskEvent::Present(d) => {
                    seen.remove(&d.name);
                    if let Some(b) = d.loop_backing_file.filter(|b| ours.contains(b)) {
                        seen.insert(d.name, b);
                    }
                }
                DiskEvent::Gone { name } => {
                    seen.remove(&name);
                }
            }
        }
        assert!(
            stats.overflows() >= 1,
            "the tiny buffer never overflowed, so the re-scan path was not exercised"
        );
        eprintln!(
            "final state reached after {} overflow(s), {} uevents",
            stats.overflows(),
            stats.uevents()
        );
        drop(kept);
    });
}
