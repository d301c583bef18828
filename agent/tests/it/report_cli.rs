//! `tek report`, `tek job list` and `tek job show` with no agent running: they read the journal
//! and the reports directory, change nothing in the depot (not even a directory), and refuse
//! hostile ids and corrupt records with a clear error. No root needed.

use std::path::{Path, PathBuf};

use agent::job::journal::Journal;
use agent::job::{Job, JobState, JobTarget, WriteRecord};

use crate::common::Tek;

/// A config naming the depot and a socket no agent listens on.
fn config(t: &Tek, extra: &str) -> PathBuf {
    let p = t.dir().join("agent.toml");
    let text = format!(
        "socket = {:?}\n[depot]\nname = \"Test depot\"\naddress = [\"1 Road\"]\n{extra}",
        t.dir().join("agent.sock").display().to_string()
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn done_job() -> Job {
    let mut j = Job::new("T-9", "base@1", None, JobTarget::Bay("b".into()));
    j.results.write = Some(WriteRecord::from_json(serde_json::json!({
        "format": 1, "path": "/dev/loop3", "bytes_written": 1 << 20, "bytes_verified": 1 << 20,
        "result": {"status": "ok"}, "mismatch_offsets": [],
    })));
    for s in [
        JobState::Claimed,
        JobState::Writing,
        JobState::ImageVerified,
        JobState::Reporting,
        JobState::Done,
    ] {
        j.set_state(s, None);
    }
    j
}

fn run(t: &Tek, cfg: &Path, args: &[&str]) -> std::process::Output {
    tek_testkit::run(t.cmd().env("TEK_CONFIG", cfg).args(args))
}

fn ok(t: &Tek, cfg: &Path, args: &[&str]) -> String {
    let o = run(t, cfg, args);
    assert!(
        o.status.success(),
        "tek {args:?} failed:\n{}",
        tek_testkit::text(&o)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(t: &Tek, cfg: &Path, args: &[&str]) -> String {
    let o = run(t, cfg, args);
    assert!(
        !o.status.success(),
        "tek {args:?} succeeded:\n{}",
        tek_testkit::text(&o)
    );
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn read_only_commands_answer_without_the_agent_and_change_nothing() {
    let t = Tek::new();
    let cfg = config(&t, "time_zone = \"Europe/Berlin\"\n");
    let state = t.dir().join("state");
    let job = done_job();
    std::fs::create_dir_all(&state).unwrap();
    Journal::open(&state.join("jobs"))
        .unwrap()
        .save(&job)
        .unwrap();
    // A socket file nobody listens on (an agent that died): refused, so the journal answers.
    drop(std::os::unix::net::UnixListener::bind(t.dir().join("agent.sock")).unwrap());
    let before = tek_testkit::snapshot(t.dir());

    let list = ok(&t, &cfg, &["job", "list"]);
    assert!(
        list.contains(job.id.as_str()) && list.contains("done"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&t, &cfg, &["job", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json:#}");
    assert_eq!(json[0]["ticket"], "T-9");
    let show: serde_json::Value =
        serde_json::from_str(&ok(&t, &cfg, &["job", "show", job.id.as_str(), "--json"])).unwrap();
    assert_eq!(show["state"], "done");
    let text = ok(&t, &cfg, &["report", job.id.as_str()]);
    for want in [
        "== Service report: Test depot",
        "Done: image base@1 written and verified; the disk is safe to remove.",
        "Read back and compared   1.0 MiB (1048576 bytes)",
        "none: this job carried no client data",
        "Times are in Europe/Berlin.",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("/dev/loop3"), "{text}");
    let html = ok(&t, &cfg, &["report", job.id.as_str(), "--html"]);
    assert!(
        html.contains("Test depot") && html.contains("1 Road"),
        "{html}"
    );
    assert_eq!(
        tek_testkit::snapshot(t.dir()),
        before,
        "a read-only command changed the depot"
    );
}

#[test]
fn hostile_ids_corrupt_records_and_bad_letterheads_are_refused() {
    let t = Tek::new();
    let cfg = config(&t, "");
    let state = t.dir().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // No journal yet: nothing to list, and no directory made for it.
    assert_eq!(ok(&t, &cfg, &["job", "list"]), "no jobs\n");
    assert!(!state.join("jobs").exists(), "job list created the journal");
    for id in ["../../etc/passwd", "j-1/../x", ""] {
        let e = fails(&t, &cfg, &["job", "show", id]);
        assert!(e.contains("not valid"), "{id:?}: {e}");
        let e = fails(&t, &cfg, &["report", id]);
        assert!(e.contains("not valid"), "{id:?}: {e}");
    }
    let e = fails(&t, &cfg, &["report", "j-00000000"]);
    assert!(e.contains("no job j-00000000"), "{e}");
    assert!(!state.join("jobs").exists(), "report created the journal");
    std::fs::create_dir_all(state.join("jobs")).unwrap();
    std::fs::write(state.join("jobs/j-0000dead.json"), b"{not json").unwrap();
    let e = fails(&t, &cfg, &["job", "list"]);
    assert!(e.contains("j-0000dead.json"), "{e}");
    let e = fails(&t, &cfg, &["report", "j-0000dead"]);
    assert!(e.contains("parsing job record"), "{e}");
    // A letterhead the documents could not print truthfully is refused, saying which key.
    let job = done_job();
    Journal::open(&state.join("jobs"))
        .unwrap()
        .save(&job)
        .unwrap();
    let bad = config(&t, "time_zone = \"Mars/Olympus\"\n");
    let e = fails(&t, &bad, &["report", job.id.as_str()]);
    assert!(
        e.contains("depot.time_zone") && e.contains("Mars/Olympus"),
        "{e}"
    );
}
