//! The restore's watchdog with a real, SIGSTOPped ntfs-3g (see `restore/watchdog.rs`): given up
//! on within the limit, while writing and before anything is written (the conflict check), the
//! dead mount detached and gone from mountinfo, the message naming the mount point, the dataset
//! still staged. Needs root, loop devices and FUSE; skips with the reason otherwise.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use client_data::{DataError, DatasetState, PartitionMount, RestoreOptions, RestoreTarget};

use crate::common::*;
use crate::restore_safe::{can_run, write};

/// Stops process `pid` (SIGSTOP): it answers nothing any more. Continued on drop, so a failing
/// test does not leave a stopped daemon (and a mount that hangs) behind; a killed one is a
/// zombie until its mount's teardown reaps it, so its pid is not reused meanwhile.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// An empty 64 MiB NTFS image file in `dir`, mounted by tek's own ntfs-3g.
fn ntfs(dir: &Path) -> PartitionMount {
    let img = dir.join("stall.ntfs");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let out = std::process::Command::new("mkntfs")
        .args(["-F", "-q", "-f"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    PartitionMount::mount_device(&img, Some("ntfs")).unwrap()
}

/// True while `/proc/self/mountinfo` lists a mount on `dir`.
fn mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*dir))
}

fn opts(m: &PartitionMount) -> RestoreOptions {
    RestoreOptions {
        stall_warning: Duration::from_millis(500),
        stall_limit: Duration::from_secs(3),
        driver: m.driver(),
        ..Default::default()
    }
}

/// `f`'s result, checked to have come within `secs` (the limit, the wait for a killed daemon's
/// end, and slack for a loaded machine).
fn within<T>(secs: u64, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    assert!(
        t0.elapsed() < Duration::from_secs(secs),
        "took {:?}",
        t0.elapsed()
    );
    r
}

/// After the give-up: the mount is gone, its teardown says the daemon was killed, quickly.
fn assert_detached(m: PartitionMount, msg: &str) {
    let point = m.path().to_path_buf();
    assert!(!mounted(&point), "still mounted: {msg}");
    assert!(
        msg.contains(&format!("detached its dead mount {}", point.display())),
        "{msg}"
    );
    let err = within(20, || m.unmount().unwrap_err().to_string());
    assert!(err.contains("killed by tek"), "{err}");
    assert!(!point.exists(), "mount point left: {}", point.display());
}

#[test]
fn a_stopped_ntfs_3g_is_given_up_on_and_its_mount_detached() {
    if !can_run("a_stopped_ntfs_3g_is_given_up_on_and_its_mount_detached") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    for i in 0..3000 {
        write(&src.join(format!("f/{i:05}.txt")), &[b'x'; 3000]);
    }
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let m = ntfs(d.dir.path());
    let pid = m.driver().expect("tek's own ntfs-3g").pid();
    let target = RestoreTarget::beneath(m.path(), "/Recovered").unwrap();
    let probe = m.path().join("Recovered/f/00100.txt");
    let opts = opts(&m);
    let t0 = Instant::now();
    let (e, stopped) = std::thread::scope(|s| {
        let h = s.spawn(|| d.custody.restore_with(&info.id, &target, &dest(), &opts));
        while !probe.exists() && !h.is_finished() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let stopped = Stopped::stop(pid);
        (h.join().unwrap(), stopped)
    });
    let e = e.unwrap_err();
    let msg = e.to_string();
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    match &e {
        DataError::RestoreAborted { cause, .. } => {
            assert!(matches!(**cause, DataError::Stalled { .. }), "{msg}")
        }
        e => panic!("{e}"),
    }
    assert!(msg.contains(&format!("ntfs-3g (pid {pid})")), "{msg}");
    assert!(msg.contains("did not answer for"), "{msg}");
    // The cleanup tried nothing on the dead mount, and says so once.
    assert!(
        msg.contains("were removed again: the target's filesystem no longer answers"),
        "{msg}"
    );
    assert!(!msg.contains("os error"), "{msg}");
    drop(target);
    drop(stopped); // killed by now: a zombie until the teardown reaps it
    assert_detached(m, &msg);
    assert_eq!(
        d.custody.dataset(&info.id).unwrap().state,
        DatasetState::Staged
    );
}

#[test]
fn a_driver_stopped_before_the_restore_refuses_it_in_the_conflict_check() {
    if !can_run("a_driver_stopped_before_the_restore_refuses_it_in_the_conflict_check") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    for i in 0..20 {
        write(&src.join(format!("f{i}.txt")), b"data");
    }
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let m = ntfs(d.dir.path());
    let pid = m.driver().expect("tek's own ntfs-3g").pid();
    let target = RestoreTarget::beneath(m.path(), "/Recovered").unwrap();
    let opts = opts(&m);
    let stopped = Stopped::stop(pid);
    let e = within(20, || {
        d.custody
            .restore_with(&info.id, &target, &dest(), &opts)
            .unwrap_err()
    });
    let msg = e.to_string();
    // Refused before writing: the stall itself, not an aborted restore with a cleanup.
    assert!(matches!(e, DataError::Stalled { .. }), "{msg}");
    assert!(msg.contains(&format!("ntfs-3g (pid {pid})")), "{msg}");
    assert!(
        msg.contains("the target folder's identity") || msg.contains("checking what the target"),
        "{msg}"
    );
    drop(target);
    drop(stopped); // killed by now: a zombie until the teardown reaps it
    assert_detached(m, &msg);
    assert_eq!(
        d.custody.dataset(&info.id).unwrap().state,
        DatasetState::Staged
    );
}

#[test]
fn a_driver_stopped_while_the_target_is_opened_is_given_up_on() {
    if !can_run("a_driver_stopped_while_the_target_is_opened_is_given_up_on") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let m = ntfs(d.path());
    let pid = m.driver().expect("tek's own ntfs-3g").pid();
    let opts = opts(&m);
    let stopped = Stopped::stop(pid);
    let e = within(20, || {
        m.guarded(&opts, || {
            RestoreTarget::beneath(m.path(), "/Users/Public/Recovered")
        })
        .unwrap_err()
    });
    let msg = e.to_string();
    assert!(matches!(e, DataError::Stalled { .. }), "{msg}");
    assert!(msg.contains("opening the restore's target folder"), "{msg}");
    drop(stopped);
    assert_detached(m, &msg);
}

/// An ntfs-3g the test started itself (a mount tek did not make): continued, detached and
/// ended on drop.
struct ForeignMount {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for ForeignMount {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stopped_foreign_fuse_mount_is_aborted_and_named_not_detached() {
    if !can_run("a_stopped_foreign_fuse_mount_is_aborted_and_named_not_detached") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    for i in 0..20 {
        write(&src.join(format!("f{i}.txt")), b"data");
    }
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let img = d.dir.path().join("foreign.ntfs");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let out = std::process::Command::new("mkntfs")
        .args(["-F", "-q", "-f"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = d.dir.path().join("foreign-mnt");
    fs::create_dir(&dir).unwrap();
    let child = std::process::Command::new("ntfs-3g")
        .args(["-o", "no_detach"])
        .arg(&img)
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let m = ForeignMount {
        child,
        dir: dir.clone(),
    };
    let t0 = Instant::now();
    while !mounted(&dir) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ntfs-3g did not mount"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::create_dir(dir.join("Recovered")).unwrap();
    let target = RestoreTarget::open(&dir.join("Recovered")).unwrap();
    let opts = RestoreOptions {
        stall_warning: Duration::from_millis(500),
        stall_limit: Duration::from_secs(3),
        ..Default::default()
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let e = within(20, || {
        d.custody
            .restore_with(&info.id, &target, &dest(), &opts)
            .unwrap_err()
    });
    let msg = e.to_string();
    assert!(matches!(e, DataError::Stalled { .. }), "{msg}");
    assert!(msg.contains("aborted its FUSE connection"), "{msg}");
    // Not tek's mount: left in place, named as dead, with what to do.
    assert!(
        msg.contains(&format!("must be unmounted (umount -l {})", dir.display())),
        "{msg}"
    );
    assert!(mounted(&dir), "a mount tek did not make was detached");
    drop(target);
    drop(m);
    assert!(!mounted(&dir));
    assert_eq!(
        d.custody.dataset(&info.id).unwrap().state,
        DatasetState::Staged
    );
}
