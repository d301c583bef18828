//! A client's withdrawal against the agent's jobs for its data: a queued job never writes its
//! disk, a running one stops before the migration (whether or not the agent was told), and
//! every report says what the custody records show happened to the data. Each test checks the
//! disk, `tek data list`, the audit log and the staging files itself. Needs root and loop
//! devices (CI runs as root); skips with the reason otherwise.

use std::path::Path;

use serde_json::Value;
use tek_e2e::*;

fn today() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn audit_events(b: &Bench) -> Vec<Value> {
    std::fs::read_to_string(b.state.join("audit/audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The custody records of `dataset`, read independently: `tek data list`, the staging files,
/// the audit log.
fn check_destroyed_by_withdrawal(b: &Bench, job: &str, dataset: &str) {
    let list: Value = serde_json::from_str(&b.tek_ok(&["data", "list", "--json"])).unwrap();
    let ds = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == dataset)
        .unwrap();
    assert_eq!(ds["state"], "withdrawn", "{list:#}");
    let dir = b.state.join("staging").join(dataset);
    assert!(!dir.join("data.enc").exists() && !dir.join("manifest.enc").exists());
    assert!(
        !b.state
            .join(format!("keys/datasets/{dataset}.key"))
            .exists()
    );
    let events = audit_events(b);
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "migrate" && e["dataset"] == dataset),
        "a migration of a withdrawn dataset was audited"
    );
    let fin: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "job_finished" && e["job"] == job)
        .collect();
    assert_eq!(fin.len(), 1, "{fin:?}");
    assert_eq!(fin[0]["result"], "cancelled");
    assert!(b.tek_ok(&["audit", "verify"]).contains("audit log OK"));
    // The report says what custody recorded, in both forms.
    let report = b.tek_ok(&["report", job]);
    assert!(!report.contains("still in staging"), "{report}");
    assert!(
        report.contains("because the client withdrew") && report.contains("deletion case"),
        "{report}"
    );
    let json: Value = serde_json::from_str(&b.tek_ok(&["report", job, "--json"])).unwrap();
    assert_eq!(json["data_custody"]["state"], "withdrawn", "{json:#}");
    assert_eq!(json["data_custody"]["key_present"], false);
    let saved: Value = serde_json::from_slice(
        &std::fs::read(b.state.join(format!("reports/{job}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["data_custody"]["state"], "withdrawn", "{saved:#}");
}

fn all_zero(p: &Path) -> bool {
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            return true;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return false;
        }
    }
}

#[test]
fn queued_job_of_a_withdrawn_client_is_cancelled_and_never_writes_its_disk() {
    if !need_root("queued_job_of_a_withdrawn_client_is_cancelled_and_never_writes_its_disk") {
        return;
    }
    let mut b = Bench::new("wd-queued", &["bay1"], "");
    let (dataset, _src) = b.ingest();
    b.start_agent();
    let job = b.add_job(tek_e2e::E2E_TICKET, "bay1", Some(&dataset));
    let out = b.tek_ok(&[
        "data",
        "withdraw",
        "--client",
        "client-e2e",
        "--received",
        &today(),
    ]);
    assert!(out.contains("1 datasets destroyed now"), "{out}");
    assert!(
        out.contains(&format!("agent told: jobs {job} cancelled")),
        "{out}"
    );
    let rec = b.wait_state(&job, "cancelled", 10);
    let note = rec["history"].as_array().unwrap().last().unwrap()["note"].clone();
    assert!(
        note.as_str()
            .unwrap()
            .contains("because the client withdrew"),
        "{note}"
    );
    // A disk arrives: nothing is written to it.
    let (disk, _lo) = b.plug("bay1", 1, 128 * MIB);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let rec = b.job_record(&job);
    assert_eq!(rec["state"], "cancelled");
    assert!(rec["device"].is_null(), "{rec:#}");
    assert!(all_zero(&disk), "the disk was written");
    assert!(
        !audit_events(&b)
            .iter()
            .any(|e| e["event"] == "image_written" && e["job"] == job.as_str())
    );
    check_destroyed_by_withdrawal(&b, &job, &dataset);
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}

/// The withdrawal lands while the image is written; `told` says whether `tek data withdraw`
/// reaches the agent's socket.
fn withdraw_during_write(test: &str, told: bool) {
    if !need_root(test) {
        return;
    }
    let mut b = Bench::new(test, &["bay1"], "beyond_image = \"overwrite\"");
    let (dataset, src) = b.ingest();
    b.start_agent();
    let job = b.add_job(tek_e2e::E2E_TICKET, "bay1", Some(&dataset));
    let (disk, _lo) = b.plug("bay1", 1, 1024 * MIB);
    b.wait_state(&job, "writing", 30);
    let mut args = vec![
        "data".to_string(),
        "withdraw".into(),
        "--client".into(),
        "client-e2e".into(),
        "--received".into(),
        today(),
    ];
    if !told {
        args.extend(["--socket".into(), b.p("nowhere.sock")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = b.tek_ok(&args);
    if told {
        assert!(out.contains(&format!("agent told: jobs {job}")), "{out}");
    } else {
        assert!(out.contains("no agent running at"), "{out}");
    }
    let rec = b.wait_state(&job, "cancelled", 120);
    let states = history_states(&rec);
    assert!(
        !states.iter().any(|s| s == "migrating" || s == "wiping"),
        "{states:?}"
    );
    assert!(rec["results"]["restore"].is_null());
    // Nothing of the client's data reached the disk. If the write completed before the stop,
    // the DATA partition is the image's own (empty) one.
    if states.iter().any(|s| s == "image_verified") {
        let m = DataMount::new(&disk);
        let first = std::fs::read_dir(&src)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        assert!(
            find_named(m.path(), &first.to_string_lossy()).is_empty(),
            "client data on the disk"
        );
    } else {
        assert_ne!(&read_range(&disk, 512, 8)[..], b"EFI PART");
    }
    check_destroyed_by_withdrawal(&b, &job, &dataset);
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}

#[test]
fn running_job_stops_before_migration_when_the_agent_was_not_told() {
    withdraw_during_write("wd-untold", false);
}

#[test]
fn running_job_stops_before_migration_when_the_agent_was_told() {
    withdraw_during_write("wd-told", true);
}

#[test]
fn queued_job_is_cancelled_when_its_disk_arrives_though_the_agent_was_not_told() {
    if !need_root("queued_job_is_cancelled_when_its_disk_arrives_though_the_agent_was_not_told") {
        return;
    }
    let mut b = Bench::new("wd-queued-untold", &["bay1"], "");
    let (dataset, _src) = b.ingest();
    b.start_agent();
    let job = b.add_job(tek_e2e::E2E_TICKET, "bay1", Some(&dataset));
    let out = b.tek_ok(&[
        "data",
        "withdraw",
        "--client",
        "client-e2e",
        "--received",
        &today(),
        "--socket",
        &b.p("nowhere.sock"),
    ]);
    assert!(out.contains("no agent running at"), "{out}");
    assert_eq!(b.job_record(&job)["state"], "queued");
    let (disk, _lo) = b.plug("bay1", 1, 128 * MIB);
    let rec = b.wait_state(&job, "cancelled", 20);
    assert!(rec["device"].is_null(), "{rec:#}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(all_zero(&disk), "the disk was written");
    let st = b.status();
    assert!(
        st["bays"][0]["state"]
            .as_str()
            .unwrap()
            .contains("waiting for a job"),
        "{st:#}"
    );
    check_destroyed_by_withdrawal(&b, &job, &dataset);
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}
