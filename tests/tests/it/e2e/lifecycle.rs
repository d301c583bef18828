//! End-to-end tests of whole runs: the demo, the agent's systemd notifications, the provisioning bay.

use super::*;

#[test]
fn demo_runs_the_whole_journey() {
    let out = std::process::Command::new(tek_bin())
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tek demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("== Service report") && text.contains("safe to remove"),
        "{text}"
    );
    if can_attach() {
        assert!(
            text.contains("sanitization record of the staging wipe"),
            "{text}"
        );
        assert!(text.contains("\"migration_verified\": true"), "{text}");
    } else {
        assert!(text.contains("not root"), "{text}");
    }
}

#[test]
fn agent_notifies_systemd_ready_status_watchdog_and_stopping() {
    if !need_root("agent_notifies_systemd_ready_status_watchdog_and_stopping") {
        return;
    }
    let mut b = Bench::new("notify", &["bay1"], "");
    let path = b.root().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let p = path.display().to_string();
    b.start_agent_with_env(&[("NOTIFY_SOCKET", &p), ("WATCHDOG_USEC", "1000000")]);
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10)
        && !(got.contains("READY=1") && got.contains("STATUS=") && got.contains("WATCHDOG=1"))
    {
        let n = sock.recv(&mut buf).unwrap();
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    assert!(got.contains("READY=1"), "{got}");
    assert!(got.contains("STATUS=1 bays"), "{got}");
    assert!(got.contains("WATCHDOG=1"), "{got}");
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
    let mut rest = String::new();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(rest.contains("STOPPING=1"), "{rest}");
}

#[test]
fn provisioning_bay_images_whatever_is_plugged_in_once() {
    if !need_root("provisioning_bay_images_whatever_is_plugged_in_once") {
        return;
    }
    let mut b = Bench::new("provision", &["prov=sample@1"], "");
    b.start_agent();
    let st = b.status();
    assert_eq!(st["bays"][0]["state"], "empty", "{st:#}");
    // No job added: plugging a disk in is enough.
    let d1 = b.disk_file("prov", 1, 96 * MIB);
    let l1 = LoopDevice::attach(&d1).unwrap();
    let start = std::time::Instant::now();
    while b.job_records().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let jobs = b.job_records();
    assert_eq!(jobs.len(), 1, "{jobs:#?}\n{}", b.agent_log());
    let id = jobs[0]["id"].as_str().unwrap().to_string();
    let rec = b.wait_state(&id, "done", 60);
    assert_eq!(rec["provisioning"], true, "{rec:#}");
    assert_eq!(rec["image"], "sample@1");
    assert_eq!(rec["device"]["bay"], "prov");
    assert!(rec["dataset"].is_null(), "no client data: {rec:#}");
    assert!(rec["results"].get("restore").is_none(), "{rec:#}");
    let states = history_states(&rec);
    assert!(!states.iter().any(|s| s == "migrating"), "{states:?}");
    assert_gpt_valid(&d1);
    assert_same_range(&b.image, &d1, ROOT_RANGE);
    assert_same_range(&b.image, &d1, DATA_RANGE);
    let report = b.tek_ok(&["report", &id, "--json"]);
    assert!(report.contains("sample@1"), "{report}");
    b.tek_ok(&["audit", "verify"]);

    // An agent restart with the finished disk still attached: recognised (same loop
    // attachment), shown done, not imaged again.
    let before = b3(&d1);
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
    b.start_agent();
    let start = std::time::Instant::now();
    let mut bay = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        bay = b.status()["bays"][0]["state"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if bay.contains("safe to remove") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(bay.contains("safe to remove") && bay.contains(&id), "{bay}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.job_records().len(),
        1,
        "the done disk was provisioned again"
    );
    assert_eq!(b3(&d1), before);

    // The next disk plugged in gets its own provisioning job.
    drop(l1);
    let d2 = b.disk_file("prov", 2, 96 * MIB);
    let _l2 = LoopDevice::attach(&d2).unwrap();
    let start = std::time::Instant::now();
    while b.job_records().len() < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let jobs = b.job_records();
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    let id2 = jobs[1]["id"].as_str().unwrap().to_string();
    assert_ne!(id2, id);
    b.wait_state(&id2, "done", 60);
    assert_gpt_valid(&d2);
    assert_same_range(&b.image, &d2, ROOT_RANGE);
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}
