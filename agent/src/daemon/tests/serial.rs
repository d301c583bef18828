//! Daemon tests of serial-number jobs: they only ever take a disk in a bay that accepts them,
//! never one outside every bay (an internal disk), whatever the job names.

use super::*;

/// A disk with a serial on `bus`, in bay `a` (`in_bay_a`) or outside every bay.
fn serial_disk(name: &str, bus: &str, serial: &str, in_bay_a: bool) -> DiskInfo {
    let mut d = if in_bay_a {
        loop_disk(name, &format!("/t/a-{name}.img"))
    } else {
        test_disk(name)
    };
    d.bus = bus.parse().unwrap();
    d.serial = Some(serial.into());
    d
}

#[test]
fn serial_jobs_only_on_allowed_buses() {
    let d = tempfile::tempdir().unwrap();
    let a = agent(d.path(), fake(0));
    let j = a
        .add_job("T", "img@1", None, None, Some("SER1".into()))
        .unwrap();
    a.disk_present(serial_disk("sdd", "ata", "SER1", true));
    assert_eq!(
        status_of(&a, "sdd"),
        DiskStatus::Waiting {
            reason: "waiting for a job".into()
        },
        "ata is not an allowed bus here"
    );
    a.disk_gone("sdd");
    a.disk_present(serial_disk("sde", "usb", "SER1", true));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Done);
}

#[test]
fn serial_job_never_takes_a_disk_outside_every_bay() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(0);
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", None, None, Some("INTERNAL1".into()))
        .unwrap();
    // An internal disk: allowed bus, the job's serial, but in no bay.
    a.disk_present(serial_disk("nvme0n1", "usb", "INTERNAL1", false));
    let DiskStatus::Ignored { reason } = status_of(&a, "nvme0n1") else {
        panic!("{:?}", status_of(&a, "nvme0n1"));
    };
    assert!(
        reason.contains("not in a bench bay") && reason.contains(j.id.as_str()),
        "{reason}"
    );
    assert_eq!(f.checks.load(Ordering::SeqCst), 0, "not even checked");
    assert_eq!(f.writes.load(Ordering::SeqCst), 0);
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Queued);
    // The same serial in a bay gets the job.
    a.disk_present(serial_disk("sdf", "usb", "INTERNAL2", true));
    a.disk_gone("nvme0n1");
    a.disk_present(serial_disk("sdg", "usb", "INTERNAL1", true));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Done);
    assert_eq!(a.job(&j.id).unwrap().device.unwrap().name, "sdg");
}

#[test]
fn a_claimed_disk_that_returns_outside_every_bay_is_not_resumed() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(400);
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", None, None, Some("S9".into()))
        .unwrap();
    a.disk_present(serial_disk("sdb", "usb", "S9", true));
    std::thread::sleep(Duration::from_millis(50));
    a.disk_gone("sdb");
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Interrupted);
    a.disk_present(serial_disk("sdc", "usb", "S9", false));
    assert!(matches!(status_of(&a, "sdc"), DiskStatus::Ignored { .. }));
    assert_eq!(
        f.writes.load(Ordering::SeqCst),
        1,
        "no second write outside the bay"
    );
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Interrupted);
}

#[test]
fn a_bay_can_refuse_serial_jobs() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(0);
    let cfg = Config::parse(
        "[policy]\nallowed_buses = [\"usb\"]\n[[bay]]\nname = \"a\"\n\
         loop_backing = \"/t/a-*.img\"\nserial_jobs = false\n",
    )
    .unwrap();
    let a = Agent::new(
        cfg,
        Journal::open(&d.path().join("jobs")).unwrap(),
        f.clone(),
    )
    .unwrap();
    a.add_job("T", "img@1", None, None, Some("S1".into()))
        .unwrap();
    a.disk_present(serial_disk("sdb", "usb", "S1", true));
    assert_eq!(
        status_of(&a, "sdb"),
        DiskStatus::Waiting {
            reason: "waiting for a job".into()
        }
    );
    assert_eq!(f.checks.load(Ordering::SeqCst), 0);
}
