//! `tek data`, `tek backup` and `tek audit` driven through the real binary.

use std::path::Path;
use std::process::{Command, Output};

fn tek(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tek"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("TEK_KEK")
        .env_remove("TEK_TEST_NOW")
        .output()
        .expect("running tek")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "tek failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "tek unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn ingest_restore_wipe_audit() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a/f.txt"), b"client bytes").unwrap();
    let id = ok(&tek(
        &state,
        &[
            "data",
            "ingest",
            "--client",
            "C-7",
            "--ticket",
            "T-1",
            src.to_str().unwrap(),
        ],
    ));
    let id = id.trim();
    assert!(id.starts_with("ds-"), "{id}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&tek(&state, &["data", "list", "--json"]))).unwrap();
    assert_eq!(list["datasets"][0]["state"], "staged");
    assert_eq!(list["max_staging_age_days"], 14);
    let e = err(&tek(&state, &["data", "wipe", id]));
    assert!(e.contains("no verified migration"), "{e}");
    let target = d.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let res: serde_json::Value = serde_json::from_str(&ok(&tek(
        &state,
        &["data", "restore", id, target.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    assert_eq!(res["bytes_verified"], 12);
    assert_eq!(
        std::fs::read(target.join("a/f.txt")).unwrap(),
        b"client bytes"
    );
    ok(&tek(&state, &["data", "wipe", id]));
    ok(&tek(
        &state,
        &["backup", "keys", d.path().join("bk").to_str().unwrap()],
    ));
    ok(&tek(&state, &["backup", "prune"]));
    // Withdrawal: unknown client, bad dates, then for real.
    let e = err(&tek(
        &state,
        &[
            "data",
            "withdraw",
            "--client",
            "C-404",
            "--received",
            "2020-01-01",
        ],
    ));
    assert!(e.contains("unknown client"), "{e}");
    let e = err(&tek(
        &state,
        &[
            "data",
            "withdraw",
            "--client",
            "C-7",
            "--received",
            "2999-01-01",
        ],
    ));
    assert!(e.contains("future"), "{e}");
    let e = err(&tek(
        &state,
        &[
            "data",
            "withdraw",
            "--client",
            "C-7",
            "--received",
            "01.02.2020",
        ],
    ));
    assert!(e.contains("YYYY-MM-DD"), "{e}");
    ok(&tek(
        &state,
        &[
            "data",
            "withdraw",
            "--client",
            "C-7",
            "--received",
            "2020-01-01",
            "--reason",
            "termination",
        ],
    ));
    let e = err(&tek(
        &state,
        &[
            "data",
            "ingest",
            "--client",
            "C-7",
            "--ticket",
            "T-2",
            src.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("withdrawn"), "{e}");
    let cases: serde_json::Value =
        serde_json::from_str(&ok(&tek(&state, &["data", "deletions", "--json"]))).unwrap();
    assert_eq!(cases[0]["due"], "2020-01-08");
    let report: serde_json::Value = serde_json::from_str(&ok(&tek(
        &state,
        &[
            "audit",
            "breach-report",
            "--from",
            "2000-01-01",
            "--to",
            "2999-12-31",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(report["clients"][0]["client"], "C-7");
    assert!(ok(&tek(&state, &["audit", "verify"])).contains("audit log OK"));
    let head = ok(&tek(&state, &["audit", "head"]));
    assert!(ok(&tek(&state, &["audit", "show"])).contains("withdraw"));
    // No file names anywhere in the log.
    let log = std::fs::read_to_string(state.join("audit/audit.log")).unwrap();
    assert!(!log.contains("f.txt"));
    // Edit one entry: verify names it.
    let mut lines: Vec<String> = log.lines().map(String::from).collect();
    lines[1] = lines[1].replace("\"bytes\":12", "\"bytes\":13");
    std::fs::write(state.join("audit/audit.log"), lines.join("\n") + "\n").unwrap();
    let e = err(&tek(&state, &["audit", "verify"]));
    assert!(e.contains("entry 2 (seq 1)"), "{e}");
    assert!(!head.is_empty());
}
