//! Daemon logic tests: hand-made disks, a fake [`JobSteps`] whose write takes a while and
//! honours the stop flag.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::daemon::matching::test_disk;
use crate::job::runner::{StepError, WriteDone};
use crate::job::{RestoreRecord, SanitizationRecord};
use crate::server::protocol::ErrorCode;

pub(crate) struct Fake {
    write_ms: u64,
    refuse: Option<String>,
    writes: AtomicUsize,
    checks: AtomicUsize,
    wipes: AtomicUsize,
    migrate_fails: AtomicBool,
    image_gone: AtomicBool,
    /// The custody records say every dataset was destroyed by a withdrawal.
    withdrawn: AtomicBool,
}

pub(crate) fn fake(write_ms: u64) -> Arc<Fake> {
    Arc::new(Fake {
        write_ms,
        refuse: None,
        writes: AtomicUsize::new(0),
        checks: AtomicUsize::new(0),
        wipes: AtomicUsize::new(0),
        migrate_fails: AtomicBool::new(false),
        image_gone: AtomicBool::new(false),
        withdrawn: AtomicBool::new(false),
    })
}

impl JobSteps for Fake {
    fn image_exists(&self, _job: &Job) -> bool {
        !self.image_gone.load(Ordering::SeqCst)
    }
    fn check(&self, _job: &Job, _disk: &DiskInfo) -> Result<serde_json::Value, String> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        match &self.refuse {
            Some(r) => Err(r.clone()),
            None => Ok(serde_json::json!({"image": "fake"})),
        }
    }
    fn write(
        &self,
        _job: &Job,
        dev: &Path,
        stop: &Arc<AtomicBool>,
        progress: &dyn Fn(StepProgress),
    ) -> Result<WriteDone, StepError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(self.write_ms) {
            if stop.load(Ordering::SeqCst) {
                return Err(StepError::Stopped);
            }
            progress(StepProgress {
                phase: "writing".into(),
                bytes_done: start.elapsed().as_millis() as u64,
                bytes_total: self.write_ms,
                rate_bps: 0.0,
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(crate::job::runner::verified_write(dev))
    }
    fn migrate(
        &self,
        _job: &Job,
        _dev: &Path,
        _image: &imager::VerifiedImage,
        _p: &dyn Fn(StepProgress),
    ) -> Result<RestoreRecord, StepError> {
        if self.migrate_fails.load(Ordering::SeqCst) {
            return Err(StepError::Failed(anyhow::anyhow!(
                "restored data does not verify"
            )));
        }
        Ok(RestoreRecord::from_json(serde_json::json!({})))
    }
    fn wipe(&self, _job: &Job) -> Result<SanitizationRecord, StepError> {
        self.wipes.fetch_add(1, Ordering::SeqCst);
        Ok(SanitizationRecord::from_json(serde_json::json!({})))
    }
    fn image_written(&self, _job: &Job, _dev: &Path, _ok: bool) -> Result<()> {
        Ok(())
    }
    fn finish(&self, _job: &Job) -> Result<()> {
        Ok(())
    }
    fn still_present(&self, _dev: &Path) -> bool {
        true
    }
    fn dataset_gone(&self, job: &Job) -> Result<Option<String>> {
        Ok(
            (job.dataset.is_some() && self.withdrawn.load(Ordering::SeqCst))
                .then(|| "the client withdrew".to_string()),
        )
    }
}

pub(crate) const CFG: &str = "[policy]\nallowed_buses = [\"usb\"]\n\
    [[bay]]\nname = \"a\"\nloop_backing = \"/t/a-*.img\"\n\
    [[bay]]\nname = \"b\"\nloop_backing = \"/t/b-*.img\"\n\
    [[bay]]\nname = \"prov\"\nport_path = \"pci-1\"\ndefault_image = \"base@1\"\n";

pub(crate) fn agent(dir: &Path, steps: Arc<Fake>) -> Arc<Agent> {
    let cfg = Config::parse(CFG).unwrap();
    Agent::new(cfg, Journal::open(&dir.join("jobs")).unwrap(), steps).unwrap()
}

pub(crate) fn loop_disk(name: &str, backing: &str) -> DiskInfo {
    let mut d = test_disk(name);
    d.loop_backing_file = Some(backing.into());
    d
}

pub(crate) fn status_of(a: &Agent, name: &str) -> DiskStatus {
    a.status()
        .disks
        .into_iter()
        .find(|d| d.disk.name == name)
        .unwrap()
        .status
}

#[test]
fn disk_outside_bays_is_ignored_and_never_checked() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(0);
    let a = agent(d.path(), f.clone());
    a.add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/elsewhere/a-1.img"));
    assert!(matches!(status_of(&a, "loop1"), DiskStatus::Ignored { .. }));
    assert_eq!(f.checks.load(Ordering::SeqCst), 0);
    assert_eq!(f.writes.load(Ordering::SeqCst), 0);
}

#[test]
fn waiting_disk_gets_the_job_when_added_and_ends_done() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(20);
    let a = agent(d.path(), f.clone());
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    assert_eq!(
        status_of(&a, "loop1"),
        DiskStatus::Waiting {
            reason: "waiting for a job".into()
        }
    );
    let bay = &a.status().bays[0];
    assert_eq!(bay.state, "waiting for a job");
    let j = a
        .add_job("T", "img@1", Some("ds".into()), Some("a".into()), None)
        .unwrap();
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Done);
    assert_eq!(
        status_of(&a, "loop1"),
        DiskStatus::Done { job: j.id.clone() }
    );
    assert!(a.status().bays[0].state.contains("safe to remove"));
    assert_eq!(f.wipes.load(Ordering::SeqCst), 1);
    // A change event for the finished disk does not start anything new.
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    assert_eq!(f.writes.load(Ordering::SeqCst), 1);
}

#[test]
fn refused_disk_keeps_its_reason_and_the_job_stays_queued() {
    let d = tempfile::tempdir().unwrap();
    let f = Arc::new(Fake {
        refuse: Some("mounted at /mnt/x".into()),
        ..Arc::into_inner(fake(0)).unwrap()
    });
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    let st = status_of(&a, "loop1");
    assert_eq!(
        st,
        DiskStatus::Refused {
            job: j.id.clone(),
            reason: "mounted at /mnt/x".into()
        }
    );
    assert!(a.status().bays[0].state.contains("mounted at /mnt/x"));
    assert_eq!(f.writes.load(Ordering::SeqCst), 0);
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Queued);
}

#[test]
fn provisioning_bay_makes_its_own_job() {
    let d = tempfile::tempdir().unwrap();
    let a = agent(d.path(), fake(0));
    let mut disk = test_disk("sdc");
    disk.port_path = Some("pci-1".into());
    a.disk_present(disk);
    assert!(a.wait_idle(Duration::from_secs(5)));
    let jobs = a.jobs();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].provisioning);
    assert_eq!(jobs[0].image, "base@1");
    assert_eq!(jobs[0].state, JobState::Done);
}

#[test]
fn pulled_disk_interrupts_and_replug_under_a_new_name_resumes() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(400);
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    std::thread::sleep(Duration::from_millis(50));
    a.disk_gone("loop1");
    assert!(a.wait_idle(Duration::from_secs(5)));
    let job = a.job(&j.id).unwrap();
    assert_eq!(job.state, JobState::Interrupted);
    assert_eq!(job.resume_from, Some(JobState::Writing));
    a.disk_present(loop_disk("loop9", "/t/a-1.img"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    let job = a.job(&j.id).unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.device.unwrap().name, "loop9");
    assert_eq!(f.writes.load(Ordering::SeqCst), 2);
}

#[test]
fn shutdown_interrupts_and_a_new_agent_resumes_from_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let a = agent(d.path(), fake(2000));
    let j = a
        .add_job("T", "img@1", Some("ds".into()), Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    std::thread::sleep(Duration::from_millis(50));
    a.shutdown();
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Interrupted);
    drop(a);

    let f = fake(10);
    let a = agent(d.path(), f.clone());
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Interrupted);
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Done);
    assert_eq!(f.wipes.load(Ordering::SeqCst), 1);
}

#[test]
fn two_bays_run_at_once() {
    let d = tempfile::tempdir().unwrap();
    let a = agent(d.path(), fake(300));
    let j1 = a
        .add_job("T1", "img@1", None, Some("a".into()), None)
        .unwrap();
    let j2 = a
        .add_job("T2", "img@1", None, Some("b".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    a.disk_present(loop_disk("loop2", "/t/b-1.img"));
    std::thread::sleep(Duration::from_millis(100));
    let st = a.status();
    assert_eq!(
        st.bays
            .iter()
            .filter(|b| b.state.starts_with("running"))
            .count(),
        2
    );
    assert!(st.summary.contains("2 running"), "{}", st.summary);
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j1.id).unwrap().state, JobState::Done);
    assert_eq!(a.job(&j2.id).unwrap().state, JobState::Done);
}

#[test]
fn cancel_running_and_queued_and_retry() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(2000);
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", Some("ds".into()), Some("a".into()), None)
        .unwrap();
    let q = a
        .add_job("T2", "img@1", None, Some("b".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    std::thread::sleep(Duration::from_millis(50));
    a.cancel(&j.id).unwrap();
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Cancelled);
    assert_eq!(f.wipes.load(Ordering::SeqCst), 0);
    assert_eq!(a.cancel(&q.id).unwrap().state, JobState::Cancelled);
    assert!(a.cancel(&q.id).is_err());
    assert!(a.retry(&q.id).is_ok());
    assert_eq!(a.job(&q.id).unwrap().state, JobState::Queued);
}

#[test]
fn bad_job_requests_are_refused_with_reasons() {
    let d = tempfile::tempdir().unwrap();
    let a = agent(d.path(), fake(0));
    // Each refusal carries its code (what a client branches on) and a sentence naming the
    // field (what the technician reads).
    let e = |r: Result<Job>| {
        let e = r.unwrap_err();
        (super::error_code(&e), format!("{e:#}"))
    };
    let invalid = |(code, msg): (ErrorCode, String), names: &str| {
        assert_eq!(code, ErrorCode::InvalidArgument, "{msg}");
        assert!(msg.contains(names), "{msg}");
    };
    invalid(
        e(a.add_job("T", "img@1", None, Some("zz".into()), None)),
        "bay \"zz\"",
    );
    invalid(
        e(a.add_job("T", "img", None, Some("a".into()), None)),
        "NAME@VERSION",
    );
    invalid(
        e(a.add_job("T", "i@1", None, None, None)),
        "--bay or --serial",
    );
    invalid(
        e(a.add_job("", "i@1", None, Some("a".into()), None)),
        "ticket",
    );
    invalid(
        e(a.add_job("jane.doe@example.com", "i@1", None, Some("a".into()), None)),
        "invalid ticket",
    );
    let (code, msg) = e(a.job("j-nope"));
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
}

#[test]
fn a_new_disk_under_a_busy_name_stops_the_old_job() {
    let d = tempfile::tempdir().unwrap();
    let a = agent(d.path(), fake(2000));
    let j = a
        .add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    std::thread::sleep(Duration::from_millis(50));
    // Same kernel name, different backing file: the first disk is gone.
    a.disk_present(loop_disk("loop1", "/t/b-1.img"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Interrupted);
    assert_eq!(
        status_of(&a, "loop1"),
        DiskStatus::Waiting {
            reason: "waiting for a job".into()
        }
    );
}

#[test]
fn done_disk_is_recognised_after_restart_by_diskseq_and_a_reattach_is_a_new_disk() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(10);
    let a = agent(d.path(), f.clone());
    let seq = |n: &str, s: u64| {
        let mut disk = loop_disk(n, "/t/a-1.img");
        disk.diskseq = Some(s);
        disk
    };
    let j = a
        .add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(seq("loop1", 5));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Done);
    a.shutdown();
    drop(a);

    // Restart with a second job queued for the bay: the finished disk (same attachment, even
    // seen under another name) stays done and is not written again.
    let a = agent(d.path(), f.clone());
    let j2 = a
        .add_job("T2", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(seq("loop1", 5));
    assert_eq!(
        status_of(&a, "loop1"),
        DiskStatus::Done { job: j.id.clone() }
    );
    assert_eq!(a.job(&j2.id).unwrap().state, JobState::Queued);
    // Detached and re-attached (new diskseq): a new disk in the bay, it gets the queued job.
    a.disk_gone("loop1");
    a.disk_present(seq("loop1", 6));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j2.id).unwrap().state, JobState::Done);
    assert_eq!(f.writes.load(Ordering::SeqCst), 2);
}

#[test]
fn done_disk_with_a_serial_stays_done_under_a_new_name() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(10);
    let a = agent(d.path(), f.clone());
    let usb = |n: &str, serial: &str| {
        let mut disk = test_disk(n);
        disk.port_path = Some("pci-1".into());
        disk.serial = Some(serial.into());
        disk
    };
    a.disk_present(usb("sdb", "S1"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    let done = a.jobs();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].state, JobState::Done);
    a.disk_gone("sdb");
    // Re-plugged into the provisioning bay: recognised, not imaged again.
    a.disk_present(usb("sdc", "S1"));
    assert_eq!(
        status_of(&a, "sdc"),
        DiskStatus::Done {
            job: done[0].id.clone()
        }
    );
    // Another disk in that bay is provisioned.
    a.disk_gone("sdc");
    a.disk_present(usb("sdd", "S2"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.jobs().len(), 2);
    assert_eq!(f.writes.load(Ordering::SeqCst), 2);
}

#[test]
fn retry_after_a_failed_migration_resumes_there_on_the_same_disk() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(10);
    f.migrate_fails.store(true, Ordering::SeqCst);
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", Some("ds".into()), Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Failed);
    // Another disk in the same bay must not get the half-done job.
    a.disk_present(loop_disk("loop2", "/t/a-2.img"));
    f.migrate_fails.store(false, Ordering::SeqCst);
    a.disk_gone("loop1");
    let r = a.retry(&j.id).unwrap();
    assert_eq!(r.state, JobState::Interrupted);
    assert_eq!(r.resume_from, Some(JobState::Migrating));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&j.id).unwrap().state, JobState::Interrupted);
    // Its disk comes back: migration again, no second write.
    a.disk_present(loop_disk("loop7", "/t/a-1.img"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    let job = a.job(&j.id).unwrap();
    assert_eq!(job.state, JobState::Done, "{:?}", job.history);
    assert_eq!(f.writes.load(Ordering::SeqCst), 1);
    assert_eq!(f.wipes.load(Ordering::SeqCst), 1);
}

#[test]
fn retry_of_a_job_that_failed_before_its_image_was_verified_starts_over() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(2000);
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    std::thread::sleep(Duration::from_millis(50));
    a.cancel(&j.id).unwrap();
    assert!(a.wait_idle(Duration::from_secs(5)));
    a.disk_gone("loop1");
    let r = a.retry(&j.id).unwrap();
    assert_eq!(r.state, JobState::Queued);
    assert!(r.device.is_none());
}

/// An interrupted job whose client data was already verified on its disk must finish its wipe:
/// a cancel would keep the staging copy past its verified copy (and say "kept" after a
/// half-done wipe). A job without a dataset is not told "staged client data kept".
#[test]
fn a_job_past_its_verified_migration_cannot_be_cancelled() {
    let d = tempfile::tempdir().unwrap();
    let mut job = Job::new(
        "T",
        "img@1",
        Some("ds".into()),
        crate::job::JobTarget::Bay("a".into()),
    );
    job.set_state(JobState::Wiping, None);
    job.interrupt("agent stopping");
    let mut plain = Job::new("T2", "img@1", None, crate::job::JobTarget::Bay("b".into()));
    plain.set_state(JobState::Writing, None);
    plain.interrupt("agent stopping");
    let journal = Journal::open(&d.path().join("jobs")).unwrap();
    journal.save(&job).unwrap();
    journal.save(&plain).unwrap();
    let a = agent(d.path(), fake(10));
    let e = a.cancel(&job.id).unwrap_err();
    assert_eq!(super::error_code(&e), ErrorCode::Conflict, "{e:#}");
    assert!(e.to_string().contains("cannot be cancelled"), "{e}");
    assert_eq!(a.job(&job.id).unwrap().state, JobState::Interrupted);
    let c = a.cancel(&plain.id).unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    let note = c.history.last().unwrap().note.clone().unwrap();
    assert_eq!(note, "cancelled by technician");
}

#[test]
fn fail_ends_a_queued_job_with_its_reason_but_never_a_running_one() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(2000);
    let a = agent(d.path(), f.clone());
    let queued = a
        .add_job("T", "img@1", None, Some("b".into()), None)
        .unwrap();
    let running = a
        .add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    let e = a.fail(&running.id, "image img@1 was removed").unwrap_err();
    assert_eq!(super::error_code(&e), ErrorCode::Conflict, "{e:#}");
    let j = a.fail(&queued.id, "image img@1 was removed").unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.error.as_deref(), Some("image img@1 was removed"));
    let journaled = Journal::open(&d.path().join("jobs"))
        .unwrap()
        .load(&queued.id)
        .unwrap();
    assert_eq!(journaled.state, JobState::Failed);
    let again = a.fail(&queued.id, "again").unwrap_err();
    assert_eq!(
        super::error_code(&again),
        ErrorCode::Conflict,
        "already failed"
    );
    a.shutdown();
}

#[test]
fn a_colliding_job_id_draws_a_new_one_and_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let a = agent(d.path(), fake(0));
    let first = a
        .add_job("T-1", "img@1", None, Some("a".into()), None)
        .unwrap();
    let mut second = Job::new("T-2", "img@2", None, JobTarget::Bay("b".into()));
    second.id = first.id.clone();
    let saved = a.create_record(second).unwrap();
    assert_ne!(saved.id, first.id);
    let journal = Journal::open(&d.path().join("jobs")).unwrap();
    assert_eq!(journal.load(&first.id).unwrap().ticket, "T-1");
    assert_eq!(journal.load(&saved.id).unwrap().ticket, "T-2");
}

#[test]
fn a_job_whose_image_is_removed_while_it_is_added_is_failed_not_queued() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(0);
    f.image_gone.store(true, Ordering::SeqCst);
    let a = agent(d.path(), f.clone());
    let e = a
        .add_job("T", "img@1", None, Some("a".into()), None)
        .unwrap_err();
    assert_eq!(super::error_code(&e), ErrorCode::Rejected, "{e:#}");
    assert!(format!("{e:#}").contains("was removed"), "{e:#}");
    let jobs = Journal::open(&d.path().join("jobs"))
        .unwrap()
        .load_all()
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::Failed);
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    assert_eq!(f.checks.load(Ordering::SeqCst), 0, "no disk offered to it");
}

mod serial;
mod withdrawal;
