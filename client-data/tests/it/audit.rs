//! The audit log against an attacker with a text editor and `b3sum`: edited, deleted, reordered,
//! inserted, edited-and-rechained and truncated logs; format 1 lines; the journal copy; free text;
//! the key; concurrent appenders.
use std::path::Path;

use client_data::audit::{AUDIT_VERSION, journal, secret_path};
use client_data::{AuditEvent, AuditLog, AuditPublicKey, DataError, WipeReason};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_KEY: &str = ",\"hash\":\"";

/// Splits a line into (body that was hashed, stated hash).
fn split_line(line: &str) -> Option<(String, &str)> {
    let pos = line.rfind(HASH_KEY)?;
    let hash = line[pos + HASH_KEY.len()..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..pos]), hash))
}

fn ev(i: u64) -> AuditEvent {
    AuditEvent::Verify {
        dataset: format!("ds-{i}"),
        entries: i,
        bytes: i * 10,
        mismatches: 0,
        result: "passed".into(),
    }
}

fn log_in(d: &Path) -> AuditLog {
    AuditLog::open(&d.join("audit"), &d.join("keys"))
        .unwrap()
        .with_journal_socket(None)
}

fn log_with(n: u64) -> (tempfile::TempDir, AuditLog) {
    let d = tempfile::tempdir().unwrap();
    let log = log_in(d.path());
    for i in 0..n {
        log.append(ev(i)).unwrap();
    }
    (d, log)
}

fn lines(log: &AuditLog) -> Vec<String> {
    std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(log: &AuditLog, l: &[String]) {
    std::fs::write(log.path(), l.join("\n") + "\n").unwrap();
}

/// What `b3sum` and a text editor can do: recompute every `prev` and `hash`.
fn rechain(l: &[String]) -> Vec<String> {
    let mut prev = GENESIS.to_string();
    l.iter()
        .map(|line| {
            let (body, _) = split_line(line).unwrap();
            let at = body.find("\"prev\":\"").unwrap() + 8;
            let body = format!("{}{prev}{}", &body[..at], &body[at + 64..]);
            let hash = blake3::hash(body.as_bytes()).to_hex().to_string();
            prev = hash.clone();
            format!("{}{HASH_KEY}{hash}\"}}", &body[..body.len() - 1])
        })
        .collect()
}

fn bad_line(log: &AuditLog) -> u64 {
    match log.verify() {
        Err(DataError::AuditBroken { line, .. }) => line,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn chain_verifies_and_roundtrips() {
    let (_d, log) = log_with(5);
    let head = log.verify().unwrap();
    assert_eq!(head.entries, 5);
    assert_eq!(head.unsigned_entries, 0);
    assert_eq!(head.signed_head.as_ref().unwrap().hash, head.hash);
    assert_eq!(log.head().unwrap().hash, head.hash);
    let recs: Vec<_> = log.records().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(recs[3].event, ev(3));
    assert_eq!(recs[3].prev, recs[2].hash);
    assert_eq!(recs[3].v, AUDIT_VERSION);
}

#[test]
fn edited_entry_is_named() {
    let (_d, log) = log_with(5);
    let mut l = lines(&log);
    l[2] = l[2].replace("\"bytes\":20", "\"bytes\":21");
    write_lines(&log, &l);
    assert_eq!(bad_line(&log), 3);
}

#[test]
fn deleted_reordered_inserted_are_named() {
    let (_d, log) = log_with(5);
    let orig = lines(&log);
    let mut l = orig.clone();
    l.remove(1);
    write_lines(&log, &l);
    assert_eq!(bad_line(&log), 2);
    let mut l = orig.clone();
    l.swap(2, 3);
    write_lines(&log, &l);
    assert_eq!(bad_line(&log), 3);
    let mut l = orig.clone();
    l.insert(4, orig[1].clone());
    write_lines(&log, &l);
    assert_eq!(bad_line(&log), 5);
}

#[test]
fn edited_and_rechained_fails_at_the_signature() {
    // 150 entries: a checkpoint at seq 99, the signed head at seq 149.
    let (_d, log) = log_with(150);
    assert_eq!(log.verify().unwrap().checkpoint.unwrap().seq, 99);
    let orig = lines(&log);
    let mut l = orig.clone();
    l[10] = l[10].replace("\"bytes\":100", "\"bytes\":7");
    write_lines(&log, &rechain(&l));
    match log.verify() {
        Err(DataError::AuditBroken {
            line, seq, reason, ..
        }) => {
            assert_eq!((line, seq), (100, 99));
            assert!(reason.contains("checkpoint signed at"), "{reason}");
        }
        other => panic!("expected a signature failure, got {other:?}"),
    }
    // After the last checkpoint only the signed head holds it.
    let mut l = orig.clone();
    l[120] = l[120].replace("\"bytes\":1200", "\"bytes\":7");
    write_lines(&log, &rechain(&l));
    assert_eq!(bad_line(&log), 150);
    // The original still verifies (rechain itself is faithful).
    write_lines(&log, &rechain(&orig));
    log.verify().unwrap();
}

#[test]
fn truncation_is_detected() {
    let (_d, log) = log_with(150);
    let orig = lines(&log);
    write_lines(&log, &orig[..140]);
    match log.verify() {
        Err(DataError::AuditTruncated {
            entries,
            signed,
            what,
            ..
        }) => {
            assert_eq!((entries, signed, what), (140, 150, "the head"));
        }
        other => panic!("expected truncation, got {other:?}"),
    }
    // The head file replaced by a forged (unsigned) one: its signature fails.
    let mut h: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log.head_path()).unwrap()).unwrap();
    h["seq"] = 139.into();
    h["hash"] = orig[139][orig[139].len() - 66..orig[139].len() - 2].into();
    std::fs::write(log.head_path(), h.to_string()).unwrap();
    assert!(matches!(
        log.verify(),
        Err(DataError::AuditCheckpoint { .. })
    ));
    // Head file deleted too, cut below the checkpoint: the checkpoint still tells.
    std::fs::remove_file(log.head_path()).unwrap();
    write_lines(&log, &orig[..60]);
    match log.verify() {
        Err(DataError::AuditTruncated {
            entries,
            signed,
            what,
            ..
        }) => {
            assert_eq!((entries, signed, what), (60, 100, "the last checkpoint"));
        }
        other => panic!("expected truncation, got {other:?}"),
    }
}

#[test]
fn append_refuses_a_cut_or_edited_tail_and_names_unsigned_entries() {
    let (_d, log) = log_with(5);
    let orig = lines(&log);
    let head_of_5 = std::fs::read(log.head_path()).unwrap();
    // Cut: appending would overwrite what the head signed.
    write_lines(&log, &orig[..3]);
    assert!(matches!(
        log.append(ev(9)),
        Err(DataError::AuditTruncated {
            entries: 3,
            signed: 5,
            ..
        })
    ));
    assert_eq!(lines(&log).len(), 3, "nothing appended");
    // Last entry edited and rechained: refused too.
    let mut l = orig.clone();
    l[4] = l[4].replace("\"bytes\":40", "\"bytes\":1");
    write_lines(&log, &rechain(&l));
    assert!(matches!(
        log.append(ev(9)),
        Err(DataError::AuditCheckpoint { .. })
    ));
    // A crash between an append and its head update: the old head is back, the entries
    // after it are named before they get signed.
    write_lines(&log, &orig);
    log.append(ev(5)).unwrap();
    log.append(ev(6)).unwrap();
    std::fs::write(log.head_path(), &head_of_5).unwrap();
    assert_eq!(log.verify().unwrap().unsigned_entries, 2);
    log.append(ev(7)).unwrap();
    let recs: Vec<_> = log.records().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(
        recs[7].event,
        AuditEvent::UnsignedEntries { from: 5, to: 6 }
    );
    let head = log.verify().unwrap();
    assert_eq!((head.entries, head.unsigned_entries), (9, 0));
}

#[test]
fn format_1_log_continues_in_format_2() {
    let d = tempfile::tempdir().unwrap();
    let log = log_in(d.path());
    // Two lines exactly as version 1 wrote them (free device path, free wipe reason).
    let v1 = [
        r#"{"v":1,"seq":0,"time":"2026-03-01T10:00:00Z","prev":"PREV","event":"migrate","dataset":"ds-1","client":"C-1","ticket":"T-1","job":"j-1","device":"/dev/sdb","device_serial":"S1","entries":1,"bytes":2,"skipped":0}"#,
        r#"{"v":1,"seq":1,"time":"2026-03-01T10:00:01Z","prev":"PREV","event":"wipe","dataset":"ds-1","client":"C-1","ticket":"T-1","forced":true,"reason":"client took the disk","operator":"op","ciphertext_bytes":9,"record":"san-ds-1"}"#,
    ];
    let mut prev = GENESIS.to_string();
    let mut text = String::new();
    for l in v1 {
        let body = l.replace("PREV", &prev);
        let hash = blake3::hash(body.as_bytes()).to_hex().to_string();
        text.push_str(&format!(
            "{}{HASH_KEY}{hash}\"}}\n",
            &body[..body.len() - 1]
        ));
        prev = hash;
    }
    std::fs::write(log.path(), text).unwrap();
    // A legacy log has no signatures yet, and verifies.
    assert_eq!(log.verify().unwrap().unsigned_entries, 2);
    log.append(ev(2)).unwrap();
    let head = log.verify().unwrap();
    // The first new entry says that the two before it were never signed.
    assert_eq!((head.entries, head.unsigned_entries), (4, 0));
    let recs: Vec<_> = log.records().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!((recs[0].v, recs[2].v), (1, 2));
    assert_eq!(
        recs[2].event,
        AuditEvent::UnsignedEntries { from: 0, to: 1 }
    );
    assert_eq!(recs[3].event, ev(2));
    match &recs[0].event {
        AuditEvent::Migrate { device, .. } => {
            assert_eq!(device.serial.as_deref(), Some("S1"));
            assert_eq!(device.name.as_deref(), Some("sdb"));
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        recs[1].event,
        AuditEvent::Wipe {
            reason: Some(WipeReason::Other),
            ..
        }
    ));
    // A format 1 line after a format 2 line is refused.
    let l = lines(&log);
    let mut back = l.clone();
    back.push(l[0].replace("\"seq\":0", "\"seq\":4"));
    write_lines(&log, &rechain(&back));
    assert!(matches!(
        log.verify(),
        Err(DataError::AuditBroken { line: 5, .. })
    ));
}

#[test]
fn free_text_is_refused_before_writing() {
    let (_d, log) = log_with(1);
    let e = log
        .append(AuditEvent::JobFinished {
            job: "j-1".into(),
            ticket: "Jane Doe, jane.doe@example.com, +44 20".into(),
            dataset: None,
            result: "done".into(),
        })
        .unwrap_err();
    assert!(
        matches!(e, DataError::Invalid { what: "ticket", .. }),
        "{e}"
    );
    assert_eq!(lines(&log).len(), 1);
}

#[test]
fn missing_key_is_an_error_not_a_new_key() {
    let (d, log) = log_with(3);
    std::fs::remove_file(secret_path(&d.path().join("keys"))).unwrap();
    let e = log.append(ev(3)).unwrap_err();
    assert!(matches!(e, DataError::AuditKey { .. }), "{e}");
    assert_eq!(lines(&log).len(), 3, "nothing written without the key");
    std::fs::remove_file(log.public_key_path()).unwrap();
    assert!(matches!(log.verify(), Err(DataError::AuditKey { .. })));
    // A key kept elsewhere that is not the depot's: every signature fails.
    let other = tempfile::tempdir().unwrap();
    let o = log_in(other.path());
    o.append(ev(0)).unwrap();
    let pk = AuditPublicKey::load(&o.public_key_path()).unwrap();
    assert!(matches!(
        log.verify_with(Some(&pk)),
        Err(DataError::AuditCheckpoint { .. })
    ));
}

#[test]
fn journal_gets_every_entry_with_its_message_id() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("journal.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let log = log_in(d.path()).with_journal_socket(Some(sock));
    log.append(ev(0)).unwrap();
    let cp = log.checkpoint().unwrap().unwrap();
    let mut buf = vec![0u8; 65536];
    let n = rx.recv(&mut buf).unwrap();
    let got = String::from_utf8(buf[..n].to_vec()).unwrap();
    let line = &lines(&log)[0];
    assert!(
        got.contains(&format!("MESSAGE_ID={}\n", journal::ENTRY_MESSAGE_ID)),
        "{got}"
    );
    assert!(got.contains(&format!("TEK_AUDIT_LINE={line}\n")), "{got}");
    assert!(got.contains("TEK_AUDIT_SEQ=0\nTEK_AUDIT_HASH="), "{got}");
    let n = rx.recv(&mut buf).unwrap();
    let got = String::from_utf8(buf[..n].to_vec()).unwrap();
    assert!(got.contains(journal::CHECKPOINT_MESSAGE_ID), "{got}");
    assert!(got.contains(&cp.signature), "{got}");
}

#[test]
fn concurrent_appenders_keep_one_signed_chain() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let log = log_in(&dir);
                for i in 0..60 {
                    log.append(ev(t * 1000 + i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = log_in(&dir);
    let head = log.verify().unwrap();
    assert_eq!((head.entries, head.unsigned_entries), (240, 0));
    assert_eq!(head.checkpoints, 2);
    assert_eq!(log.head().unwrap(), head);
}

#[test]
fn batch_append_chains() {
    let (_d, log) = log_with(2);
    log.append_many((2..100).map(ev)).unwrap();
    log.append(ev(100)).unwrap();
    let head = log.verify().unwrap();
    assert_eq!(head.entries, 101);
    assert_eq!(head.checkpoint.unwrap().seq, 99);
}

#[test]
fn append_checkpointed_keeps_the_checkpoint_of_its_own_entry() {
    let (_d, log) = log_with(3);
    assert_eq!(log.verify().unwrap().checkpoints, 0);
    let cp = log.append_checkpointed(ev(3)).unwrap();
    assert_eq!(cp.seq, 3);
    assert_eq!(cp.hash, lines(&log)[3][lines(&log)[3].len() - 66..][..64]);
    let head = log.verify().unwrap();
    assert_eq!((head.checkpoints, head.checkpoint), (1, Some(cp)));
}

#[test]
fn a_journal_that_does_not_read_never_stalls_appends() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("journal.sock");
    // Bound, never read: its queue fills after a few datagrams.
    let _rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    let log = log_in(d.path()).with_journal_socket(Some(sock));
    let t0 = std::time::Instant::now();
    log.append_many((0..500).map(ev)).unwrap();
    for i in 500..505 {
        log.append(ev(i)).unwrap();
    }
    // One timeout per append at most, not one per entry.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(log.verify().unwrap().entries, 505);
}
