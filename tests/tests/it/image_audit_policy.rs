//! The agent's `require_clean_image` policy (issue 12, DESIGN invariant 7) end to end: a job
//! whose image was never audited is refused at `tek job add` (CLI and socket alike) with the
//! reason, and recorded as a failed job (status, job list, report, audit trail); a provisioning bay whose default image is unaudited refuses the disk with the
//! reason in `tek status` and never writes it; `require_clean_image = false` lets it through.
//! The real `tek` binary and agent, real loop devices.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tek_e2e::*;

fn raw(b: &Bench, req: Value) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(&b.socket).expect("connecting");
    let mut line = serde_json::to_vec(&req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// Imports the sample image again as `NAME`, signed, without the audit.
fn import_unaudited(b: &Bench, name: &str) {
    let img = b.image.display().to_string();
    let out = b.import_signed(&["--data-partition", "DATA", "--no-audit", name, &img]);
    assert!(out.contains("audit: not audited"), "{out}");
}

#[test]
fn unaudited_images_are_refused_by_job_add_with_the_reason() {
    if !need_root("unaudited_images_are_refused_by_job_add_with_the_reason") {
        return;
    }
    let mut b = Bench::new("audit-policy-add", &["bay1"], "");
    import_unaudited(&b, "raw@1");
    b.start_agent();
    let out = b.tek(&[
        "job", "add", "--ticket", "T-1", "--image", "raw@1", "--bay", "bay1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("require_clean_image") && err.contains("never audited"),
        "{err}"
    );
    let reply = raw(
        &b,
        json!({"v": 1, "op": "job_add", "ticket": "T-1", "image": "raw@1", "bay": "bay1"}),
    );
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("require_clean_image"),
        "{reply}"
    );
    // Each refusal is recorded as a failed job: in the journal, `tek status`, `tek job list`,
    // a report and the audit trail, like a job that failed on a disk.
    let recs = b.job_records();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    for rec in &recs {
        assert_eq!(rec["state"], "failed", "{rec:#}");
        let error = rec["error"].as_str().unwrap();
        assert!(
            error.contains("require_clean_image") && error.contains("never audited"),
            "{rec:#}"
        );
        let id = rec["id"].as_str().unwrap();
        assert!(err.contains(id) || reply["error"].as_str().unwrap().contains(id));
    }
    let id = recs[0]["id"].as_str().unwrap();
    let status = b.status();
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .unwrap_or_else(|| panic!("job {id} missing in tek status: {status:#}"));
    assert_eq!(job["state"], "failed");
    assert!(
        status["summary"].as_str().unwrap().contains("2 failed"),
        "{status:#}"
    );
    let human = b.tek_ok(&["status"]);
    assert!(human.contains("2 failed"), "{human}");
    let list = b.tek_ok(&["job", "list"]);
    assert!(list.contains(id) && list.contains("failed"), "{list}");
    let report = b.tek_ok(&["report", id]);
    assert!(
        report.contains("require_clean_image") && report.contains("never audited"),
        "{report}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(b.state.join(format!("reports/{id}.json"))).unwrap())
            .unwrap();
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("require_clean_image")
    );
    let audit = std::fs::read_to_string(b.state.join("audit/audit.log")).unwrap();
    let fin: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "job_finished" && e["job"] == id)
        .collect();
    assert_eq!(fin.len(), 1, "{audit}");
    assert_eq!(fin[0]["result"], "failed");
    assert!(b.tek_ok(&["audit", "verify"]).contains("audit log OK"));
    // The sample image itself was audited at import (clean): accepted.
    let id = b.add_job("T-2", "bay1", None);
    assert!(!id.is_empty());
}

#[test]
fn a_provisioning_bay_with_an_unaudited_image_refuses_the_disk_in_status() {
    if !need_root("a_provisioning_bay_with_an_unaudited_image_refuses_the_disk_in_status") {
        return;
    }
    let mut b = Bench::new("audit-policy-bay", &["bay1=raw@1"], "");
    import_unaudited(&b, "raw@1");
    b.start_agent();
    let (file, _lo) = b.plug("bay1", 1, 96 << 20);
    let start = Instant::now();
    let mut last = Value::Null;
    let refused = loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no refusal in tek status: {last:#}"
        );
        last = b.status();
        let text = last.to_string();
        if text.contains("require_clean_image") {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refused.contains("never audited"), "{refused}");
    let human = b.tek_ok(&["status"]);
    assert!(human.contains("require_clean_image"), "{human}");
    // Nothing was written: the disk file is still all zeros.
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.iter().all(|&x| x == 0),
        "the refused disk was written"
    );
}
