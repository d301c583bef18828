//! The privacy audit through the `tek` binary: `tek image audit`, `import` auditing by default
//! (`--no-audit`), the verdict in `list`/`show`, `tek image accept` (re-signed, in the audit
//! log) and `tek write` refusing unaudited or unclean images unless `--allow-unaudited`.
//! Images come from image-store's fixture script (`mkfs.ext4 -d`, nothing mounted; no root).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{MIB, Tek, have_sgdisk};

/// Personal strings planted in the populated fixture: never in any output or record.
const PLANTED: [&str; 4] = [
    "alice.example@",
    "7946 0958",
    "correct horse",
    "3f1e9a0c6b2d",
];

/// Builds the Linux fixture `variant` (`clean` or `populated`) in `dir`.
fn linux(dir: &Path, variant: &str) -> PathBuf {
    let out = dir.join(format!("{variant}.img"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../image-store/tests/fixtures/make-linux-image.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(variant)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "make-linux-image.sh {variant}");
    out
}

fn tools() -> bool {
    let ok = have_sgdisk() && Command::new("mkfs.ext4").arg("-V").output().is_ok();
    if !ok {
        eprintln!("SKIP: needs sgdisk and mkfs.ext4");
    }
    ok
}

fn no_planted(what: &str, text: &str) {
    for s in PLANTED {
        assert!(!text.contains(s), "{s} leaked into {what}:\n{text}");
    }
}

fn old_disk(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0xEEu8; (64 * MIB) as usize]).unwrap();
    p
}

fn untouched(p: &Path) -> bool {
    std::fs::read(p).unwrap().iter().all(|&b| b == 0xEE)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn audit_command_flags_a_populated_image_and_passes_a_clean_one() {
    if !tools() {
        return;
    }
    let t = Tek::new();
    let clean = linux(t.dir(), "clean");
    let pop = linux(t.dir(), "populated");
    let out = t.ok(&["image", "audit", s(&clean)]);
    assert!(out.contains("verdict: clean"), "{out}");
    assert!(out.contains("(ext4): audited"), "{out}");

    let o = t.run(&["image", "audit", s(&pop), "--deep"]);
    assert!(!o.status.success());
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    for rule in [
        "linux.home",
        "shell.history",
        "linux.machine-id",
        "linux.ssh-host-key",
        "deep.personal-data",
    ] {
        assert!(out.contains(rule), "{rule} missing:\n{out}");
    }
    assert!(err.contains("NOT clean"), "{err}");
    no_planted("tek image audit --deep", &format!("{out}{err}"));

    let o = t.run(&["image", "audit", s(&pop), "--json", "--deep"]);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["findings"].as_array().unwrap().len() >= 8, "{v}");
    no_planted(
        "tek image audit --json",
        &String::from_utf8_lossy(&o.stdout),
    );

    // Neither a file nor NAME@VERSION: a clear error.
    let e = t.fails(&["image", "audit", "/nonexistent/x.img"]);
    assert!(e.contains("neither a file nor NAME@VERSION"), "{e}");
}

#[test]
fn import_audits_by_default_and_write_refuses_what_is_not_clean() {
    if !tools() {
        return;
    }
    let t = Tek::new();
    let clean = linux(t.dir(), "clean");
    let pop = linux(t.dir(), "populated");
    let out = t.ok(&["image", "import", "pop@1", s(&pop)]);
    assert!(out.contains("audit: NOT clean"), "{out}");
    no_planted("tek image import", &out);
    // The manifest on disk (what the signature covers) holds paths and counts, no content.
    let manifest = std::fs::read_to_string(t.dir().join("state/store/images/pop/1.json"))
        .expect("the manifest file");
    assert!(manifest.contains("\"audit\""), "{manifest}");
    no_planted("the stored manifest", &manifest);
    let out = t.ok(&["image", "import", "pop@2", s(&pop), "--no-audit"]);
    assert!(out.contains("audit: not audited"), "{out}");
    let out = t.ok(&["image", "import", "clean@1", s(&clean)]);
    assert!(out.contains("audit: clean"), "{out}");

    let list: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "list", "--json"])).unwrap();
    let row = |img: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["image"] == img)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("clean@1")["clean"], true);
    assert_eq!(row("pop@1")["clean"], false);
    assert_eq!(row("pop@2")["audit"], "not audited");
    let text = t.ok(&["image", "list"]);
    let row = text.lines().find(|l| l.starts_with("pop@1 ")).unwrap();
    assert!(row.contains("  NOT clean"), "{text}");
    let show = t.ok(&["image", "show", "pop@1"]);
    assert!(show.contains("audit:      NOT clean"), "{show}");
    assert!(show.contains("shell.history"), "{show}");
    no_planted("tek image show", &show);

    // tek write: the recorded verdict of a stored image, a raw file audited on the spot.
    let target = old_disk(t.dir(), "target");
    for (src, why) in [
        ("pop@1", "unaccepted personal/risk finding"),
        ("pop@2", "never audited"),
        (s(&pop), "unaccepted personal/risk finding"),
    ] {
        let o = t.run(&["write", src, s(&target), "--yes", "--allow-unsigned"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{src} was written");
        assert!(
            err.contains(why) && err.contains("--allow-unaudited"),
            "{err}"
        );
        no_planted("tek write refusal", &err);
        assert!(untouched(&target), "{src}: the target was changed");
    }
    t.ok(&["write", "clean@1", s(&target), "--yes", "--allow-unsigned"]);
    assert!(!untouched(&target));
    let target = old_disk(t.dir(), "target2");
    t.ok(&[
        "write",
        "pop@2",
        s(&target),
        "--yes",
        "--allow-unsigned",
        "--allow-unaudited",
    ]);
    assert!(!untouched(&target));
}

#[test]
fn accept_resigns_and_records_each_acceptance_in_the_audit_log() {
    if !tools() {
        return;
    }
    let t = Tek::new();
    let pop = linux(t.dir(), "populated");
    let sk = t.trusted_maintainer_key();
    t.ok(&["image", "import", "pop@1", s(&pop), "--sign-key", s(&sk)]);
    let show: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "show", "pop@1", "--json"])).unwrap();
    let blocking: Vec<String> = show["manifest"]["audit"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    assert!(blocking.len() >= 5, "{show}");
    let id = blocking[0].as_str();

    // Refusals, each with its reason, changing nothing.
    let e = t.fails(&[
        "image",
        "accept",
        "pop@1",
        "--finding",
        id,
        "--reason",
        "a b",
    ]);
    assert!(e.contains("reason code"), "{e}");
    let e = t.fails(&[
        "image",
        "accept",
        "pop@1",
        "--finding",
        "0000",
        "--reason",
        "x",
    ]);
    assert!(e.contains("has no audit finding 0000"), "{e}");
    let e = t.fails(&["image", "accept", "pop@1", "--finding", id, "--reason", "x"]);
    assert!(
        e.contains("sign"),
        "a signed image needs --sign-key or --unsign: {e}"
    );
    let out = t.ok(&["image", "show", "pop@1"]);
    assert!(
        out.contains("valid (trusted key maint)") && !out.contains("(accepted)"),
        "{out}"
    );

    for (i, id) in blocking.iter().enumerate() {
        let out = t.ok(&[
            "image",
            "accept",
            "pop@1",
            "--finding",
            id,
            "--reason",
            "lab-fixture",
            "--sign-key",
            s(&sk),
        ]);
        assert!(out.contains("recorded in the audit log"), "{out}");
        let last = i + 1 == blocking.len();
        assert_eq!(out.contains("audit: clean"), last, "{out}");
    }
    let out = t.ok(&["image", "show", "pop@1"]);
    assert!(out.contains("valid (trusted key maint)"), "{out}");
    assert!(out.contains("audit:      clean"), "{out}");
    assert!(out.contains("(accepted)"), "{out}");
    // Accepted and validly signed: written without any override.
    let target = old_disk(t.dir(), "target");
    t.ok(&["write", "pop@1", s(&target), "--yes"]);

    // One audit entry per acceptance, with ids and codes only; the chain verifies.
    let mut log = String::new();
    for e in std::fs::read_dir(t.dir().join("state/audit")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            log.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    assert_eq!(
        log.matches("\"image_finding_accepted\"").count(),
        blocking.len(),
        "{log}"
    );
    assert!(log.contains("lab-fixture"));
    no_planted("the audit log", &log);
    assert!(
        !log.contains("alice"),
        "a path reached the audit log: {log}"
    );
    t.ok(&["audit", "verify"]);
}

/// What image-store's `make-deep-image.sh` plants (an address and a name, in file contents on
/// ext4 and NTFS, and an address in an NTFS file name), and the authors' address beside it.
const DEEP_PLANTED: [&str; 4] = ["ann.client@", "mail.example.com", "Ann Client", "jane.dev@"];

fn no_deep_planted(what: &str, text: &str) {
    for s in DEEP_PLANTED {
        assert!(!text.contains(s), "{s} leaked into {what}:\n{text}");
    }
}

/// Masking on NTFS: `--deep` hits in NTFS files and an address in an NTFS file name never show
/// their text in any output (text, JSON, errors), the stored manifest, `show`/`list`, or the
/// audit log after an acceptance. The fixture is filled through ntfs-3g (root, FUSE).
#[test]
fn deep_hits_on_ntfs_never_show_the_matched_text() {
    if !tools()
        || !tek_testkit::require(
            nix::unistd::geteuid().is_root() && Command::new("mkntfs").arg("-V").output().is_ok(),
            "needs root and ntfs-3g (mkntfs, FUSE) to build the NTFS fixture",
        )
    {
        return;
    }
    let t = Tek::new();
    let img = t.dir().join("deep.img");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../image-store/tests/fixtures/make-deep-image.sh");
    assert!(
        Command::new("bash")
            .arg(script)
            .arg(&img)
            .status()
            .unwrap()
            .success()
    );
    let o = t.run(&["image", "audit", s(&img), "--deep"]);
    assert!(!o.status.success());
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    // The NTFS hits are there, by masked path and count.
    for path in [
        "/Users/jsmith/Documents/letter.txt",
        "/Users/jsmith/Documents/a***@m***.txt",
        "/ProgramData/Hello/contacts.xml",
    ] {
        assert!(out.contains(path), "{path} missing:\n{out}");
    }
    assert!(out.contains("1 e-mail address"), "{out}");
    no_deep_planted("tek image audit --deep", &format!("{out}{err}"));
    let o = t.run(&["image", "audit", s(&img), "--deep", "--json"]);
    let json = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ntfs_hits = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "deep.personal-data" && f["partition"] == 2)
        .count();
    assert_eq!(ntfs_hits, 4, "{v:#}");
    no_deep_planted("tek image audit --deep --json", &json);

    // Import (metadata audit: the masked file name is a user.documents finding), the manifest,
    // show and list, an acceptance and the audit log.
    let out = t.ok(&["image", "import", "deep@1", s(&img)]);
    no_deep_planted("tek image import", &out);
    let manifest = std::fs::read_to_string(t.dir().join("state/store/images/deep/1.json")).unwrap();
    assert!(manifest.contains("a***@m***.txt"), "{manifest}");
    no_deep_planted("the stored manifest", &manifest);
    let show = t.ok(&["image", "show", "deep@1", "--json"]);
    no_deep_planted("tek image show --json", &show);
    no_deep_planted("tek image show", &t.ok(&["image", "show", "deep@1"]));
    no_deep_planted("tek image list", &t.ok(&["image", "list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    let id = v["manifest"]["audit"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().contains("a***@m***"))
        .map(|f| f["id"].as_str().unwrap().to_string())
        .expect("a finding on the masked path");
    let out = t.ok(&[
        "image",
        "accept",
        "deep@1",
        "--finding",
        &id,
        "--reason",
        "lab-fixture",
    ]);
    no_deep_planted("tek image accept", &out);
    let log = std::fs::read_to_string(t.dir().join("state/audit/audit.log")).unwrap();
    assert!(log.contains(&id), "{log}");
    no_deep_planted("the audit log", &log);
    assert!(
        !log.contains("jsmith"),
        "a path reached the audit log: {log}"
    );
}

/// `tek image audit NAME@VERSION --record`: an image imported with `--no-audit` gets today's
/// verdict in its manifest; a raw partition's `fs.unread` finding blocks until accepted, and a
/// later `--record` keeps that acceptance (the finding is still made), re-signed, with one
/// `image_audit_recorded` audit entry each time. Refusals change nothing.
#[test]
fn record_writes_a_fresh_audit_into_the_manifest_and_keeps_acceptances_still_made() {
    if !tools() {
        return;
    }
    let t = Tek::new();
    // Partition 1 blank, partition 2 holding bytes that are no filesystem.
    let img = t.dir().join("raw.img");
    let sh = format!(
        "set -e; i={i}; truncate -s 40M $i; \
         sgdisk -Z -n 1:2048:+8M -n 2:0:+16M -t 2:8300 -c 2:RAW $i >/dev/null; \
         head -c 1M /dev/urandom | dd of=$i bs=1M seek=10 conv=notrunc status=none",
        i = img.display()
    );
    assert!(
        Command::new("bash")
            .args(["-c", &sh])
            .status()
            .unwrap()
            .success()
    );
    let sk = t.trusted_maintainer_key();
    t.ok(&[
        "image",
        "import",
        "raw@1",
        s(&img),
        "--no-audit",
        "--sign-key",
        s(&sk),
    ]);
    assert!(
        t.ok(&["image", "show", "raw@1"])
            .contains("audit:      not audited")
    );

    // Refused: a file has no manifest; a signed image needs a key or --unsign; a key needs
    // --record. The manifest stays as it was.
    let e = t.fails(&["image", "audit", s(&img), "--record"]);
    assert!(e.contains("--record needs NAME@VERSION"), "{e}");
    let e = t.fails(&["image", "audit", "raw@1", "--record"]);
    assert!(e.contains("sign"), "{e}");
    let e = t.fails(&["image", "audit", "raw@1", "--sign-key", s(&sk)]);
    assert!(e.contains("--record"), "{e}");
    assert!(
        t.ok(&["image", "show", "raw@1"])
            .contains("audit:      not audited")
    );

    let out = t.run(&["image", "audit", "raw@1", "--record", "--sign-key", s(&sk)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "not clean: exits non-zero\n{text}");
    assert!(
        text.contains("partition 1 \"\" (none): no filesystem; all 8.0 MiB read zero"),
        "{text}"
    );
    assert!(
        text.contains("fs.unread") && text.contains("recorded in the manifest of raw@1"),
        "{text}"
    );
    let show = t.ok(&["image", "show", "raw@1"]);
    assert!(
        show.contains("valid (trusted key maint)") && show.contains("NOT clean"),
        "{show}"
    );
    let id = {
        let j: serde_json::Value =
            serde_json::from_str(&t.ok(&["image", "show", "raw@1", "--json"])).unwrap();
        j["manifest"]["audit"]["findings"][0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    t.ok(&[
        "image",
        "accept",
        "raw@1",
        "--finding",
        &id,
        "--reason",
        "boot-code",
        "--sign-key",
        s(&sk),
    ]);
    // Audited again: the same finding, still accepted; clean, signed.
    let out = t.ok(&["image", "audit", "raw@1", "--record", "--sign-key", s(&sk)]);
    assert!(
        out.contains("(accepted)") && out.contains("verdict: clean, 1 finding accepted"),
        "{out}"
    );
    let show = t.ok(&["image", "show", "raw@1"]);
    assert!(
        show.contains("valid (trusted key maint)") && show.contains("audit:      clean"),
        "{show}"
    );
    let log = std::fs::read_to_string(t.dir().join("state/audit/audit.log")).unwrap();
    assert_eq!(log.matches("\"image_audit_recorded\"").count(), 2, "{log}");
    t.ok(&["audit", "verify"]);
}
