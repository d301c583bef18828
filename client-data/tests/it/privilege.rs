//! Restore under reduced privileges, as the agent runs it under systemd (user `tek`, ambient
//! capabilities): ownership is decided by CAP_CHOWN, not by uid, and a restore without it still
//! succeeds and says which owners it could not set.
//!
//! The restore runs in a child process (this test, re-executed through util-linux's
//! `setpriv` with CAP_CHOWN dropped from the bounding and inheritable sets, so even root lacks
//! it). Needs root and `setpriv`; skips with a reason otherwise. The RestrictSUIDSGID fallback
//! (EPERM on a setuid/setgid chmod) cannot be produced here without systemd's seccomp filter; it
//! is unit-tested in `ownership.rs`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use client_data::{Custody, CustodyPaths, DatasetId, DatasetState, Destination};

const CHILD: &str = "TEK_TEST_PRIVILEGE_CHILD";

fn paths(root: &Path) -> CustodyPaths {
    CustodyPaths::under(root)
}

fn dest() -> Destination {
    Destination {
        job: Some("job-priv".into()),
        device: client_data::DeviceIdentity::default(),
    }
}

/// The child half (not a test of its own): restores `depot`'s dataset `id` under `target` and
/// prints the result. The test below re-executes itself with `CHILD` set to run this.
fn child_restore(spec: &str) {
    let mut it = spec.split('\n');
    let (depot, id, target) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let custody = Custody::open(paths(Path::new(depot))).unwrap();
    let id: DatasetId = id.parse().unwrap();
    let res = custody.restore(&id, Path::new(target), &dest()).unwrap();
    println!("RESULT {}", serde_json::to_string(&res).unwrap());
}

#[test]
fn restore_without_cap_chown_keeps_going_and_says_so() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child_restore(&spec);
    }
    if !nix::unistd::geteuid().is_root() {
        tek_testkit::skip!("needs root (files owned by other users in the source)");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        tek_testkit::skip!("setpriv (util-linux) not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/theirs"), b"owned by 1234").unwrap();
    nix::unistd::chown(
        &src.join("d/theirs"),
        Some(nix::unistd::Uid::from_raw(1234)),
        Some(nix::unistd::Gid::from_raw(1234)),
    )
    .unwrap();
    fs::write(src.join("d/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("d/tool"), fs::Permissions::from_mode(0o4755)).unwrap();

    let depot = dir.path().join("depot");
    let custody = Custody::open(paths(&depot)).unwrap();
    let info = custody.ingest("C1", "T-1", &src).unwrap();
    let target = dir.path().join("target");
    fs::create_dir(&target).unwrap();

    let out = Command::new("setpriv")
        .args(["--inh-caps=-chown", "--bounding-set=-chown", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "privilege::restore_without_cap_chown_keeps_going_and_says_so",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD,
            format!("{}\n{}\n{}", depot.display(), info.id, target.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("child printed no result: {stdout}"));
    let res: serde_json::Value = serde_json::from_str(line).unwrap();

    // Restored and verified; ownership is not restored and the result says so.
    assert_eq!(res["mismatches"], serde_json::json!([]));
    assert_eq!(res["entries_verified"], res["entries_restored"]);
    assert_eq!(res["owners_not_restored"], 1, "{res}");
    assert_eq!(
        res["ownership_note"],
        "no CAP_CHOWN in the effective capability set"
    );
    assert_eq!(res["setid_dropped"], serde_json::json!([]));
    let theirs = fs::metadata(target.join("d/theirs")).unwrap();
    assert_eq!((theirs.uid(), theirs.gid()), (0, 0));
    // Root's own setuid file keeps its bits (no RestrictSUIDSGID here).
    assert_eq!(
        fs::metadata(target.join("d/tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        custody.dataset(&info.id).unwrap().state,
        DatasetState::Migrated
    );

    // With CAP_CHOWN (this process), the same dataset restores owners too.
    let again = dir.path().join("again");
    fs::create_dir(&again).unwrap();
    let res = custody.restore(&info.id, &again, &dest()).unwrap();
    assert_eq!(res.owners_not_restored, 0);
    assert_eq!(res.ownership_note, None);
    let theirs = fs::metadata(again.join("d/theirs")).unwrap();
    assert_eq!((theirs.uid(), theirs.gid()), (1234, 1234));
    assert_eq!(
        fs::metadata(again.join("d/tool")).unwrap().mode() & 0o7777,
        0o4755
    );
}
