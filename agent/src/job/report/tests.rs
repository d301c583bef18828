//! The report's content: every section and label present, nothing internal, the outcome first.

use super::*;
use crate::job::{DeviceRecord, JobTarget};
use client_data::Letterhead;

fn lh() -> Letterhead {
    Letterhead::new(
        "TEK Express Leeds".into(),
        vec!["Unit 4, Mill Lane".into(), "Leeds LS1 4AB".into()],
        Some("Europe/London"),
    )
    .unwrap()
}

/// A finished job as a real bench journals it, loop device and all: the internal values the
/// page must not show are in it.
pub(crate) fn done_job() -> Job {
    let mut j = Job::new(
        "T-77",
        "base@1",
        Some("ds-1".into()),
        JobTarget::Bay("a".into()),
    );
    j.device = Some(DeviceRecord {
        name: "loop7".into(),
        dev_path: "/dev/loop7".into(),
        identity: "loop:/srv/tek-virtual/bay1-3.img".into(),
        bus: blockdev::Bus::Virtual,
        model: "unknown model".into(),
        serial: None,
        wwn: None,
        size_bytes: 256 << 20,
        bay: Some("bay1".into()),
        diskseq: Some(42),
    });
    j.results.image = Some(serde_json::json!({
        "manifest_hash": "ab".repeat(32),
        "signature": {"status": "valid", "key_id": "depot"},
        "size": 64 << 20, "sha256": "cd".repeat(32), "blake3": "ef".repeat(32),
        "privacy_audit": "clean (rules 3)",
    }));
    j.results.write = Some(crate::job::WriteRecord::from_json(serde_json::json!({
        "format": 1, "path": "/dev/loop7",
        "identity": {"path": "/dev/loop7", "model": "/srv/tek-virtual/bay1-3.img", "size": 268435456,
                     "logical_sector": 512, "physical_sector": 512, "is_block": true},
        "bytes_written": 40 << 20, "bytes_zeroed": 24 << 20, "bytes_skipped": 0,
        "bytes_verified": 64 << 20, "direct_io": true, "split_off": false,
        "beyond": {"action": "zeroed", "bytes": 192 << 20, "offloaded": true},
        "gpt": {"backup_lba_before": 131071, "backup_lba_after": 524287,
                "grown": ["DATA", 116735, 524254], "guids_randomized": true, "disk_guid": "X"},
        "reread_partitions": "Invalid argument (os error 22)",
        "durations": {"write_secs": 0.5, "beyond_secs": 0.000037631, "verify_secs": 0.2,
                      "finish_secs": 0.01, "total_secs": 0.8},
        "started": "2026-03-11T10:00:00Z", "result": {"status": "ok"}, "mismatch_offsets": [],
    })));
    j.results.restore = Some(crate::job::RestoreRecord::from_json(serde_json::json!({
        "entries_restored": 56, "bytes_restored": 1_234_567, "entries_verified": 56,
        "bytes_verified": 1_234_567, "skipped": ["fifo home/u/pipe (entry 55)"], "mismatches": [],
        "owners_not_restored": 0, "setid_dropped": [], "target_filesystem": "ntfs (ntfs-3g)",
        "name_mappings": [{"entry": 3, "from": "home/u/a:b.txt", "to": "home/u/a\u{f03a}b.txt",
                           "to_escaped": "home/u/a\\u{F03A}b.txt"}],
        "link_targets_mapped": [], "metadata_not_restored": [],
    })));
    j.results.sanitization = Some(crate::job::SanitizationRecord::from_json(
        serde_json::json!({
            "format": 3, "record": "san-ds-1", "category": "purge (cryptographic erase)",
            "verification_result": "passed (key destroyed, 1240000 ciphertext bytes overwritten)",
            "verified": true, "subject": {"client": "C-1042"},
        }),
    ));
    for s in [
        JobState::Claimed,
        JobState::Writing,
        JobState::ImageVerified,
        JobState::Migrating,
        JobState::DataVerified,
        JobState::Wiping,
        JobState::Reporting,
        JobState::Done,
    ] {
        j.set_state(s, None);
    }
    j
}

fn fate(state: client_data::DatasetState, key: bool) -> client_data::DatasetFate {
    client_data::DatasetFate {
        dataset: "ds-1".into(),
        client: Some("C-1042".into()),
        state,
        wiped_at: (!key).then(|| "2026-03-11T10:00:00Z".into()),
        key_present: key,
        sanitization_record: (!key).then(|| "/r/san-ds-1.json".into()),
        case: (state == client_data::DatasetState::Withdrawn).then(|| "case-1".into()),
    }
}

/// Strings of the records that are for machines, not for a client.
const INTERNAL: &[&str] = &[
    "is_block",
    "_secs",
    "0.000037631",
    "durations",
    "identity",
    "os error",
    "Invalid argument",
    "/dev/loop",
    "/srv/tek-virtual",
    "loop:",
    "direct_io",
    "split_off",
    "diskseq",
    "unknown model",
];

#[test]
fn report_has_every_section_in_words() {
    let r = Report::build(
        &done_job(),
        Some(fate(client_data::DatasetState::Wiped, false)),
        None,
    );
    let t = r.to_text(&lh());
    let first = t
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("==") && !l.contains("Ticket"));
    assert!(
        first.is_some_and(|l| l
            .trim()
            .starts_with("Done: image base@1 written and verified")),
        "the outcome comes first:\n{t}"
    );
    for want in [
        "== Service report: TEK Express Leeds",
        "Ticket T-77",
        "== Device",
        "virtual (test bay)",
        "256.0 MiB (268435456 bytes)",
        "== Image",
        "valid, by trusted key depot",
        &"ab".repeat(32),
        "== Verification of the disk",
        "Read back and compared   64.0 MiB (67108864 bytes)",
        "Mismatches               none",
        "partition DATA grown by 199.0 MiB",
        "Partitions re-read       no: this device does not scan partitions",
        "== Client data",
        "C-1042",
        "56 entries, 1.2 MiB (1234567 bytes)",
        "home/u/a:b.txt -> home/u/a\\u{F03A}b.txt",
        "fifo home/u/pipe (entry 55)",
        "== Staging copy",
        "staging copy wiped 2026-03-11 10:00:00 GMT",
        "purge (cryptographic erase)",
        "== Timings",
        "Total",
        "Times are in Europe/London.",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let h = r.to_html(&lh());
    for (name, page) in [("text", &t), ("html", &h)] {
        let visible = if name == "html" {
            tek_testkit::browser::visible_text(page)
        } else {
            page.clone()
        };
        for bad in INTERNAL {
            assert!(!visible.contains(bad), "{name} shows {bad:?}:\n{visible}");
        }
    }
    for want in [
        "Unit 4, Mill Lane",
        "Technician",
        "Received by the client",
        "Service report",
    ] {
        assert!(h.contains(want), "missing {want:?} in the page");
    }
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["format"], 2);
    assert_eq!(v["state"], "done");
    assert_eq!(v["data_custody"]["state"], "wiped");
}

#[test]
fn audit_head_and_checkpoint_are_printed() {
    let mut r = Report::of(&done_job());
    assert!(!r.to_text(&lh()).contains("Audit log"));
    let cp: client_data::Checkpoint = serde_json::from_value(serde_json::json!({
        "format": 1, "seq": 41, "hash": "ab".repeat(32), "time": "2026-03-01T10:00:00Z",
        "public_key": "PK", "signature": "SIG"
    }))
    .unwrap();
    r.audit = Some(AuditAnchor::of(cp));
    let t = r.to_text(&lh());
    for want in [
        "== Audit log",
        "entry 42 of 42, signed 2026-03-01 10:00:00 GMT",
        &"ab".repeat(32),
        "SIG",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["audit"]["checkpoint"]["seq"], 41);
}

#[test]
fn html_escapes() {
    let mut j = done_job();
    j.ticket = "<script>".into();
    let h = Report::of(&j).to_html(&lh());
    assert!(
        h.contains("&#60;script&#62;") || h.contains("&lt;script&gt;"),
        "{h}"
    );
    assert!(!h.contains("<script>"));
}

#[test]
fn unwiped_data_is_said_plainly() {
    let mut j = Job::new("T", "b@1", Some("ds-1".into()), JobTarget::Bay("a".into()));
    j.set_state(JobState::Cancelled, None);
    let r = Report::build(
        &j,
        Some(fate(client_data::DatasetState::Staged, true)),
        None,
    );
    let t = r.to_text(&lh());
    assert!(t.contains("still in staging"), "{t}");
    assert_eq!(r.sentence(&lh()).0, Tone::Open);
}

#[test]
fn a_failure_says_while_doing_what() {
    let mut j = Job::new("T", "b@1", None, JobTarget::Bay("a".into()));
    j.set_state(JobState::Claimed, None);
    j.set_state(JobState::Writing, None);
    j.error = Some("the disk stopped answering at 12.0 MiB".into());
    j.set_state(JobState::Failed, None);
    let (tone, s) = Report::of(&j).sentence(&lh());
    assert_eq!(tone, Tone::Bad);
    assert_eq!(
        s,
        "FAILED (writing the image): the disk stopped answering at 12.0 MiB."
    );
}

#[test]
fn data_lines_come_from_custody_not_from_the_job() {
    let mut j = Job::new("T", "b@1", Some("ds-1".into()), JobTarget::Bay("a".into()));
    j.cancel_withdrawn("the client withdrew");
    let r = Report::build(
        &j,
        Some(fate(client_data::DatasetState::Withdrawn, false)),
        None,
    );
    let t = r.to_text(&lh());
    assert!(!t.contains("still in staging"), "{t}");
    assert!(
        r.outcome
            .contains("destroyed at 2026-03-11T10:00:00Z because the client withdrew")
            && r.outcome.contains("case-1"),
        "{}",
        r.outcome
    );
    assert!(
        t.contains(
            "destroyed 2026-03-11 10:00:00 GMT because the client withdrew (deletion case case-1)"
        ),
        "{t}"
    );
    // Without the custody records, nothing is claimed about the data.
    let t = Report::of(&j).to_text(&lh());
    assert!(
        !t.contains("still in staging") && t.contains("unknown here"),
        "{t}"
    );
}

#[test]
fn long_lists_are_cut_and_say_how_many_more() {
    let mut j = done_job();
    let many: Vec<String> = (0..1000)
        .map(|i| format!("fifo p/{i} (entry {i})"))
        .collect();
    let maps: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"entry": i, "from": format!("a:{i}"), "to": "x", "to_escaped": "x"}))
        .collect();
    let mut m = j.results.restore.as_ref().unwrap().json().clone();
    m["skipped"] = serde_json::json!(many);
    m["name_mappings"] = serde_json::json!(maps);
    j.results.restore = Some(crate::job::RestoreRecord::from_json(m));
    let t = Report::of(&j).to_text(&lh());
    assert!(t.contains("fifo p/4 (entry 4); and 995 more"), "{t}");
    let long = format!("fifo {} (entry 1)", "d/".repeat(2048));
    assert_eq!(page::fit(&long).chars().count(), 90);
    assert!(page::fit(&long).ends_with("d/d/ (entry 1)"));
    assert!(!t.contains("p/5 (entry 5)"), "{t}");
    assert!(t.contains("and 35 more (see --json)"), "{t}");
    let h = Report::of(&j).to_html(&lh());
    assert!(h.contains("and 35 more"), "{h}");
}

#[test]
fn replaced_resumed_and_merged_entries_are_on_the_page() {
    let mut j = done_job();
    let mut m = j.results.restore.as_ref().unwrap().json().clone();
    m["replaced"] = serde_json::json!(["Docs/a.txt (entry 3)"]);
    m["resumed"] = serde_json::json!(["Docs (entry 0)", "Docs/b.txt (entry 1)"]);
    m["merged_directories"] = serde_json::json!(1);
    j.results.restore = Some(crate::job::RestoreRecord::from_json(m));
    let t = Report::of(&j).to_text(&lh());
    assert!(t.contains("Docs/a.txt (entry 3)"), "{t}");
    assert!(
        t.contains("2 entries of an interrupted restore replaced"),
        "{t}"
    );
    assert!(t.contains("1 folder already in the target"), "{t}");
    // None of it: no rows.
    let t = Report::of(&done_job()).to_text(&lh());
    assert!(
        !t.contains("Replaced, as asked") && !t.contains("Resumed"),
        "{t}"
    );
}
