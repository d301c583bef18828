//! End-to-end tests: the real `tek` binary, `tek agent` as a process, real loop devices on
//! virtual bays bound to each test's own scratch files, and independent checks of the result
//! (sgdisk, byte ranges, mounting and hashing files, staging contents, the audit chain).
//!
//! Tests that need root and loop devices print "SKIP ..." and pass without them; CI runs as
//! root.

use std::time::Duration;

use serde_json::Value;
use tek_e2e::*;

#[test]
fn tek_prints_version() {
    let out = std::process::Command::new(tek_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tek "));
}

#[test]
fn bad_config_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[policy]\nallow_unsigned = true\nbeyond = \"skip\"\n").unwrap();
    let out = std::process::Command::new(tek_bin())
        .args([
            "--state",
            &dir.path().display().to_string(),
            "agent",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.toml") && err.contains("line 3") && err.contains("beyond"),
        "{err}"
    );
}

#[test]
fn bays_discover_works_without_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tek_bin())
        .args([
            "--state",
            &dir.path().display().to_string(),
            "bays",
            "--discover",
        ])
        .env("TEK_CONFIG", dir.path().join("none.toml"))
        .output()
        .unwrap();
    // The config file does not exist: that is an error naming it.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.toml"));
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "").unwrap();
    let out = std::process::Command::new(tek_bin())
        .args([
            "--state",
            &dir.path().display().to_string(),
            "bays",
            "--discover",
        ])
        .env("TEK_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("port path"));
}

#[test]
fn happy_path_with_client_data() {
    if !need_root("happy_path_with_client_data") {
        return;
    }
    let mut b = Bench::new("happy", &["bay1"], "");
    let (dataset, src) = b.ingest();
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let st = b.status();
    assert_eq!(st["bays"][0]["state"], "empty");
    let (disk, _lo) = b.plug("bay1", 1, 128 * MIB);
    b.wait_state(&job, "done", 60);
    check_done_with_data(&b, &job, &disk, &dataset, &src);
    let st = b.status();
    assert!(
        st["bays"][0]["state"]
            .as_str()
            .unwrap()
            .contains("safe to remove"),
        "{st:#}"
    );
    let list = b.tek_ok(&["job", "list"]);
    assert!(list.contains(&job) && list.contains("done"), "{list}");
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}

#[test]
fn disk_outside_any_bay_is_ignored_and_untouched() {
    if !need_root("disk_outside_any_bay_is_ignored_and_untouched") {
        return;
    }
    let mut b = Bench::new("outside", &["bay1"], "");
    b.start_agent();
    let job = b.add_job("T-101", "bay1", None);
    // Same name pattern, but not in the bay's directory.
    let other = b.root().join("bay1-1.img");
    std::fs::write(&other, vec![0x5au8; 16 * MIB as usize]).unwrap();
    let before = b3(&other);
    let lo = LoopDevice::attach(&other).unwrap();
    let name = lo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let start = std::time::Instant::now();
    let mut seen = Value::Null;
    while start.elapsed() < Duration::from_secs(10) {
        let st = b.status();
        if let Some(d) = st["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["disk"]["name"] == name.as_str())
        {
            seen = d.clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen["status"]["state"], "ignored", "{seen:#}");
    std::thread::sleep(Duration::from_millis(500));
    drop(lo);
    assert_eq!(b3(&other), before, "a disk outside any bay was written");
    assert_eq!(b.job_record(&job)["state"], "queued");
}

#[test]
fn kill9_during_write_then_restart_completes() {
    if !need_root("kill9_during_write_then_restart_completes") {
        return;
    }
    // Overwriting past the image's end on a 1 GiB disk makes the write last long enough.
    // No shared-write window: the kill must land while the imager is really writing.
    let mut b = Bench::new(
        "kill-write",
        &["bay1"],
        "beyond_image = \"overwrite\"\nshare_write_window_ms = 0",
    );
    let (dataset, src) = b.ingest();
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let (disk, _lo) = b.plug("bay1", 1, 1024 * MIB);
    b.wait_state(&job, "writing", 30);
    b.kill9();
    let rec = b.job_record(&job);
    assert_eq!(rec["state"], "writing", "killed too late: {rec:#}");
    let info = b.custody().dataset(&dataset.parse().unwrap()).unwrap();
    assert_eq!(format!("{:?}", info.state), "Staged");
    b.start_agent();
    let rec = b.wait_state(&job, "done", 120);
    let states = history_states(&rec);
    assert_eq!(
        states.iter().filter(|s| *s == "image_verified").count(),
        1,
        "{states:?}"
    );
    check_done_with_data(&b, &job, &disk, &dataset, &src);
}

#[test]
fn kill9_during_migration_then_restart_completes_and_staging_survived() {
    if !need_root("kill9_during_migration_then_restart_completes_and_staging_survived") {
        return;
    }
    let mut b = Bench::new("kill-migrate", &["bay1"], "");
    let (dataset, src) = b.ingest();
    let staged_bytes = tree_bytes(&b.state.join("staging"));
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let (disk, _lo) = b.plug("bay1", 1, 128 * MIB);
    b.wait_state(&job, "migrating", 60);
    b.kill9();
    let rec = b.job_record(&job);
    assert_eq!(rec["state"], "migrating", "killed too late: {rec:#}");
    // The staged copy is all there.
    assert_eq!(tree_bytes(&b.state.join("staging")), staged_bytes);
    b.start_agent();
    b.wait_state(&job, "done", 60);
    check_done_with_data(&b, &job, &disk, &dataset, &src);
}

/// The agent killed while the restore is in the middle of a file, and the identity log's line
/// for that file lost as a power loss would lose it: the restarted agent resumes the job by
/// itself (no `--replace-existing`), replaces the partial file because it is a prefix of the
/// staged one, and says so in the job's result.
#[test]
fn kill9_mid_file_with_its_log_line_lost_resumes_by_itself() {
    if !need_root("kill9_mid_file_with_its_log_line_lost_resumes_by_itself") {
        return;
    }
    let mut b = Bench::new("kill-midfile", &["bay1"], "");
    let src = agent::sample::build_client_data(&b.root().join("work")).unwrap();
    let big = src.join("Videos/big.bin");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    let bytes = agent::sample::pseudo_random(16 << 20, 0x2545_f491_4f6c_dd1d);
    std::fs::write(&big, &bytes).unwrap();
    let full = bytes.len() as u64;
    let dataset = b
        .custody()
        .ingest("client-e2e", E2E_TICKET, &src)
        .unwrap()
        .id
        .to_string();
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let (disk, lo) = b.plug("bay1", 1, 128 * MIB);
    b.wait_state(&job, "migrating", 60);
    // The agent's mount of the disk's DATA partition (through a loop device of its own over
    // the claimed disk), then the big file half written.
    let ours = lo.path().display().to_string();
    let over_ours = |dev: &str| {
        let name = dev.strip_prefix("/dev/").unwrap_or(dev);
        std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
            .is_ok_and(|f| f.trim() == ours)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (ino, size) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "big.bin never seen half written:\n{}",
            b.agent_log()
        );
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let mnt = mounts.lines().find_map(|l| {
            let mut f = l.split(' ');
            let dev = f.next()?;
            let dir = f.next()?;
            (dir.contains("tek-mnt-") && over_ours(dev)).then(|| dir.to_string())
        });
        let meta = mnt.and_then(|m| std::fs::metadata(format!("{m}/Videos/big.bin")).ok());
        if let Some(m) = meta
            && m.len() > 0
            && m.len() < full
        {
            b.kill9();
            use std::os::unix::fs::MetadataExt;
            break (m.ino(), m.len());
        }
    };
    let rec = b.job_record(&job);
    assert_eq!(rec["state"], "migrating", "killed too late: {rec:#}");
    // The last line of the identity log is big.bin's (created, journaled, then killed
    // mid-data); drop it, as a power loss before the log's fsync would.
    let logs: Vec<_> = find_named(&b.state.join("staging"), "restore-journal-")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.last().expect("an empty identity log");
    assert_eq!(
        last.split(' ').nth(1),
        Some(ino.to_string().as_str()),
        "the log's last line is not big.bin's (inode {ino}, {size} of {full} bytes written):\n{text}"
    );
    let kept: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&logs[0], kept).unwrap();
    b.start_agent();
    b.wait_state(&job, "done", 90);
    check_done_with_data(&b, &job, &disk, &dataset, &src);
    let rec = b.job_record(&job);
    let unj = &rec["results"]["restore"]["unjournaled"];
    assert_eq!(
        unj.as_array().map(Vec::len),
        Some(1),
        "unjournaled in the job's result: {rec:#}"
    );
    assert!(
        unj[0].as_str().unwrap_or("").contains("Videos/big.bin"),
        "{unj:#}"
    );
}

#[test]
fn disk_detached_mid_job_is_interrupted_and_resumes_when_reattached() {
    if !need_root("disk_detached_mid_job_is_interrupted_and_resumes_when_reattached") {
        return;
    }
    let mut b = Bench::new(
        "detach",
        &["bay1"],
        "beyond_image = \"overwrite\"\nshare_write_window_ms = 0",
    );
    if !tek_testkit::require(
        Throttle::available(),
        "needs the cgroup v1 blkio controller",
    ) {
        return;
    }
    let (dataset, src) = b.ingest();
    b.start_agent();
    // The disk waits in its bay, throttled to 1 MB/s for the agent (a slow USB stick), before
    // the job exists: so the write, which starts when the job is added, takes seconds on every
    // machine, and the detach below surely lands while the job is writing (on a fast machine the
    // whole job once took 0.7 s, finishing before the test could pull the disk).
    let (disk, lo) = b.plug("bay1", 1, 512 * MIB);
    let throttle = Throttle::new(b.agent_pid(), lo.path(), 1_000_000, 2_000_000);
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    b.wait_state(&job, "writing", 30);
    // A busy loop device detaches when its last user closes it (autoclear): the write finishes,
    // then the disk is gone before or during the migration.
    drop(lo);
    drop(throttle);
    let rec = b.wait_state(&job, "interrupted", 60);
    assert!(
        ["writing", "image_verified", "migrating"].contains(&rec["resume_from"].as_str().unwrap()),
        "{rec:#}"
    );
    let info = b.custody().dataset(&dataset.parse().unwrap()).unwrap();
    assert_eq!(format!("{:?}", info.state), "Staged");
    let _lo = LoopDevice::attach(&disk).unwrap();
    b.wait_state(&job, "done", 120);
    check_done_with_data(&b, &job, &disk, &dataset, &src);
}

#[test]
fn two_bays_at_once() {
    if !need_root("two_bays_at_once") {
        return;
    }
    let mut b = Bench::new("two-bays", &["left", "right"], "");
    b.start_agent();
    let j1 = b.add_job("T-105", "left", None);
    let j2 = b.add_job("T-106", "right", None);
    let d1 = b.disk_file("left", 1, 96 * MIB);
    let d2 = b.disk_file("right", 1, 128 * MIB);
    let _l1 = LoopDevice::attach(&d1).unwrap();
    let _l2 = LoopDevice::attach(&d2).unwrap();
    b.wait_state(&j1, "done", 60);
    b.wait_state(&j2, "done", 60);
    // Both started writing the same image within the window: one read/decode fed both disks,
    // and each job still got its own verified target report.
    let log = b.agent_log();
    assert!(
        log.contains("shared write") && log.contains("targets=2"),
        "{log}"
    );
    for (d, j, bay) in [(&d1, &j1, "left"), (&d2, &j2, "right")] {
        let rec = b.job_record(j);
        assert_eq!(rec["results"]["write"]["result"]["status"], "ok", "{rec:#}");
        assert_eq!(rec["device"]["bay"], bay);
        assert_gpt_valid(d);
        assert_same_range(&b.image, d, ROOT_RANGE);
        assert_same_range(&b.image, d, DATA_RANGE);
    }
    let st = b.status();
    let states: Vec<&str> = st["bays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["state"].as_str().unwrap())
        .collect();
    assert!(
        states.iter().all(|s| s.contains("safe to remove")),
        "{states:?}"
    );
}

#[test]
fn mounted_disk_is_refused_and_untouched() {
    if !need_root("mounted_disk_is_refused_and_untouched") {
        return;
    }
    let mut b = Bench::new("mounted", &["bay1"], "");
    let (disk, lo) = b.plug("bay1", 1, 96 * MIB);
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(lo.path())
        .status()
        .unwrap();
    assert!(st.success());
    let mnt = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("mount")
        .arg(lo.path())
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(st.success());
    b.start_agent();
    let job = b.add_job("T-107", "bay1", None);
    let start = std::time::Instant::now();
    let mut bay = Value::Null;
    while start.elapsed() < Duration::from_secs(10) {
        bay = b.status()["bays"][0].clone();
        if bay["state"].as_str().unwrap_or("").starts_with("refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::process::Command::new("umount")
        .arg(mnt.path())
        .status();
    let state = bay["state"].as_str().unwrap_or("");
    assert!(
        state.contains("refused") && state.contains("mount"),
        "{bay:#}"
    );
    assert_eq!(b.job_record(&job)["state"], "queued");
    // No GPT was written: LBA 1 does not hold "EFI PART".
    assert_ne!(&read_range(&disk, 512, 8)[..], b"EFI PART");
    drop(lo);
}

#[test]
fn unsigned_image_is_refused_by_policy() {
    if !need_root("unsigned_image_is_refused_by_policy") {
        return;
    }
    let mut b = Bench::new("unsigned", &["bay1"], "allow_unsigned = false");
    let img = b.image.display().to_string();
    b.tek_ok(&[
        "image",
        "import",
        "--data-partition",
        "DATA",
        "plain@1",
        &img,
    ]);
    b.start_agent();
    let out = b.tek(&[
        "job", "add", "--ticket", "T-108", "--image", "plain@1", "--bay", "bay1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsigned") && err.contains("plain@1"), "{err}");
    let list = b.tek_ok(&["job", "list", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap(),
        Value::Array(vec![])
    );
}

#[test]
fn cancel_keeps_staged_data() {
    if !need_root("cancel_keeps_staged_data") {
        return;
    }
    let mut b = Bench::new("cancel", &["bay1"], "beyond_image = \"overwrite\"");
    let (dataset, _src) = b.ingest();
    let staged_bytes = tree_bytes(&b.state.join("staging"));
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let (disk, _lo) = b.plug("bay1", 1, 1024 * MIB);
    b.wait_state(&job, "writing", 30);
    let out = b.tek_ok(&["job", "cancel", &job]);
    // Running: only asked to stop; the record says what happened once it has.
    assert!(out.contains("cancel requested while writing"), "{out}");
    let rec = b.wait_state(&job, "cancelled", 60);
    let note = rec["history"].as_array().unwrap().last().unwrap()["note"].clone();
    assert!(
        note.as_str().unwrap().contains("staged client data kept"),
        "{note}"
    );
    assert!(rec["results"]["sanitization"].is_null());
    let info = b.custody().dataset(&dataset.parse().unwrap()).unwrap();
    // Never wiped: still staged (or, if the cancel landed after the verified restore,
    // migrated but kept).
    let st = format!("{:?}", info.state);
    assert!(st == "Staged" || st == "Migrated", "dataset is {st}");
    assert_eq!(tree_bytes(&b.state.join("staging")), staged_bytes);
    // A write cancelled midway leaves no bootable half-image: no primary GPT. (On a fast
    // machine the cancel may land after the verified write; then the image is complete.)
    let hist = rec["history"].as_array().unwrap();
    if hist[hist.len() - 2]["state"] == "writing" {
        assert_ne!(&read_range(&disk, 512, 8)[..], b"EFI PART");
    } else {
        assert_gpt_valid(&disk);
    }
    let report = b.tek_ok(&["report", &job]);
    assert!(report.contains("still in staging"), "{report}");
}

#[test]
fn status_json_shows_bays_disks_and_jobs() {
    if !need_root("status_json_shows_bays_disks_and_jobs") {
        return;
    }
    let mut b = Bench::new("status", &["bay1", "bay2"], "");
    b.start_agent();
    let (_disk, lo) = b.plug("bay2", 1, 64 * MIB);
    let name = lo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let job = b.add_job("T-110", "bay1", None);
    let start = std::time::Instant::now();
    let mut st = Value::Null;
    while start.elapsed() < Duration::from_secs(10) {
        st = b.status();
        if st["bays"][1]["disk"] == name.as_str() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(st["bays"][0]["name"], "bay1");
    assert_eq!(st["bays"][0]["state"], "empty");
    assert_eq!(st["bays"][1]["state"], "waiting for a job", "{st:#}");
    assert_eq!(st["jobs"][0]["id"], job.as_str());
    assert_eq!(st["jobs"][0]["state"], "queued");
    assert!(
        st["summary"].as_str().unwrap().contains("1 queued"),
        "{st:#}"
    );
    let text = b.tek_ok(&["status"]);
    assert!(
        text.contains("bay2") && text.contains("waiting for a job"),
        "{text}"
    );
    let show: Value = serde_json::from_str(&b.tek_ok(&["job", "show", &job, "--json"])).unwrap();
    assert_eq!(show["ticket"], "T-110");
    drop(lo);
}

#[test]
fn sigterm_brings_a_running_job_to_a_safe_point_and_restart_resumes_it() {
    if !need_root("sigterm_brings_a_running_job_to_a_safe_point_and_restart_resumes_it") {
        return;
    }
    let mut b = Bench::new("sigterm", &["bay1"], "beyond_image = \"overwrite\"");
    let (dataset, src) = b.ingest();
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let (disk, _lo) = b.plug("bay1", 1, 1024 * MIB);
    b.wait_state(&job, "writing", 30);
    assert!(
        b.stop(),
        "agent did not exit cleanly on SIGTERM:\n{}",
        b.agent_log()
    );
    let rec = b.job_record(&job);
    let state = rec["state"].as_str().unwrap();
    eprintln!("after SIGTERM the job is {state}");
    // Stopped at a safe point: interrupted with a resume point (or, on a fast machine, done).
    if state == "interrupted" {
        let last = rec["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["note"], "agent stopping", "{rec:#}");
        assert!(!b.socket.exists(), "socket left behind");
        b.start_agent();
        b.wait_state(&job, "done", 120);
    } else {
        assert_eq!(state, "done", "{rec:#}");
    }
    check_done_with_data(&b, &job, &disk, &dataset, &src);
}

mod grow;
mod lifecycle;
mod windows;
