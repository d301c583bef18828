//! End-to-end tests of client data custody through the library API: round trips, hostile inputs,
//! tampering, keys, locking, withdrawal. Tests needing root (tmpfs, loop devices, ext4) say so
//! and skip when not root; CI runs as root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use client_data::{
    BackupOptions, Custody, CustodyConfig, DataError, DatasetState, WipeOptions, WipeReason,
    WithdrawReason,
};

use crate::common::*;

#[test]
fn directory_roundtrip_byte_exact_then_wipe() {
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    assert_eq!(info.entries, 6);
    assert_eq!(info.bytes, 200_005);
    // No plaintext anywhere in staging.
    let staged = fs::read(
        d.custody
            .paths()
            .staging
            .join(info.id.as_str())
            .join("data.enc"),
    )
    .unwrap();
    assert!(!staged.windows(5).any(|w| w == b"hello"));
    let target = d.dir.path().join("target");
    fs::create_dir(&target).unwrap();
    // Not migrated yet: a wipe is refused.
    let op = WipeOptions {
        note: None,
        operator: "tester".into(),
    };
    // No proof of a verified restore can be loaded from the custody record yet.
    assert!(matches!(
        d.custody.verified_restore(&info.id),
        Err(DataError::NotMigrated(_))
    ));
    let res = d.custody.restore(&info.id, &target, &dest()).unwrap();
    assert!(res.ok(), "{res:?}");
    let proof = res
        .verified()
        .expect("a verified restore carries its proof");
    assert_eq!(proof.dataset(), &info.id);
    // After a restart the custody record gives the same proof back.
    assert_eq!(&d.custody.verified_restore(&info.id).unwrap(), proof);
    assert_eq!((res.entries_restored, res.bytes_restored), (6, 200_005));
    assert_same_tree(&src, &target);
    assert_eq!(
        d.custody.dataset(&info.id).unwrap().state,
        DatasetState::Migrated
    );
    let rec = d.custody.wipe(proof, &op).unwrap();
    assert!(rec.verification_result.starts_with("passed"), "{rec:?}");
    assert!(rec.verified, "{rec:?}");
    let sdir = d.custody.paths().reports.join("sanitization");
    assert!(sdir.join(format!("san-{}.json", info.id)).exists());
    // The printed record: labels and words, the letterhead, no raw flags.
    let page = fs::read_to_string(sdir.join(format!("san-{}.html", info.id))).unwrap();
    for want in [
        "Sanitization record",
        client_data::document::hostname().as_str(),
        "was destroyed by cryptographic erase on",
        "What was sanitized",
        "6 entries, 195.3 KiB (200005 bytes)",
        "purge (cryptographic erase)",
        "its copy on the replacement device was verified first",
        "Sanitized by (signature)",
    ] {
        assert!(page.contains(want), "missing {want:?} in\n{page}");
    }
    for bad in ["true", "false", "migration_verified", "verification_result"] {
        assert!(!page.contains(bad), "{bad:?} in\n{page}");
    }
    assert!(
        !d.custody
            .paths()
            .staging
            .join(info.id.as_str())
            .join("data.enc")
            .exists()
    );
    assert_eq!(
        d.custody.dataset(&info.id).unwrap().state,
        DatasetState::Wiped
    );
    assert!(matches!(
        d.custody.restore(&info.id, &target, &dest()),
        Err(DataError::BadState { .. })
    ));
    // The audit log has no file names and verifies.
    let log = fs::read(d.custody.audit().path()).unwrap();
    assert!(!log.windows(5).any(|w| w == b"a.txt"));
    let head = d.custody.audit().verify().unwrap();
    assert_eq!(head.entries, 4, "ingest, migrate, verify, wipe");
}

#[test]
fn forced_wipe_needs_reason() {
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let op = WipeOptions {
        note: Some("client asked by phone, jane@example.com".into()),
        operator: "tester".into(),
    };
    let abandoned = WipeReason::MigrationAbandoned;
    let rec = d.custody.force_wipe(&info.id, abandoned, &op).unwrap();
    assert!(!rec.migration_verified);
    // The code goes to the record and the log, the note only to the record.
    assert_eq!(rec.reason, Some(WipeReason::MigrationAbandoned));
    assert!(
        rec.to_html(&Default::default())
            .contains("jane@example.com")
    );
    let log = fs::read_to_string(d.custody.audit().path()).unwrap();
    assert!(log.contains(r#""reason":"migration-abandoned""#), "{log}");
    assert!(!log.contains('@') && !log.contains("phone"), "{log}");
    assert!(matches!(
        d.custody.force_wipe(&info.id, abandoned, &op),
        Err(DataError::BadState { .. })
    ));
}

#[test]
fn restore_refuses_symlink_planted_in_target() {
    let d = depot();
    let t = tar_of(&[file_entry(b"a/passwd", b"x")]);
    let info = ingest_bytes(&d, "a.tar", &t).unwrap();
    let target = d.dir.path().join("target");
    let outside = d.dir.path().join("outside");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("a")).unwrap();
    // Found by the check before writing: a symlink on the entry's path.
    let r = d.custody.restore(&info.id, &target, &dest());
    assert!(
        matches!(&r, Err(DataError::TargetNotEmpty(c)) if c.count == 0 && c.unsafe_first[0].contains("a (a symlink or a non-directory is on its path)")),
        "{r:?}"
    );
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
}

#[test]
fn tampered_ciphertext_or_manifest_refused_before_writing() {
    for (file, what) in [("data.enc", "ciphertext"), ("manifest.enc", "manifest")] {
        let d = depot();
        let src = d.dir.path().join("src");
        sample_tree(&src);
        let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
        let p = d.custody.paths().staging.join(info.id.as_str()).join(file);
        let mut bytes = fs::read(&p).unwrap();
        let i = bytes.len() - 20;
        bytes[i] ^= 0x40;
        fs::write(&p, &bytes).unwrap();
        let target = d.dir.path().join("target");
        fs::create_dir(&target).unwrap();
        match d.custody.restore(&info.id, &target, &dest()) {
            Err(DataError::Tampered { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{file}: expected Tampered, got {other:?}"),
        }
        assert!(
            fs::read_dir(&target).unwrap().next().is_none(),
            "{file}: something was written"
        );
    }
}

#[test]
fn wrong_or_missing_kek_is_clear_and_deletes_nothing() {
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let kek = d.custody.paths().keys.join("kek");
    let good = fs::read(&kek).unwrap();
    let target = d.dir.path().join("target");
    fs::create_dir(&target).unwrap();
    fs::write(&kek, [1u8; 32]).unwrap();
    let e = d.custody.restore(&info.id, &target, &dest()).unwrap_err();
    assert!(matches!(e, DataError::KekInvalid { .. }), "{e:?}");
    assert!(e.to_string().contains("nothing was deleted"));
    assert!(matches!(
        d.custody.ingest("C-1", "T-2", &src),
        Err(DataError::KekInvalid { .. })
    ));
    fs::remove_file(&kek).unwrap();
    let e = d.custody.restore(&info.id, &target, &dest()).unwrap_err();
    assert!(matches!(e, DataError::KekMissing(_)), "{e:?}");
    assert!(matches!(
        d.custody.ingest("C-1", "T-2", &src),
        Err(DataError::KekMissing(_))
    ));
    // Everything is still there: put the KEK back and the restore works, once only its owner
    // can read it (issue 8.18: a KEK readable or writable by group or others is refused).
    assert_eq!(d.custody.list().unwrap().len(), 1);
    fs::write(&kek, good).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
        fs::set_permissions(&kek, fs::Permissions::from_mode(mode)).unwrap();
        let e = d.custody.restore(&info.id, &target, &dest()).unwrap_err();
        assert!(matches!(e, DataError::KekExposed { .. }), "{mode:o}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("{mode:04o}")) && msg.contains(&kek.display().to_string()),
            "{msg}"
        );
        assert!(matches!(
            d.custody.ingest("C-1", "T-3", &src),
            Err(DataError::KekExposed { .. })
        ));
    }
    assert_eq!(
        d.custody.list().unwrap().len(),
        1,
        "nothing ingested under an exposed KEK"
    );
    fs::set_permissions(&kek, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(d.custody.restore(&info.id, &target, &dest()).unwrap().ok());
}

#[test]
fn concurrent_wipe_and_restore_one_is_locked() {
    let d = depot();
    let src = d.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), vec![3u8; 32 << 20]).unwrap();
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    // Deterministic: an operation holding the lock makes the other fail with Locked.
    let held = d.custody.lock(&info.id).unwrap();
    let op = WipeOptions {
        note: None,
        operator: "t".into(),
    };
    assert!(matches!(
        d.custody.force_wipe(&info.id, WipeReason::Other, &op),
        Err(DataError::Locked(_))
    ));
    assert!(matches!(
        d.custody.restore(&info.id, d.dir.path(), &dest()),
        Err(DataError::Locked(_))
    ));
    drop(held);
    // Racing for real: whichever comes second is refused (Locked), or runs after the first
    // finished (then the restore finds a wiped dataset).
    let target = d.dir.path().join("target");
    fs::create_dir(&target).unwrap();
    let id = info.id.clone();
    std::thread::scope(|s| {
        let r = s.spawn(|| d.custody.restore(&id, &target, &dest()));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let w = d.custody.force_wipe(&id, WipeReason::Other, &op);
        let r = r.join().unwrap();
        let ok = match (&r, &w) {
            (Ok(_), Err(DataError::Locked(_))) => true,
            (Err(DataError::Locked(_)), Ok(_)) => true,
            (Err(DataError::BadState { .. }), Ok(_)) => true,
            (Ok(_), Ok(_)) => true, // restore finished before the wipe started
            _ => false,
        };
        assert!(ok, "restore {r:?} / wipe {w:?}");
    });
}

#[test]
fn many_small_files() {
    // tmpfs when there is one: the point is tek's per-entry cost, not the disk's.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let custody = Custody::open(paths(dir.path())).unwrap();
    let d = Depot { dir, custody };
    let src = d.dir.path().join("src");
    for i in 0..100 {
        let sub = src.join(format!("d{i:03}"));
        fs::create_dir_all(&sub).unwrap();
        for j in 0..1000 {
            fs::write(sub.join(format!("{j}")), format!("{i}-{j}")).unwrap();
        }
    }
    let t0 = std::time::Instant::now();
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    eprintln!("ingest of 100k files: {:?}", t0.elapsed());
    assert_eq!(info.entries, 100_100);
    let target = d.dir.path().join("target");
    fs::create_dir(&target).unwrap();
    let t0 = std::time::Instant::now();
    let res = d.custody.restore(&info.id, &target, &dest()).unwrap();
    eprintln!("restore of 100k files: {:?}", t0.elapsed());
    assert!(res.ok());
    assert_eq!(res.entries_verified, 100_100);
    assert_eq!(fs::read(target.join("d042/999")).unwrap(), b"42-999");
}

#[test]
fn disk_full_during_ingest_removes_partial_and_key() {
    if !nix::unistd::geteuid().is_root() {
        tek_testkit::skip!("needs root to mount a tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(ok.success());
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(small.clone());
    let mut p = paths(dir.path());
    p.staging = small.join("staging");
    let c = Custody::open(p).unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut r = vec![0u8; 8 << 20];
    getrandom_fill(&mut r);
    fs::write(src.join("big"), &r).unwrap();
    let e = c.ingest("C-1", "T-1", &src).unwrap_err();
    assert!(e.is_disk_full(), "{e:?}");
    assert!(e.to_string().contains("No space left"), "{e}");
    let left: Vec<_> = fs::read_dir(small.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ds-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        fs::read_dir(dir.path().join("keys/datasets"))
            .unwrap()
            .count(),
        0
    );
}

fn getrandom_fill(b: &mut [u8]) {
    tek_testkit::Rng::new(0x9E37_79B9_7F4A_7C15).fill(b);
}

#[test]
fn withdrawal_backups_and_deletion_case() {
    let dir = tempfile::tempdir().unwrap();
    // Friday 2026-03-06 10:00 UTC.
    let now = time::macros::datetime!(2026-03-06 10:00 UTC);
    let cfg = |now| CustodyConfig {
        now: Some(now),
        holidays: vec![time::macros::date!(2026 - 03 - 10)],
        letterhead: client_data::Letterhead::new(
            "Depot B".into(),
            vec!["1 Road".into()],
            Some("Europe/Berlin"),
        )
        .unwrap(),
        ..Default::default()
    };
    let c = Custody::open_with(paths(dir.path()), cfg(now)).unwrap();
    assert!(matches!(
        c.withdraw("C-404", "2026-03-05", WithdrawReason::Withdrawal, "dpo"),
        Err(DataError::UnknownClient(_))
    ));
    let src = dir.path().join("src");
    sample_tree(&src);
    let a = c.ingest("C-1", "T-1", &src).unwrap();
    let other = c.ingest("C-2", "T-9", &src).unwrap();
    let backup_dir = dir.path().join("backup");
    std::fs::create_dir(&backup_dir).unwrap();
    let same_fs = BackupOptions {
        same_filesystem: true,
    };
    let bk = c.backup_keys(&backup_dir, same_fs).unwrap();
    assert_eq!(bk.datasets, 2);
    assert!(bk.file.exists());
    assert!(
        bk.expires.starts_with("2026-03-12"),
        "3 working days, Tuesday is a holiday: {}",
        bk.expires
    );
    for bad in ["2026-03-07", "06/03/2026", "2026-02-30"] {
        assert!(
            matches!(
                c.withdraw("C-1", bad, WithdrawReason::Withdrawal, "dpo"),
                Err(DataError::Invalid { .. })
            ),
            "{bad}"
        );
    }
    let w = c
        .withdraw("C-1", "2026-03-05", WithdrawReason::Withdrawal, "dpo")
        .unwrap();
    assert_eq!(
        w.case.due, "2026-03-13",
        "Thu + 5 working days, skipping the weekend and Tuesday"
    );
    assert_eq!(w.destroyed_now, vec![a.id.to_string()]);
    // The epoch holding C-1's key was rotated: C-2's key is in a new epoch, the old one is gone.
    assert_eq!(w.rotation.destroyed, vec![bk.epoch.clone()]);
    assert_eq!(w.rotation.new_epochs.len(), 1);
    assert!(!bk.file.exists());
    let epochs = c.live_epochs().unwrap();
    assert_eq!(epochs.len(), 1);
    assert_eq!(epochs[0].datasets, vec![other.id.to_string()]);
    assert_eq!(w.case.state, "complete");
    assert_eq!(
        w.case.backup_unreadable_at.as_deref(),
        Some("2026-03-06T10:00:00Z")
    );
    assert_eq!(c.dataset(&a.id).unwrap().state, DatasetState::Withdrawn);
    assert_eq!(c.dataset(&other.id).unwrap().state, DatasetState::Staged);
    assert!(matches!(
        c.ingest("C-1", "T-2", &src),
        Err(DataError::ClientWithdrawn(_))
    ));
    let conf = PathBuf::from(w.case.confirmation.clone().unwrap());
    assert!(conf.exists());
    let page = fs::read_to_string(conf.with_extension("html")).unwrap();
    for want in [
        "Confirmation of deletion",
        "Depot B",
        "1 Road",
        "All data of client C-1 held by Depot B has been deleted",
        "withdrawal of consent",
        "destroyed 2026-03-06 11:00:00 CET",
        "For Depot B (signature)",
        "Times are in Europe/Berlin.",
    ] {
        assert!(page.contains(want), "missing {want:?} in\n{page}");
    }
    // Prune before expiry does nothing; after, the rotated epoch goes too.
    assert!(c.prune().unwrap().is_empty());
    let later = Custody::open_with(
        paths(dir.path()),
        cfg(time::macros::datetime!(2026-03-12 11:00 UTC)),
    )
    .unwrap();
    assert_eq!(
        later.prune().unwrap(),
        vec![w.rotation.new_epochs[0].epoch.clone()]
    );
    assert_eq!(later.deletions().unwrap()[0].state, "complete");
    later.reactivate("C-1").unwrap();
    later.ingest("C-1", "T-3", &src).unwrap();
    later.audit().verify().unwrap();
}

#[test]
fn breach_report_on_100k_entries_is_fast() {
    let d = depot();
    let events = (0..100_000u64).map(|i| {
        if i % 2 == 0 {
            client_data::AuditEvent::Ingest {
                dataset: format!("ds-{i}"),
                client: format!("C-{}", i % 97),
                ticket: format!("T-{i}"),
                entries: i,
                bytes: i * 100,
                ciphertext_bytes: i * 101,
                source: "tar".into(),
            }
        } else {
            client_data::AuditEvent::Wipe {
                dataset: format!("ds-{}", i - 1),
                client: format!("C-{}", (i - 1) % 97),
                ticket: format!("T-{}", i - 1),
                forced: false,
                reason: None,
                operator: "agent".into(),
                ciphertext_bytes: 1,
                record: "r".into(),
            }
        }
    });
    d.custody.audit().append_many(events).unwrap();
    let t0 = std::time::Instant::now();
    let now = time::OffsetDateTime::now_utc();
    let r = client_data::BreachReport::build(
        d.custody.audit(),
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
    )
    .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.audit_entries, 100_000);
    assert_eq!(r.dataset_count(), 50_000);
    // Loose bound (debug build, shared machine); the bench script times the release build.
    assert!(took.as_secs() < 20, "breach report took {took:?}");
    assert_eq!(d.custody.audit().verify().unwrap().entries, 100_000);
}
