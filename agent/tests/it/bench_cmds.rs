//! The bench commands through the real binary, without an agent (issue 13): `tek audit show`'s
//! filters and its empty answer, the breach report's key backups, the first ingest's word about
//! backing up the key-encryption key (once, also when two first ingests race), `tek image export
//! -` streaming the exact image to a pipe, and `tek write`'s prompt naming what a target holds
//! and staying silent when every target is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{Tek, gpt_image, have_sgdisk};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A small client data directory.
fn source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    src
}

fn ingest(t: &Tek, client: &str, ticket: &str) -> Output {
    let src = source(t.dir());
    let o = t.run(&[
        "data",
        "ingest",
        "--client",
        client,
        "--ticket",
        ticket,
        src.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "ingest: {}", stderr(&o));
    o
}

/// The `event` kind of each JSON line `tek audit show --json ARGS` prints.
fn shown(t: &Tek, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["audit", "show", "--json"];
    a.extend_from_slice(args);
    t.ok(&a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn audit_show_filters_by_window_client_kind_and_count() {
    let t = Tek::new();
    ingest(&t, "C-1", "T-1");
    ingest(&t, "C-2", "T-2");
    ingest(&t, "C-1", "T-3");
    let all = shown(&t, &[]);
    assert_eq!(all.len(), 3, "{all:?}");

    let c1 = shown(&t, &["--client", "C-1"]);
    assert_eq!(c1.len(), 2);
    assert!(c1.iter().all(|v| v["client"] == "C-1"), "{c1:?}");
    let last = shown(&t, &["--client", "C-1", "-n", "1"]);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["ticket"], "T-3", "-n keeps the last ones");
    assert_eq!(shown(&t, &["--event", "ingest,wipe"]).len(), 3);
    assert_eq!(
        shown(&t, &["--event", "wipe", "--event", "migrate"]).len(),
        0
    );

    // The window: today holds all three; a day in the future none.
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(shown(&t, &["--since", &today, "--until", &today]).len(), 3);
    let o = t.run(&["audit", "show", "--since", "2999-01-01"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert_eq!(stderr(&o).trim(), "no events match");
    // RFC 3339 works as well; the log's own times are RFC 3339.
    let first = all[0]["time"].as_str().unwrap();
    assert_eq!(shown(&t, &["--until", first]).len(), 1);
    assert_eq!(shown(&t, &["--since", first]).len(), 3);
}

#[test]
fn audit_show_on_an_empty_log_says_no_events() {
    let t = Tek::new();
    // A depot whose log exists but is empty: the key made, nothing audited yet.
    std::fs::create_dir_all(t.dir().join("state/audit")).unwrap();
    std::fs::write(t.dir().join("state/audit/audit.log"), "").unwrap();
    let o = t.run(&["audit", "show"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert_eq!(stderr(&o).trim(), "no events: the audit log is empty");
}

#[test]
fn audit_show_refuses_bad_filters_clearly() {
    let t = Tek::new();
    ingest(&t, "C-1", "T-1");
    for (args, says) in [
        (
            &["--event", "ingset"][..],
            "invalid value 'ingset' for '--event <KIND>'",
        ),
        (
            &["--since", "2026-13-01"],
            "expected RFC 3339 (2026-03-01T12:00:00Z) or YYYY-MM-DD",
        ),
        (&["--until", "yesterday"], "expected RFC 3339"),
        (
            &["--since", "2026-03-02", "--until", "2026-03-01"],
            "--since is after --until",
        ),
        (&["-n", "x"], "invalid value 'x' for '--lines <N>'"),
        // A name is never a client id (the id rule of every entry point).
        (
            &["--client", "Jane Doe"],
            "invalid value 'Jane Doe' for '--client <ID>'",
        ),
    ] {
        let mut a = vec!["audit", "show"];
        a.extend_from_slice(args);
        let o = t.run(&a);
        assert!(!o.status.success(), "{args:?} accepted: {}", stdout(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn breach_report_names_the_key_backups_of_the_window() {
    let t = Tek::new();
    ingest(&t, "C-1", "T-1");
    let backups = t.dir().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let o = t.run(&[
        "backup",
        "keys",
        backups.to_str().unwrap(),
        "--same-filesystem",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let epoch = b["epoch"].as_str().unwrap().to_string();
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let text = t.ok(&["audit", "breach-report", "--from", &today, "--to", &today]);
    assert!(
        text.contains(&format!("epoch {epoch}: written ")) && text.contains("1 dataset key,"),
        "{text}"
    );
    assert!(text.contains("not destroyed yet, expires"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&t.ok(&[
        "audit",
        "breach-report",
        "--from",
        &today,
        "--to",
        &today,
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["key_backups"][0]["epoch"], epoch.as_str(), "{json:#}");
    // A window before the backup: none.
    let text = t.ok(&[
        "audit",
        "breach-report",
        "--from",
        "2020-01-01",
        "--to",
        "2020-01-02",
    ]);
    assert!(text.contains("key backups in the window: none"), "{text}");
    assert!(
        text.contains("no client data was held in this window"),
        "{text}"
    );
}

const NOTICE: &str = "created the depot's key-encryption key";

#[test]
fn the_ingest_that_makes_the_kek_says_to_back_it_up_once() {
    let t = Tek::new();
    let first = ingest(&t, "C-1", "T-1");
    let err = stderr(&first);
    let kek = std::path::absolute(t.dir().join("state/keys/kek")).unwrap();
    assert!(
        err.contains(&format!("{NOTICE} {}", kek.display())),
        "{err}"
    );
    assert!(err.contains("install -m 0600"), "{err}");
    assert!(err.contains("kek.check"), "{err}");
    assert!(err.contains("`tek backup keys` does not copy it"), "{err}");
    let second = ingest(&t, "C-1", "T-2");
    assert!(!stderr(&second).contains(NOTICE), "{}", stderr(&second));
}

#[test]
fn two_racing_first_ingests_say_it_exactly_once() {
    for round in 0..3 {
        let t = Tek::new();
        let src = source(t.dir());
        let spawn = |ticket: &str| {
            t.cmd()
                .args(["data", "ingest", "--client", "C-1", "--ticket", ticket])
                .arg(&src)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn("T-1"), spawn("T-2"));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(
            a.status.success() && b.status.success(),
            "{}{}",
            stderr(&a),
            stderr(&b)
        );
        let told = [&a, &b]
            .iter()
            .filter(|o| stderr(o).contains(NOTICE))
            .count();
        assert_eq!(
            told,
            1,
            "round {round}: {}\n---\n{}",
            stderr(&a),
            stderr(&b)
        );
    }
}

#[test]
fn export_to_stdout_streams_the_exact_image() {
    if !tek_testkit::require_tool("zstd") {
        return;
    }
    let t = Tek::new();
    // Data, a long hole, data at the very end: the pipe gets the zeros written out.
    let img = t.dir().join("disk.img");
    let mut bytes = vec![0u8; 3 << 20];
    bytes[..4096].copy_from_slice(&tek_testkit::bytes(1, 4096));
    let n = bytes.len();
    bytes[n - 4096..].copy_from_slice(&tek_testkit::bytes(2, 4096));
    std::fs::write(&img, &bytes).unwrap();
    t.ok(&[
        "image",
        "import",
        "pipe@1",
        img.to_str().unwrap(),
        "--no-audit",
    ]);
    let o = t.run(&["image", "export", "pipe@1", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout == bytes, "stdout differs from the image");
    assert!(
        stderr(&o).contains("exported pipe@1 to stdout (3.0 MiB, sha256 "),
        "the summary goes to stderr: {}",
        stderr(&o)
    );
    // Through a real pipe into zstd, which checks its own frame.
    let script = "\"$TEK\" --state \"$STATE\" image export pipe@1 - | zstd -q -c > \"$OUT\" \
                  && zstd -q -t \"$OUT\" && zstd -q -d -c \"$OUT\" | cmp - \"$IMG\"";
    let zst = t.dir().join("out.zst");
    let st = Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .env("TEK", env!("CARGO_BIN_EXE_tek"))
        .env("STATE", t.dir().join("state"))
        .env("OUT", &zst)
        .env("IMG", &img)
        .env_remove("TEK_STORE")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "export | zstd | cmp failed");
    // A corrupt chunk: the stream fails with a non-zero exit that names it.
    let chunks = t.dir().join("state/store/chunks");
    let victim = walk_files(&chunks).into_iter().next().expect("a chunk");
    let mut c = std::fs::read(&victim).unwrap();
    let mid = c.len() / 2;
    c[mid] ^= 0xff;
    std::fs::write(&victim, c).unwrap();
    let o = t.run(&["image", "export", "pipe@1", "-"]);
    assert!(!o.status.success(), "a corrupt store streamed as if whole");
    assert!(
        stderr(&o).contains("exporting pipe@1 to stdout"),
        "{}",
        stderr(&o)
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `tek write IMAGE TARGET` (unsigned and unaudited allowed) with stdin no terminal: it must
/// fail; returns its stderr.
fn write_fails(t: &Tek, image: &str, target: &Path) -> String {
    let o = t.run(&[
        "write",
        image,
        target.to_str().unwrap(),
        "--allow-unsigned",
        "--allow-unaudited",
    ]);
    assert!(!o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

#[test]
fn write_prompt_names_the_image_and_what_the_target_holds() {
    if !tek_testkit::require(have_sgdisk(), "sgdisk") {
        return;
    }
    let t = Tek::new();
    let img = gpt_image(t.dir());
    t.ok(&[
        "image",
        "import",
        "gpt@1",
        img.to_str().unwrap(),
        "--no-audit",
    ]);
    // The target already holds a GPT (a copy of the image itself).
    let target = t.dir().join("target.img");
    std::fs::copy(&img, &target).unwrap();
    let err = write_fails(&t, "gpt@1", &target);
    assert!(
        err.starts_with("image: gpt@1 (16.0 MiB, unsigned)"),
        "{err}"
    );
    assert!(err.contains("holds: GPT, 2 partitions"), "{err}");
    assert!(err.contains("ROOT") && err.contains("DATA"), "{err}");
    assert!(
        err.contains("refusing to write without --yes: stdin is not a terminal"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&img).unwrap()
    );
}

#[test]
fn write_asks_nothing_when_every_target_is_refused() {
    let t = Tek::new();
    let img = t.dir().join("raw.img");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    t.ok(&[
        "image",
        "import",
        "raw@1",
        img.to_str().unwrap(),
        "--no-audit",
    ]);
    // A directory is no disk: refused, and with nothing to write there is nothing to confirm
    // (stdin is no terminal here, so a question would have failed the command differently).
    let dir = t.dir().join("not-a-disk");
    std::fs::create_dir(&dir).unwrap();
    let err = write_fails(&t, "raw@1", &dir);
    assert!(err.contains("REFUSED"), "{err}");
    assert!(
        !err.contains("Continue?") && !err.contains("without --yes"),
        "{err}"
    );
    assert!(
        err.contains("1 of 1 target(s) not written: 1 refused, untouched"),
        "{err}"
    );
}
