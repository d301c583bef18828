//! A job whose restore target's ntfs-3g stops answering (SIGSTOP, as a hung USB disk leaves
//! it): with agent.toml's `[restore]` limits of 1 s / 4 s the job fails with the stall as its
//! reason, the agent's dead mount is detached (gone from mountinfo), and the dataset stays
//! staged.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

/// SIGSTOPs a process; SIGCONT on drop, so a failing test leaves no stopped daemon behind (a
/// killed one is a zombie until the agent reaps it: its pid is not reused meanwhile).
struct Stopped(nix::unistd::Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// The `ntfs-3g` child of process `parent`, if one runs.
fn ntfs3g_child(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        (name == "ntfs-3g" && ppid == parent).then_some(pid)
    })
}

/// The FUSE mount points in `/proc/<pid>/mountinfo` made by tek (`tek-mnt-*`).
fn tek_fuse_mounts(pid: &str) -> Vec<PathBuf> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - fuse"))
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.contains("/tek-mnt-"))
        .map(PathBuf::from)
        .collect()
}

#[test]
fn a_jobs_stopped_ntfs_3g_fails_the_job_with_the_stall_and_its_mount_is_detached() {
    let name = "a_jobs_stopped_ntfs_3g_fails_the_job_with_the_stall_and_its_mount_is_detached";
    if !need_root(name) {
        return;
    }
    let Some(img) = win_sample() else { return };
    let mut b = Bench::new(
        "winstall",
        &["bay1"],
        "[restore]\nstall_warn_secs = 1\nstall_abort_secs = 4",
    );
    import_win(&b, &img, &[]);
    // Many small files: the restore runs long enough to be caught in the middle.
    let src = b.root().join("work/src");
    for i in 0..4000 {
        let p = src.join(format!("d{}/f{i:05}.txt", i % 10));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, [b'x'; 2000]).unwrap();
    }
    let dataset = b
        .custody()
        .ingest("client-e2e", E2E_TICKET, &src)
        .unwrap()
        .id;
    b.start_agent();
    let agent = b.agent_pid();
    let job = b
        .tek_ok(&[
            "job",
            "add",
            "--ticket",
            E2E_TICKET,
            "--image",
            "win@1",
            "--bay",
            "bay1",
            "--data",
            dataset.as_str(),
        ])
        .trim()
        .to_string();
    let (_disk, lo) = b.plug("bay1", 1, 600 * MIB);
    // Wait for the restore to be writing (files in the target), then stop its ntfs-3g.
    let t0 = Instant::now();
    let (point, stopped) = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no restore seen:\n{}",
            b.agent_log()
        );
        if let Some(pid) = ntfs3g_child(agent)
            && let Some(point) = tek_fuse_mounts(&agent.to_string()).pop()
        {
            let dir = point.join("Users/Public/Documents/Recovered/d3");
            if std::fs::read_dir(&dir).is_ok_and(|d| d.count() > 20) {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
                break (point, Stopped(pid));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stop_at = Instant::now();
    let rec = b.wait_state(&job, "failed", 120);
    drop(stopped);
    // The limit, the wait for the killed daemon's end and the cleanup on the dead mount.
    assert!(
        stop_at.elapsed() < Duration::from_secs(60),
        "took {:?}",
        stop_at.elapsed()
    );
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(err.contains("ntfs-3g (pid "), "{rec:#}");
    assert!(err.contains("did not answer for"), "{rec:#}");
    assert!(
        err.contains(&format!("detached its dead mount {}", point.display())),
        "{rec:#}"
    );
    assert!(
        !tek_fuse_mounts(&agent.to_string()).contains(&point),
        "the dead mount is still listed:\n{}",
        std::fs::read_to_string(format!("/proc/{agent}/mountinfo")).unwrap()
    );
    assert!(!tek_fuse_mounts("self").contains(&point));
    let info = b.custody().dataset(&dataset).unwrap();
    assert_eq!(info.state, client_data::DatasetState::Staged);
    drop(lo);
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}
