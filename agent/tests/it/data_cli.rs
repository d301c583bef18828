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
    assert_eq!(list[0]["state"], "staged");
    assert_eq!(list[0]["max_staging_age_days"], 14);
    let e = err(&tek(&state, &["data", "wipe", id]));
    assert!(e.contains("no verified migration"), "{e}");
    let target = d.path().join("target");
    std::fs::create_dir_all(target.join("a")).unwrap();
    // Something already where the dataset puts its file: refused, unless asked to replace.
    std::fs::write(target.join("a/f.txt"), b"technician's").unwrap();
    let t = target.to_str().unwrap();
    let e = err(&tek(&state, &["data", "restore", id, t]));
    assert!(
        e.contains("a/f.txt") && e.contains("--replace-existing"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(target.join("a/f.txt")).unwrap(),
        b"technician's"
    );
    let args = ["data", "restore", id, t, "--replace-existing", "--json"];
    let res: serde_json::Value = serde_json::from_str(&ok(&tek(&state, &args))).unwrap();
    assert_eq!(res["bytes_verified"], 12);
    assert_eq!(res["replaced"][0], "a/f.txt (entry 1)", "{res}");
    assert_eq!(res["merged_directories"], 1, "{res}");
    assert_eq!(
        std::fs::read(target.join("a/f.txt")).unwrap(),
        b"client bytes"
    );
    ok(&tek(&state, &["data", "wipe", id]));
    let bk = d.path().join("bk");
    std::fs::create_dir(&bk).unwrap();
    let out = ok(&tek(
        &state,
        &["backup", "keys", bk.to_str().unwrap(), "--same-filesystem"],
    ));
    assert!(out.contains("--same-filesystem given"), "{out}");
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

fn tek_at(state: &Path, now: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tek"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("TEK_KEK")
        .env("TEK_TEST_NOW", now)
        .output()
        .expect("running tek")
}

fn audit_withdraw_counts(state: &Path) -> Vec<u64> {
    std::fs::read_to_string(state.join("audit/audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "withdraw")
        .map(|v| v["datasets"].as_u64().unwrap())
        .collect()
}

fn staging_partials(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

fn ingest_dir(state: &Path, client: &str, src: &Path) -> String {
    ok(&tek(
        state,
        &[
            "data",
            "ingest",
            "--client",
            client,
            "--ticket",
            "T-1",
            src.to_str().unwrap(),
        ],
    ))
    .trim()
    .to_string()
}

fn sample_src(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f.txt"), b"client bytes").unwrap();
    src
}

#[test]
fn withdraw_in_one_process_waits_for_a_slow_ingest_in_another() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = sample_src(d.path());
    let first = ingest_dir(&state, "C-5", &src);
    // A tar archive arriving slowly through a FIFO: the ingest is in flight for as long as the
    // test wants.
    let fifo = d.path().join("in.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let tar_src = d.path().join("big");
    std::fs::create_dir(&tar_src).unwrap();
    std::fs::write(
        tar_src.join("big.bin"),
        (0..4u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&tar_src)
        .args(["-cf", "-", "."])
        .output()
        .unwrap()
        .stdout;
    let ingest = Command::new(env!("CARGO_BIN_EXE_tek"))
        .arg("--state")
        .arg(&state)
        .args(["data", "ingest", "--client", "C-5", "--ticket", "T-2"])
        .arg(&fifo)
        .env_remove("TEK_KEK")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&tar[..1 << 20]).unwrap();
    let t = std::time::Instant::now();
    while staging_partials(&state).is_empty() {
        assert!(t.elapsed().as_secs() < 20, "no partial dataset appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut withdraw = Command::new(env!("CARGO_BIN_EXE_tek"))
        .arg("--state")
        .arg(&state)
        .args([
            "data",
            "withdraw",
            "--client",
            "C-5",
            "--received",
            "2020-01-01",
        ])
        .env_remove("TEK_KEK")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(
        withdraw.try_wait().unwrap().is_none(),
        "withdraw finished while an ingest of the client was still running"
    );
    let _ = w.write_all(&tar[1 << 20..]);
    drop(w);
    let ing = ingest.wait_with_output().unwrap();
    let e = err(&ing);
    assert!(
        e.contains("withdrew while this ingest ran") && e.contains("was discarded"),
        "{e}"
    );
    let wd = ok(&withdraw.wait_with_output().unwrap());
    assert!(wd.contains("1 datasets destroyed now"), "{wd}");
    assert!(wd.contains("case state: complete"), "{wd}");
    // The records, independently.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&tek(&state, &["data", "list", "--json"]))).unwrap();
    let ds = list.as_array().unwrap();
    assert_eq!(ds.len(), 1, "{list}");
    assert_eq!(ds[0]["id"], first.as_str());
    assert_eq!(ds[0]["state"], "withdrawn");
    assert!(staging_partials(&state).is_empty());
    assert_eq!(
        std::fs::read_dir(state.join("keys/datasets"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    assert_eq!(audit_withdraw_counts(&state), vec![1]);
    assert!(ok(&tek(&state, &["audit", "verify"])).contains("audit log OK"));
    let cases: serde_json::Value =
        serde_json::from_str(&ok(&tek(&state, &["data", "deletions", "--json"]))).unwrap();
    assert_eq!(cases.as_array().unwrap().len(), 1);
    assert_eq!(cases[0]["state"], "complete");
}

#[test]
fn withdraw_twice_is_one_case_and_prints_what_it_audits() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = sample_src(d.path());
    ingest_dir(&state, "C-6", &src);
    let args = [
        "data",
        "withdraw",
        "--client",
        "C-6",
        "--received",
        "2020-01-01",
    ];
    let one = ok(&tek(&state, &args));
    assert!(one.contains("opened: 1 datasets destroyed now"), "{one}");
    let two = ok(&tek(&state, &args));
    assert!(
        two.contains("(already opened for this request): 0 datasets destroyed now"),
        "{two}"
    );
    let cases: serde_json::Value =
        serde_json::from_str(&ok(&tek(&state, &["data", "deletions", "--json"]))).unwrap();
    assert_eq!(cases.as_array().unwrap().len(), 1, "{cases}");
    assert_eq!(cases[0]["datasets"].as_array().unwrap().len(), 1);
    assert_eq!(audit_withdraw_counts(&state), vec![1, 0]);
    let shown = ok(&tek(&state, &["audit", "show"]));
    let events = shown
        .lines()
        .filter(|l| l.get(33..).is_some_and(|e| e.starts_with("withdraw ")))
        .count();
    assert_eq!(events, 2, "{shown}");
}

#[test]
fn backup_keys_refuses_a_missing_or_local_directory() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = sample_src(d.path());
    ingest_dir(&state, "C-8", &src);
    let missing = d.path().join("mnt/backup");
    let e = err(&tek(&state, &["backup", "keys", missing.to_str().unwrap()]));
    assert!(e.contains("does not exist"), "{e}");
    let e = err(&tek(
        &state,
        &[
            "backup",
            "keys",
            missing.to_str().unwrap(),
            "--same-filesystem",
        ],
    ));
    assert!(e.contains("does not exist"), "{e}");
    assert!(!d.path().join("mnt").exists(), "tek created the directory");
    let local = d.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let e = err(&tek(&state, &["backup", "keys", local.to_str().unwrap()]));
    assert!(
        e.contains("same filesystem") && e.contains("--same-filesystem"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);
    assert!(!ok(&tek(&state, &["audit", "show"])).contains("backup"));
    if !nix::unistd::geteuid().is_root() {
        tek_testkit::skip!("the tmpfs half: needs root to mount");
        return;
    }
    let mnt = d.path().join("tmpfs");
    std::fs::create_dir(&mnt).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tek-test"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    let out = tek(&state, &["backup", "keys", mnt.to_str().unwrap()]);
    let files = std::fs::read_dir(&mnt).unwrap().count();
    let _ = Command::new("umount").arg(&mnt).status();
    let out = ok(&out);
    assert!(
        out.contains("1 key,") && !out.contains("--same-filesystem"),
        "{out}"
    );
    assert_eq!(files, 1);
}

#[test]
fn deletions_show_due_date_against_backup_unreadable_date() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = sample_src(d.path());
    // Received Thursday 03-05 (due 03-12); key backup Wednesday 03-11 (expires 03-16).
    let now = "2026-03-11T10:00:00Z";
    for c in ["C-1", "C-2"] {
        ok(&tek_at(
            &state,
            now,
            &[
                "data",
                "ingest",
                "--client",
                c,
                "--ticket",
                "T-1",
                src.to_str().unwrap(),
            ],
        ));
    }
    let bk = d.path().join("bk");
    std::fs::create_dir(&bk).unwrap();
    ok(&tek_at(
        &state,
        now,
        &["backup", "keys", bk.to_str().unwrap(), "--same-filesystem"],
    ));
    let away = d.path().join("bk-unmounted");
    std::fs::rename(&bk, &away).unwrap();
    let out = ok(&tek_at(
        &state,
        now,
        &[
            "data",
            "withdraw",
            "--client",
            "C-1",
            "--received",
            "2026-03-05",
        ],
    ));
    assert!(
        out.contains(
            "LATE: backups become unreadable on 2026-03-16, after the due date 2026-03-12"
        ),
        "{out}"
    );
    let table = ok(&tek_at(&state, now, &["data", "deletions"]));
    let row = table.lines().find(|l| l.contains("C-1")).unwrap();
    assert!(
        row.contains("2026-03-12") && row.contains("expected 2026-03-16"),
        "{table}"
    );
    assert!(row.contains(" NO ") && row.ends_with("open"), "{table}");
    std::fs::rename(&away, &bk).unwrap();
    let table = ok(&tek_at(&state, now, &["data", "deletions"]));
    let row = table.lines().find(|l| l.contains("C-1")).unwrap();
    assert!(
        row.contains("since 2026-03-11") && row.contains(" yes "),
        "{table}"
    );
    assert!(row.ends_with("complete"), "{table}");
    assert!(!table.contains("LATE"), "{table}");
    let log = std::fs::read_to_string(state.join("audit/audit.log")).unwrap();
    assert!(log.contains("\"event\":\"backup_rotated\""), "{log}");
    assert!(ok(&tek(&state, &["audit", "verify"])).contains("audit log OK"));
}

#[test]
fn withdraw_racing_parallel_ingests_never_leaves_live_data() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        std::fs::write(
            src.join(format!("f{i}.bin")),
            vec![i as u8; 256 * 1024 + i * 4096],
        )
        .unwrap();
    }
    for round in 0..6 {
        let state = d.path().join(format!("state-{round}"));
        ingest_dir(&state, "C-9", &src);
        let spawn = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_tek"))
                .arg("--state")
                .arg(&state)
                .args(args)
                .env_remove("TEK_KEK")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let ingest_args = [
            "data",
            "ingest",
            "--client",
            "C-9",
            "--ticket",
            "T-9",
            src.to_str().unwrap(),
        ];
        let a = spawn(&ingest_args);
        let b = spawn(&ingest_args);
        std::thread::sleep(std::time::Duration::from_millis(5 * round));
        let w = spawn(&[
            "data",
            "withdraw",
            "--client",
            "C-9",
            "--received",
            "2020-01-01",
        ]);
        let outs: Vec<Output> = [a, b, w]
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let wd = ok(&outs[2]);
        for o in &outs[..2] {
            if !o.status.success() {
                let e = String::from_utf8_lossy(&o.stderr);
                assert!(e.contains("withdr"), "round {round}: {e}");
            }
        }
        let list: serde_json::Value =
            serde_json::from_str(&ok(&tek(&state, &["data", "list", "--json"]))).unwrap();
        let ds = list.as_array().unwrap();
        assert!(
            ds.iter().all(|d| d["state"] == "withdrawn"),
            "round {round}: live data after the withdrawal: {list:#}\n{wd}"
        );
        assert!(staging_partials(&state).is_empty(), "round {round}");
        let keys = std::fs::read_dir(state.join("keys/datasets"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(keys, 0, "round {round}");
        // Printed = audited = what the case file holds as destroyed by this call.
        let n: usize = wd
            .split(" datasets destroyed now")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            audit_withdraw_counts(&state),
            vec![n as u64],
            "round {round}"
        );
        let cases: serde_json::Value =
            serde_json::from_str(&ok(&tek(&state, &["data", "deletions", "--json"]))).unwrap();
        assert_eq!(cases[0]["state"], "complete", "round {round}: {cases:#}");
        assert_eq!(cases[0]["datasets"].as_array().unwrap().len(), ds.len());
    }
}
