use super::*;
use crate::job::{DeviceRecord, JobTarget};
use client_data::loopdev::{LoopDevice, can_attach};

#[test]
fn an_invalid_signature_is_refused_whatever_the_policy() {
    let r: ImageRef = "img@1".parse().unwrap();
    let invalid = SignatureStatus::Invalid {
        reason: "bad".into(),
    };
    for allow in [false, true] {
        let e = signature_allowed(&r, &invalid, allow).unwrap_err();
        assert!(e.to_string().contains("invalid signature"), "{e}");
    }
    let unsigned = SignatureStatus::Unsigned;
    assert!(signature_allowed(&r, &unsigned, true).is_ok());
    let e = signature_allowed(&r, &unsigned, false).unwrap_err();
    assert!(e.to_string().contains("(unsigned)"), "{e}");
}

/// A real loop device: the job's recorded diskseq passes, any other (a re-attach) fails.
#[test]
fn migrate_refuses_a_node_that_now_reaches_another_disk() {
    if !can_attach() {
        tek_testkit::skip!("needs root and /dev/loop-control");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("disk");
    std::fs::File::create(&f).unwrap().set_len(1 << 20).unwrap();
    let dev = LoopDevice::attach(&f).unwrap();
    let seq: u64 = std::fs::read_to_string(format!("/sys/class/block/{}/diskseq", dev.name()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut job = Job::new("T-1", "img@1", None, JobTarget::Bay("b".into()));
    still_the_detected_disk(&job, dev.path()).expect("no record: nothing to compare");
    job.device = Some(DeviceRecord {
        name: dev.name(),
        dev_path: dev.path().display().to_string(),
        identity: "x".into(),
        bus: blockdev::Bus::Virtual,
        model: "loop".into(),
        serial: None,
        wwn: None,
        size_bytes: 1 << 20,
        bay: None,
        diskseq: Some(seq),
    });
    still_the_detected_disk(&job, dev.path()).unwrap();
    job.device.as_mut().unwrap().diskseq = Some(seq.wrapping_sub(1));
    let e = still_the_detected_disk(&job, dev.path()).unwrap_err();
    assert!(
        e.to_string().contains("changed since it was detected"),
        "{e}"
    );
}

#[test]
fn legacy_free_text_ticket_is_not_audited() {
    let j = Job::new("T-1", "a@1", None, JobTarget::Bay("b".into()));
    assert_eq!(audit_ticket(&j), "T-1");
    let mut j = j;
    j.ticket = "Jane Doe, jane.doe@example.com".into();
    let t = audit_ticket(&j);
    assert!(t.starts_with("unchecked-") && t.len() == 26, "{t}");
    client_data::dataset::check_ident("ticket", &t).unwrap();
}
