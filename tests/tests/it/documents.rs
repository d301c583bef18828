//! The printed documents of a real job, as a client gets them: the service report, the staging
//! wipe's sanitization record and the deletion confirmation, each made by the real agent or
//! command from a real run (a loop device in a virtual bay, client data restored and wiped, a
//! withdrawal), then printed with headless Chromium: one A4 page (`pdfinfo`), no element wider
//! than the page, human labels and the depot's letterhead present, nothing internal. The
//! screenshots and PDFs stay in `target/tmp/documents/` for a person to look at.
//!
//! Then the agent stops and `tek report`, `tek job list` and `tek job show` still answer, from
//! the journal and the reports directory, changing nothing in the depot.
//!
//! Needs root, loop devices, chromium and poppler-utils (CI has them all: there a skip fails).

use std::path::{Path, PathBuf};

use tek_e2e::*;
use tek_testkit::browser;

/// The `[depot]` table every document of this test must show.
const DEPOT: &str = "\n[depot]\nname = \"TEK Express Leeds\"\n\
                     address = [\"Unit 4, Mill Lane\", \"Leeds LS1 4AB\"]\n\
                     time_zone = \"Europe/London\"\n";

/// Text of internal values that must never reach a printed page.
const INTERNAL: &[&str] = &[
    "is_block",
    "_secs",
    "durations",
    "os error",
    "Invalid argument",
    "/dev/loop",
    "/bays/",
    "/tmp/",
    "identity.",
    "diskseq",
    "null",
    "true",
    "false",
];

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("documents")
}

/// Prints `html` and checks it as a client would read it.
fn check_document(name: &str, html: &str, labels: &[&str]) {
    let p = browser::print_check(html, &artifacts(), name).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.viewport,
        browser::A4_PRINTABLE_WIDTH_PX,
        "the width check ran at another width"
    );
    assert_eq!(
        p.pages,
        1,
        "{name} prints on {} pages: {}",
        p.pages,
        p.pdf.display()
    );
    assert!(
        p.too_wide.is_empty() && p.scroll_width <= p.viewport,
        "{name}: elements wider than the A4 page (scroll width {}): {:#?}",
        p.scroll_width,
        p.too_wide
    );
    assert!(
        p.screenshot.exists(),
        "no screenshot {}",
        p.screenshot.display()
    );
    let text = browser::visible_text(html);
    for want in [
        "TEK Express Leeds",
        "Unit 4, Mill Lane",
        "Leeds LS1 4AB",
        "Europe/London",
    ]
    .iter()
    .chain(labels)
    {
        assert!(text.contains(want), "{name} lacks {want:?}:\n{text}");
    }
    for bad in INTERNAL {
        assert!(!text.contains(bad), "{name} shows {bad:?}:\n{text}");
    }
}

#[test]
fn documents_print_on_one_a4_page_and_read_without_the_agent() {
    if !need_root("documents_print_on_one_a4_page_and_read_without_the_agent") {
        return;
    }
    if !tek_testkit::require(
        browser::have_browser(),
        "needs chromium and pdfinfo (Debian packages chromium, poppler-utils)",
    ) {
        return;
    }
    let mut b = Bench::new("documents", &["bay1"], "");
    let mut cfg = std::fs::read_to_string(&b.config).unwrap();
    cfg.push_str(DEPOT);
    std::fs::write(&b.config, cfg).unwrap();
    let (dataset, _src) = b.ingest();
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let (_disk, _lo) = b.plug("bay1", 1, 256 * MIB);
    b.wait_state(&job, "done", 120);

    let read = |rel: String| {
        let p = b.state.join(&rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    };
    let report = read(format!("reports/{job}.html"));
    check_document(
        "service-report",
        &report,
        &[
            "Service report",
            "Ticket T-E2E",
            "Done: image sample@1 written and verified",
            "safe to remove",
            "Capacity",
            "256.0 MiB (268435456 bytes)",
            "valid, by trusted key depot",
            "Read back and compared",
            "Mismatches",
            "none",
            "client-e2e",
            "staging copy wiped",
            "Technician",
            "Received by the client",
            "Audit log",
        ],
    );
    let san = read(format!("reports/sanitization/san-{dataset}.html"));
    check_document(
        "sanitization-record",
        &san,
        &[
            "Sanitization record",
            "was destroyed by cryptographic erase",
            "purge (cryptographic erase)",
            "client-e2e",
            "T-E2E",
            "Verification",
            "passed",
            "Sanitized by",
        ],
    );

    // A withdrawal of a second client's data completes a deletion case at once (no key
    // backups hold its keys): its confirmation is the third document.
    let (_other, _) = b.ingest_for("client-wd", "T-WD");
    let today = tek_testkit::run(std::process::Command::new("date").args(["-u", "+%F"]));
    let today = String::from_utf8_lossy(&today.stdout).into_owned();
    b.tek_ok(&[
        "data",
        "withdraw",
        "--client",
        "client-wd",
        "--received",
        today.trim(),
    ]);
    let cases: serde_json::Value =
        serde_json::from_str(&b.tek_ok(&["data", "deletions", "--json"])).unwrap();
    let case = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "client-wd")
        .unwrap_or_else(|| panic!("no case for client-wd: {cases:#}"));
    assert_eq!(case["state"], "complete", "{case:#}");
    let conf = read(format!(
        "reports/deletions/{}.html",
        case["case"].as_str().unwrap()
    ));
    check_document(
        "deletion-confirmation",
        &conf,
        &[
            "Confirmation of deletion",
            "All data of client client-wd",
            "within the deadline",
            "withdrawal of consent",
            "Copies in use",
            "Backup copies",
        ],
    );

    // The agent stops; the read-only commands still answer, and change nothing.
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
    let before = tek_testkit::snapshot(&b.state);
    let list = b.tek_ok(&["job", "list"]);
    assert!(list.contains(&job) && list.contains("done"), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&b.tek_ok(&["job", "list", "--json"])).unwrap();
    assert_eq!(json[0]["id"], job.as_str(), "{json:#}");
    let show: serde_json::Value =
        serde_json::from_str(&b.tek_ok(&["job", "show", &job, "--json"])).unwrap();
    assert_eq!(show["state"], "done", "{show:#}");
    let text = b.tek_ok(&["report", &job]);
    assert!(
        text.contains("== Service report: TEK Express Leeds")
            && text.contains("Done: image sample@1 written and verified")
            && text.contains("staging copy wiped")
            && text.contains("== Audit log"),
        "{text}"
    );
    let html = b.tek_ok(&["report", &job, "--html"]);
    assert!(
        html.contains("Service report") && html.contains("Audit log"),
        "{html}"
    );
    let unknown = b.tek(&["job", "show", "j-00000000"]);
    assert!(!unknown.status.success());
    assert_eq!(
        tek_testkit::snapshot(&b.state),
        before,
        "a read-only command changed the depot"
    );
}

/// The longest values a report can hold (a 64-character ticket, the longest letterhead, long
/// paths of renamed and skipped entries, hundreds of them, a long error) print with nothing
/// past the page's edge, cut to a few lines each ("and 295 more"), on at most two pages (a
/// normal job's one page is checked above). No root needed: the report is built from a record.
#[test]
fn a_report_of_the_longest_values_fits_the_page_width() {
    if !tek_testkit::require(
        browser::have_browser(),
        "needs chromium and pdfinfo (Debian packages chromium, poppler-utils)",
    ) {
        return;
    }
    use agent::job::{DeviceRecord, Job, JobState, JobTarget, RestoreRecord, WriteRecord};
    let ticket = "T".repeat(64);
    let mut j = Job::new(
        &ticket,
        &format!("{}@{}", "w".repeat(40), "9".repeat(20)),
        Some(format!("ds-20261202-{}", "f".repeat(32))),
        JobTarget::Bay("b".repeat(50)),
    );
    j.device = Some(DeviceRecord {
        name: "sdb".into(),
        dev_path: "/dev/sdb".into(),
        identity: "S".repeat(60),
        bus: "usb".parse().unwrap(),
        model: "VeryLongVendorName ".repeat(5),
        serial: Some("S".repeat(60)),
        wwn: None,
        size_bytes: 16 << 40,
        bay: Some("b".repeat(50)),
        diskseq: None,
    });
    let long = |i: usize| {
        format!(
            "Users/{}/Documents/{}:{i}.docx",
            "u".repeat(60),
            "n".repeat(80)
        )
    };
    let maps: Vec<_> = (0..40)
        .map(|i| serde_json::json!({"entry": i, "from": long(i), "to": long(i), "to_escaped": long(i)}))
        .collect();
    let skipped: Vec<_> = (0..300)
        .map(|i| format!("fifo {} (entry {i})", long(i)))
        .collect();
    j.results.write = Some(WriteRecord::from_json(serde_json::json!({
        "bytes_written": 1u64 << 40, "bytes_verified": 1u64 << 40,
        "result": {"status": "ok"}, "mismatch_offsets": [],
        "reread_partitions": "Device or resource busy (os error 16)",
    })));
    j.results.restore = Some(RestoreRecord::from_json(serde_json::json!({
        "entries_restored": 1_000_000, "bytes_restored": 1u64 << 40, "entries_verified": 1_000_000,
        "bytes_verified": 1u64 << 40, "skipped": skipped, "mismatches": [], "name_mappings": maps,
        "target_filesystem": "ntfs (ntfs-3g)",
    })));
    for s in [
        JobState::Claimed,
        JobState::Writing,
        JobState::ImageVerified,
        JobState::Migrating,
    ] {
        j.set_state(s, None);
    }
    j.error = Some(format!(
        "restoring {}: {}",
        long(1),
        "the disk stopped answering ".repeat(6)
    ));
    j.set_state(JobState::Failed, None);
    // The longest name and address the configuration takes (60 characters, 4 lines).
    let line = "Northern Regional Repair Centre and Data Recovery Lab Ltd.";
    let line = format!("{line}{}", "x".repeat(60 - line.len()));
    let lh = client_data::Letterhead::new(
        line.clone(),
        (0..4).map(|_| line.clone()).collect(),
        Some("Pacific/Chatham"),
    )
    .unwrap();
    let html = agent::job::report::Report::of(&j).to_html(&lh);
    let p = browser::print_check(&html, &artifacts(), "service-report-long-values")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(p.pages <= 2, "{} pages: {}", p.pages, p.pdf.display());
    assert!(
        p.too_wide.is_empty() && p.scroll_width <= p.viewport,
        "wider than the page: {:#?}",
        p.too_wide
    );
    let text = browser::visible_text(&html);
    assert!(
        text.contains("and 295 more") && text.contains("and 35 more"),
        "{text}"
    );
    assert!(
        text.contains("FAILED (restoring the client data)"),
        "{text}"
    );
}
