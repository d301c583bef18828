//! Withdrawals against ingests in flight, one case per client and date, key-backup rotation,
//! and the backup directory checks. Each test checks the records themselves (staging, keys,
//! cases, the audit log file) besides what the API returned. The tmpfs test needs root and says
//! so when it skips; CI runs as root.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client_data::{BackupOptions, Custody, CustodyConfig, DataError, DatasetState, WithdrawReason};

use crate::common::*;

fn open(root: &Path, now: time::OffsetDateTime, wait: Duration) -> Custody {
    Custody::open_with(
        paths(root),
        CustodyConfig {
            now: Some(now),
            withdraw_wait: wait,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The audit log's entries of one kind, read from the file.
fn audit_entries(root: &Path, event: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(root.join("audit/audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == event)
        .collect()
}

fn partials(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect()
}

fn key_files(root: &Path) -> Vec<String> {
    match fs::read_dir(root.join("keys/datasets")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tar with one 4 MiB file, and a FIFO an ingest reads it from, fed by the test.
struct SlowSource {
    fifo: PathBuf,
    tar: Vec<u8>,
}

impl SlowSource {
    fn new(dir: &Path) -> SlowSource {
        let fifo = dir.join("source.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        SlowSource {
            fifo,
            tar: tar_of(&[file_entry(b"big.bin", &data)]),
        }
    }
}

const NOW: time::OffsetDateTime = time::macros::datetime!(2026-03-11 10:00 UTC);

#[test]
fn withdrawal_waits_for_an_ingest_in_flight_which_discards_itself() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let c = open(&root, NOW, Duration::from_secs(20));
    let src = dir.path().join("src");
    sample_tree(&src);
    let first = c.ingest("C-1", "T-1", &src).unwrap();
    let slow = SlowSource::new(dir.path());
    std::thread::scope(|s| {
        let ingest = s.spawn(|| open(&root, NOW, Duration::ZERO).ingest("C-1", "T-2", &slow.fifo));
        let mut w = fs::OpenOptions::new().write(true).open(&slow.fifo).unwrap();
        w.write_all(&slow.tar[..1 << 20]).unwrap();
        wait_for("the partial dataset", || !partials(&root).is_empty());
        let withdraw = s.spawn(|| {
            open(&root, NOW, Duration::from_secs(20)).withdraw(
                "C-1",
                "2026-03-10",
                WithdrawReason::Withdrawal,
                "dpo",
            )
        });
        wait_for("the withdrawn mark", || c.client_withdrawn("C-1").unwrap());
        // The withdrawal is now waiting for the ingest; the ingest gets the rest of its data.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !withdraw.is_finished(),
            "withdraw did not wait for the ingest"
        );
        let _ = w.write_all(&slow.tar[1 << 20..]);
        drop(w);
        let e = ingest.join().unwrap().unwrap_err();
        assert!(
            matches!(e, DataError::WithdrawnDuringIngest { ref client, .. } if client == "C-1"),
            "{e}"
        );
        let w = withdraw.join().unwrap().unwrap();
        assert_eq!(w.destroyed_now, vec![first.id.to_string()]);
        assert_eq!(w.case.state, "complete", "{:?}", w.case);
        assert!(w.case.pending.is_empty());
    });
    // The records, independently.
    let list = c.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].state, DatasetState::Withdrawn);
    assert!(partials(&root).is_empty());
    assert!(key_files(&root).is_empty(), "{:?}", key_files(&root));
    assert_eq!(audit_entries(&root, "ingest").len(), 1);
    let wd = audit_entries(&root, "withdraw");
    assert_eq!(wd.len(), 1);
    assert_eq!(wd[0]["datasets"], 1);
    c.audit().verify().unwrap();
}

#[test]
fn withdrawal_that_cannot_wait_destroys_the_partial_key_and_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let c = open(&root, NOW, Duration::from_millis(300));
    let src = dir.path().join("src");
    sample_tree(&src);
    c.ingest("C-1", "T-1", &src).unwrap();
    let slow = SlowSource::new(dir.path());
    std::thread::scope(|s| {
        let ingest = s.spawn(|| open(&root, NOW, Duration::ZERO).ingest("C-1", "T-2", &slow.fifo));
        let mut w = fs::OpenOptions::new().write(true).open(&slow.fifo).unwrap();
        w.write_all(&slow.tar[..1 << 20]).unwrap();
        wait_for("the partial dataset", || !partials(&root).is_empty());
        let partial_id = partials(&root)[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".partial")
            .to_string();
        // The ingest is blocked reading its source: the withdrawal gives up waiting.
        let wd = c
            .withdraw("C-1", "2026-03-10", WithdrawReason::Withdrawal, "dpo")
            .unwrap();
        assert_eq!(wd.case.state, "open");
        assert_eq!(wd.case.pending, vec![partial_id.clone()]);
        assert!(
            !key_files(&root).contains(&format!("{partial_id}.key")),
            "the partial's key must be destroyed at once"
        );
        assert_eq!(c.deletions().unwrap()[0].state, "open");
        let _ = w.write_all(&slow.tar[1 << 20..]);
        drop(w);
        let e = ingest.join().unwrap().unwrap_err();
        assert!(matches!(e, DataError::WithdrawnDuringIngest { .. }), "{e}");
    });
    let cases = c.deletions().unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].state, "complete", "{:?}", cases[0]);
    assert!(partials(&root).is_empty());
    assert!(key_files(&root).is_empty());
    assert!(
        c.list()
            .unwrap()
            .iter()
            .all(|d| d.state == DatasetState::Withdrawn)
    );
}

#[test]
fn withdrawing_twice_keeps_one_case_and_every_count_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let c = open(&root, NOW, Duration::from_secs(5));
    let src = dir.path().join("src");
    sample_tree(&src);
    let a = c.ingest("C-1", "T-1", &src).unwrap();
    let first = c
        .withdraw("C-1", "2026-03-10", WithdrawReason::Withdrawal, "dpo")
        .unwrap();
    assert!(!first.existing_case);
    assert_eq!(first.destroyed_now, vec![a.id.to_string()]);
    let second = c
        .withdraw("C-1", "2026-03-10", WithdrawReason::Withdrawal, "dpo")
        .unwrap();
    assert!(second.existing_case);
    assert_eq!(second.case.case, first.case.case);
    assert!(second.destroyed_now.is_empty());
    assert_eq!(second.case.datasets, vec![a.id.to_string()]);
    let cases = c.deletions().unwrap();
    assert_eq!(cases.len(), 1, "{cases:?}");
    assert_eq!(fs::read_dir(root.join("staging/cases")).unwrap().count(), 1);
    let audited: Vec<_> = audit_entries(&root, "withdraw")
        .iter()
        .map(|v| {
            (
                v["case"].as_str().unwrap().to_string(),
                v["datasets"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        audited,
        vec![(first.case.case.clone(), 1), (first.case.case.clone(), 0)]
    );
    // Another received date is another request: its own case.
    let third = c
        .withdraw("C-1", "2026-03-11", WithdrawReason::Termination, "dpo")
        .unwrap();
    assert_ne!(third.case.case, first.case.case);
    assert_eq!(c.deletions().unwrap().len(), 2);
}

/// Received Thursday 03-05 (due Thursday 03-12), key backup taken Wednesday 03-11 (its epoch
/// lives until Monday 03-16), withdrawal processed 03-11.
fn backup_between_receipt_and_processing(root: &Path, backup_dir: &Path) -> (Custody, String) {
    let c = open(root, NOW, Duration::from_secs(5));
    let src = root.join("../src");
    if !src.exists() {
        sample_tree(&src);
    }
    c.ingest("C-1", "T-1", &src).unwrap();
    let other = c.ingest("C-2", "T-2", &src).unwrap();
    let bk = c
        .backup_keys(
            backup_dir,
            BackupOptions {
                same_filesystem: true,
            },
        )
        .unwrap();
    assert!(bk.expires.starts_with("2026-03-16"), "{}", bk.expires);
    (c, other.id.to_string())
}

#[test]
fn withdrawal_rotates_key_backups_so_they_are_unreadable_by_the_due_date() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let backup_dir = dir.path().join("backup");
    fs::create_dir(&backup_dir).unwrap();
    let (c, other) = backup_between_receipt_and_processing(&root, &backup_dir);
    let old = c.live_epochs().unwrap();
    assert_eq!(old.len(), 1);
    let w = c
        .withdraw("C-1", "2026-03-05", WithdrawReason::Withdrawal, "dpo")
        .unwrap();
    assert_eq!(w.case.due, "2026-03-12");
    assert_eq!(w.rotation.destroyed, vec![old[0].epoch.clone()]);
    assert_eq!(w.case.state, "complete", "{:?}", w.case);
    assert!(w.case.backups_in_time());
    assert_eq!(w.case.backup_unreadable_date(), "2026-03-11");
    // The records: the old epoch key and backup file are gone; the new epoch holds only C-2.
    assert!(
        !root
            .join(format!("keys/epochs/{}.json", old[0].epoch))
            .exists()
    );
    let files: Vec<_> = fs::read_dir(&backup_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(!files[0].contains(&old[0].epoch));
    let now = c.live_epochs().unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].datasets, vec![other]);
    let rot = audit_entries(&root, "backup_rotated");
    assert_eq!(rot.len(), 1);
    assert_eq!(rot[0]["destroyed"][0], old[0].epoch.as_str());
    c.audit().verify().unwrap();
}

#[test]
fn backups_that_cannot_be_rotated_flag_the_case_with_date_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let backup_dir = dir.path().join("backup");
    fs::create_dir(&backup_dir).unwrap();
    let (c, _) = backup_between_receipt_and_processing(&root, &backup_dir);
    // The backup volume is not mounted at withdrawal time.
    let away = dir.path().join("backup-unmounted");
    fs::rename(&backup_dir, &away).unwrap();
    let w = c
        .withdraw("C-1", "2026-03-05", WithdrawReason::Withdrawal, "dpo")
        .unwrap();
    assert!(w.rotation.destroyed.is_empty());
    assert_eq!(w.case.state, "open");
    assert!(!w.case.backups_in_time());
    assert_eq!(w.case.backup_unreadable_date(), "2026-03-16");
    let late = w.case.backup_late.clone().expect("flagged");
    assert!(
        late.contains("2026-03-16")
            && late.contains("2026-03-12")
            && late.contains("does not exist"),
        "{late}"
    );
    // Stored in the case file too.
    let stored =
        fs::read_to_string(root.join(format!("staging/cases/{}.json", w.case.case))).unwrap();
    assert!(stored.contains("does not exist"), "{stored}");
    // Once the volume is back, the next look at the cases rotates and completes.
    fs::rename(&away, &backup_dir).unwrap();
    let cases = c.deletions().unwrap();
    assert_eq!(cases[0].state, "complete", "{:?}", cases[0]);
    assert!(cases[0].backups_in_time());
}

#[test]
fn backup_directory_must_exist_and_be_another_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let c = open(&root, NOW, Duration::from_secs(5));
    let src = dir.path().join("src");
    sample_tree(&src);
    c.ingest("C-1", "T-1", &src).unwrap();
    let missing = dir.path().join("mnt/backup");
    let e = c
        .backup_keys(&missing, BackupOptions::default())
        .unwrap_err();
    assert!(matches!(e, DataError::BackupTarget { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = c
        .backup_keys(
            &missing,
            BackupOptions {
                same_filesystem: true,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!missing.exists() && !dir.path().join("mnt").exists());
    let local = dir.path().join("local");
    fs::create_dir(&local).unwrap();
    let e = c.backup_keys(&local, BackupOptions::default()).unwrap_err();
    assert!(e.to_string().contains("same filesystem"), "{e}");
    assert_eq!(fs::read_dir(&local).unwrap().count(), 0);
    assert!(c.live_epochs().unwrap().is_empty());
    assert!(audit_entries(&root, "backup").is_empty());
    if !nix::unistd::geteuid().is_root() {
        tek_testkit::skip!("the tmpfs half: needs root to mount");
        return;
    }
    let mnt = dir.path().join("tmpfs");
    fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tek-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let b = c.backup_keys(&mnt, BackupOptions::default()).unwrap();
    assert_eq!(b.datasets, 1);
    assert!(!b.same_filesystem);
    assert!(b.file.starts_with(&mnt) && b.file.exists());
}

#[test]
fn key_backups_racing_a_withdrawal_never_keep_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let backup_dir = dir.path().join("backup");
    fs::create_dir(&backup_dir).unwrap();
    let c = open(&root, NOW, Duration::from_secs(5));
    let src = dir.path().join("src");
    sample_tree(&src);
    let mut mine = Vec::new();
    for t in ["T-1", "T-2", "T-3"] {
        mine.push(c.ingest("C-1", t, &src).unwrap().id.to_string());
    }
    c.ingest("C-2", "T-9", &src).unwrap();
    let opts = BackupOptions {
        same_filesystem: true,
    };
    std::thread::scope(|s| {
        let backups = s.spawn(|| {
            let b = open(&root, NOW, Duration::from_secs(5));
            (0..12)
                .map(|_| b.backup_keys(&backup_dir, opts).map(|k| k.epoch))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(20));
        let w = c
            .withdraw("C-1", "2026-03-10", WithdrawReason::Withdrawal, "dpo")
            .unwrap();
        assert_eq!(w.destroyed_now.len(), 3);
        for r in backups.join().unwrap() {
            r.unwrap();
        }
    });
    // Whatever interleaving: no unpruned epoch holds a key of the withdrawn client.
    let cases = c.deletions().unwrap();
    for e in c.live_epochs().unwrap() {
        assert!(
            !e.datasets.iter().any(|d| mine.contains(d)),
            "epoch {} still holds a withdrawn key: {:?}",
            e.epoch,
            e.datasets
        );
    }
    assert_eq!(cases[0].state, "complete", "{:?}", cases[0]);
    // And every backup file on the volume belongs to an epoch that exists.
    let live: Vec<String> = c
        .live_epochs()
        .unwrap()
        .into_iter()
        .map(|e| e.epoch)
        .collect();
    for f in fs::read_dir(&backup_dir).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            live.iter().any(|e| name.contains(e.as_str())),
            "stray {name}"
        );
    }
}

#[test]
fn two_withdrawals_at_once_open_one_case() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let c = open(&root, NOW, Duration::from_secs(5));
    let src = dir.path().join("src");
    sample_tree(&src);
    for t in ["T-1", "T-2"] {
        c.ingest("C-1", t, &src).unwrap();
    }
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    open(&root, NOW, Duration::from_secs(5)).withdraw(
                        "C-1",
                        "2026-03-10",
                        WithdrawReason::Withdrawal,
                        "dpo",
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    let cases = c.deletions().unwrap();
    assert_eq!(cases.len(), 1, "{cases:?}");
    assert!(results.iter().all(|w| w.case.case == cases[0].case));
    assert_eq!(results.iter().filter(|w| !w.existing_case).count(), 1);
    let destroyed: usize = results.iter().map(|w| w.destroyed_now.len()).sum();
    assert_eq!(destroyed, 2, "each dataset destroyed exactly once");
    let audited: u64 = audit_entries(&root, "withdraw")
        .iter()
        .map(|v| v["datasets"].as_u64().unwrap())
        .sum();
    assert_eq!(audited, 2);
    assert_eq!(audit_entries(&root, "wipe").len(), 2);
}

#[test]
fn parallel_first_ingests_register_the_client_once_and_a_withdrawal_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depot");
    let c = open(&root, NOW, Duration::from_secs(5));
    let src = dir.path().join("src");
    sample_tree(&src);
    // The KEK is made first: its own first-ingest race is another finding (8.3).
    c.ingest("C-0", "T-0", &src).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let (root, src) = (&root, &src);
                s.spawn(move || {
                    open(root, NOW, Duration::ZERO).ingest("C-new", &format!("T-{i}"), src)
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap().unwrap();
        }
    });
    let names: Vec<_> = fs::read_dir(root.join("staging/clients"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.contains("C-new")).count(),
        1,
        "{names:?}"
    );
    let w = c
        .withdraw("C-new", "2026-03-10", WithdrawReason::Withdrawal, "dpo")
        .unwrap();
    assert_eq!(w.destroyed_now.len(), 4);
}
