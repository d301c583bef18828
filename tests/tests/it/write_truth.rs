//! The agent never starts writing an image it cannot finish: a job on an image whose store lacks
//! a chunk is refused when the disk arrives, before the disk is opened for writing (root: loop
//! devices and the real agent; prints SKIP otherwise).

use std::time::Duration;

use serde_json::Value;
use tek_e2e::*;

#[test]
fn job_on_an_image_with_a_missing_chunk_is_refused_before_writing() {
    if !need_root("job_on_an_image_with_a_missing_chunk_is_refused_before_writing") {
        return;
    }
    let mut b = Bench::new("absent-chunk", &["bay1"], "");
    let show: Value =
        serde_json::from_str(&b.tek_ok(&["image", "show", "sample@1", "--json"])).unwrap();
    let ids: Vec<String> = show["manifest"]["extents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "chunk")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let gone = &ids[ids.len() / 2];
    std::fs::remove_file(
        b.state
            .join("store/chunks")
            .join(&gone[..2])
            .join(format!("{gone}.zst")),
    )
    .unwrap();
    b.start_agent();
    let job = b.add_job("T-901", "bay1", None);
    // The disk holds an old owner's data and partition table.
    let disk = b.disk_file("bay1", 1, 96 * MIB);
    std::fs::write(&disk, vec![0xEEu8; 96 * MIB as usize]).unwrap();
    let st = std::process::Command::new("sgdisk")
        .args(["-n1:2048:+8M", "-c1:OLD"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(st.status.success());
    let before = std::fs::read(&disk).unwrap();
    let lo = LoopDevice::attach(&disk).unwrap();
    let start = std::time::Instant::now();
    let mut bay = Value::Null;
    while start.elapsed() < Duration::from_secs(20) {
        bay = b.status()["bays"][0].clone();
        if bay["state"].as_str().unwrap_or("").starts_with("refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = bay["state"].as_str().unwrap_or("");
    assert!(
        state.contains("cannot be written") && state.contains(gone.as_str()),
        "{bay:#}"
    );
    assert_eq!(b.job_record(&job)["state"], "queued");
    drop(lo);
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the disk is byte-identical to before"
    );
}

/// The agent killed (-9) while writing: the disk is left without a partition table, and the job
/// that resumes on it records the unfinished write it found there, then finishes the disk.
#[test]
fn agent_killed_mid_write_leaves_no_table_and_the_resumed_job_records_it() {
    if !need_root("agent_killed_mid_write_leaves_no_table_and_the_resumed_job_records_it") {
        return;
    }
    let mut b = Bench::new(
        "kill-marker",
        &["bay1"],
        "beyond_image = \"overwrite\"\nshare_write_window_ms = 0",
    );
    b.start_agent();
    let job = b.add_job("T-902", "bay1", None);
    let (disk, lo) = b.plug("bay1", 1, 1024 * MIB);
    b.wait_state(&job, "writing", 30);
    // Past the arming: the marker is on the disk once the first data has been written.
    let start = std::time::Instant::now();
    while read_range(&disk, MIB - 4096, 24) != b"TEK-UNFINISHED-WRITE v1\n" {
        assert!(start.elapsed() < Duration::from_secs(30), "never armed");
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill9();
    assert_eq!(b.job_record(&job)["state"], "writing", "killed too late");
    let p = std::process::Command::new("sgdisk")
        .arg("-p")
        .arg(lo.path())
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&p.stdout);
    assert!(!p.contains("DATA") && !p.contains("ROOT"), "{p}");
    assert_ne!(&read_range(&disk, 512, 8)[..], b"EFI PART");
    b.start_agent();
    let rec = b.wait_state(&job, "done", 120);
    let log = b.agent_log();
    assert!(
        log.contains("this disk holds an unfinished tek write from"),
        "{log}"
    );
    assert_eq!(
        rec["results"]["write"]["unfinished_write"]["image"], "sample@1",
        "{rec:#}"
    );
    assert_ne!(
        read_range(&disk, MIB - 4096, 24),
        b"TEK-UNFINISHED-WRITE v1\n",
        "the finished write replaced the marker"
    );
    drop(lo);
}
