//! The audit log through the real binary: free text is refused at every CLI entry point and
//! never lands in the log; an edited-and-rechained or truncated log fails `tek audit verify`.

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

const PII: &str = "Jane Doe, jane.doe@example.com, +44 20 7946 0000";

fn ingest(state: &Path, src: &Path, client: &str, ticket: &str) -> Output {
    tek(
        state,
        &[
            "data",
            "ingest",
            "--client",
            client,
            "--ticket",
            ticket,
            src.to_str().unwrap(),
        ],
    )
}

/// What an editor plus `b3sum` can do: recompute every `prev` and `hash` from line `from` on.
fn rechain(lines: &[String], from: usize) -> Vec<String> {
    let mut out: Vec<String> = lines[..from].to_vec();
    let hash_of = |l: &str| l[l.len() - 66..l.len() - 2].to_string();
    let mut prev = if from == 0 {
        "0".repeat(64)
    } else {
        hash_of(&lines[from - 1])
    };
    for l in &lines[from..] {
        let body = &l[..l.rfind(",\"hash\":\"").unwrap()];
        let at = body.find("\"prev\":\"").unwrap() + 8;
        let body = format!("{}{prev}{}}}", &body[..at], &body[at + 64..]);
        let h = blake3::hash(body.as_bytes()).to_hex().to_string();
        out.push(format!("{},\"hash\":\"{h}\"}}", &body[..body.len() - 1]));
        prev = h;
    }
    out
}

#[test]
fn free_text_is_refused_everywhere_and_never_logged() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = d.path().join("client files");
    std::fs::create_dir_all(src.join("Jane's Documents")).unwrap();
    std::fs::write(src.join("Jane's Documents/cv.txt"), b"jane.doe@example.com").unwrap();

    // Every entry point refuses a ticket that is not an id, saying why.
    for bad in [PII, "T 1", "a@b"] {
        let e = err(&ingest(&state, &src, "C-7", bad));
        assert!(
            e.contains("invalid ticket") && e.contains("an id, not a name"),
            "{e}"
        );
        let e = err(&tek(
            &state,
            &[
                "job",
                "add",
                "--ticket",
                bad,
                "--image",
                "a@1",
                "--bay",
                "b",
                "--socket",
                "/nonexistent/agent.sock",
            ],
        ));
        assert!(e.contains("invalid ticket"), "{e}");
    }
    let e = err(&ingest(&state, &src, "jane.doe@example.com", "T-1"));
    assert!(e.contains("invalid client id"), "{e}");

    // A full flow: ingest, restore (device identity), forced wipe with a code and a note,
    // a second dataset migrated and wiped, a withdrawal, a breach report.
    let id1 = ok(&ingest(&state, &src, "C-7", "T-1")).trim().to_string();
    let id2 = ok(&ingest(&state, &src, "C-7", "T-2")).trim().to_string();
    let target = d.path().join("mnt of jane");
    std::fs::create_dir(&target).unwrap();
    ok(&tek(
        &state,
        &[
            "data",
            "restore",
            &id2,
            target.to_str().unwrap(),
            "--job",
            "j-12345678",
            "--serial",
            "WD-123 456",
            "--model",
            "WDC WD10",
        ],
    ));
    let e = err(&tek(
        &state,
        &["data", "wipe", &id1, "--force", "--reason", "client phoned"],
    ));
    assert!(e.contains("migration-abandoned"), "{e}");
    let rec: serde_json::Value = serde_json::from_str(&ok(&tek(
        &state,
        &[
            "data",
            "wipe",
            &id1,
            "--force",
            "--reason",
            "operator-error",
            "--note",
            PII,
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(rec["reason"], "operator-error");
    assert_eq!(
        rec["note"], PII,
        "the note is kept in the sanitization record"
    );
    ok(&tek(&state, &["data", "wipe", &id2]));
    ok(&tek(
        &state,
        &[
            "data",
            "withdraw",
            "--client",
            "C-7",
            "--received",
            "2020-01-01",
        ],
    ));
    ok(&tek(
        &state,
        &[
            "audit",
            "breach-report",
            "--from",
            "2020-01-01",
            "--to",
            "2999-01-01",
        ],
    ));

    // The scan: no address, no free text, no path, ids without spaces.
    let log = std::fs::read_to_string(state.join("audit/audit.log")).unwrap();
    assert!(log.lines().count() >= 8, "{log}");
    for bad in [
        "@",
        "Jane",
        "jane",
        "phoned",
        "/",
        "client files",
        "mnt of jane",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the audit log:\n{log}");
    }
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["v"], 2);
        for k in [
            "ticket", "client", "dataset", "job", "operator", "case", "record",
        ] {
            if let Some(s) = v[k].as_str() {
                assert!(!s.contains(' ') && !s.is_empty(), "{k} {s:?} in {line}");
            }
        }
    }
    assert!(log.contains(r#""serial":"WD-123_456""#), "{log}");
    assert!(log.contains(r#""reason":"operator-error""#), "{log}");

    // Verified and signed; the head names the checkpoint.
    let v = ok(&tek(&state, &["audit", "verify"]));
    assert!(v.contains("audit log OK"), "{v}");
    let h = ok(&tek(&state, &["audit", "head"]));
    assert!(h.contains("head: ") && h.contains("checkpoint: "), "{h}");
}

#[test]
fn edited_rechained_and_truncated_logs_fail_verify() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    for t in ["T-1", "T-2", "T-3"] {
        ok(&ingest(&state, &src, "C-1", t));
    }
    let path = state.join("audit/audit.log");
    let orig: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(orig.len(), 3);
    let write = |l: &[String]| std::fs::write(&path, l.join("\n") + "\n").unwrap();

    // Entry 2 edited (bytes changed), every hash after it recomputed.
    let mut l = orig.clone();
    l[1] = l[1].replace("\"bytes\":1,", "\"bytes\":0,");
    assert_ne!(l[1], orig[1]);
    write(&rechain(&l, 1));
    let e = err(&tek(&state, &["audit", "verify"]));
    assert!(
        e.contains("entry 3 (seq 2)") && e.contains("signed") && e.contains("recomputed"),
        "{e}"
    );
    // The last line dropped.
    write(&orig[..2]);
    let e = err(&tek(&state, &["audit", "verify"]));
    assert!(
        e.contains("truncated") && e.contains("it has 2 entries"),
        "{e}"
    );
    // Restored, it verifies, also against a copy of the public key kept elsewhere.
    write(&orig);
    let pk = d.path().join("audit.pub");
    std::fs::copy(state.join("keys/audit.pub"), &pk).unwrap();
    ok(&tek(
        &state,
        &["audit", "verify", "--public-key", pk.to_str().unwrap()],
    ));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("keys/audit.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn parallel_processes_create_one_key_and_one_signed_chain() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    // (A command that only reads refuses a state root that does not exist.)
    std::fs::create_dir(&state).unwrap();
    // Eight processes append to a fresh depot at once: they race on the key's creation (first
    // use), the tail and the head file.
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_tek"))
                .arg("--state")
                .arg(&state)
                .args([
                    "audit",
                    "breach-report",
                    "--from",
                    "2020-01-01",
                    "--to",
                    "2020-01-02",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let v = ok(&tek(&state, &["audit", "verify", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["entries"], 8, "{v:#}");
    assert_eq!(v["unsigned_entries"], 0, "{v:#}");
    assert_eq!(v["signed_head"]["seq"], 7, "{v:#}");
    let keys: Vec<_> = std::fs::read_dir(state.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("audit"))
        .collect();
    assert_eq!(keys.len(), 2, "one key pair, no leftovers: {keys:?}");
}
