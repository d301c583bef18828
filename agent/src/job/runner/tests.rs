//! State machine tests with a fake [`JobSteps`]: failures, cancels, pulled disks and crashes
//! (a panic inside a step stands in for `kill -9`: the journal is all that survives).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use super::*;
use crate::job::JobTarget;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    /// Step name at which to fail.
    fail_at: Option<&'static str>,
    /// Step name at which to panic (a crash).
    crash_at: Option<&'static str>,
    /// Step name during which a stop is requested, and its cause.
    stop_at: Option<(&'static str, StopCause)>,
    ctl: Option<Arc<JobControl>>,
    /// Whether the staged dataset still exists (the invariant under test).
    staged: Arc<AtomicBool>,
    /// Whether the migration was verified before any wipe.
    migrated: Arc<AtomicBool>,
    gone: bool,
    /// Step name during which the client withdraws (custody destroys the dataset).
    withdraw_at: Option<&'static str>,
    withdrawn: AtomicBool,
}

impl Fake {
    fn new(staged: &Arc<AtomicBool>, migrated: &Arc<AtomicBool>) -> Fake {
        Fake {
            staged: staged.clone(),
            migrated: migrated.clone(),
            ..Fake::default()
        }
    }
    fn step(&self, name: &'static str) -> Result<(), StepError> {
        self.calls.lock().unwrap().push(name.to_string());
        if self.withdraw_at == Some(name) {
            self.withdrawn.store(true, Ordering::SeqCst);
            self.staged.store(false, Ordering::SeqCst);
        }
        if self.crash_at == Some(name) {
            panic!("simulated crash in {name}");
        }
        if let Some((at, cause)) = self.stop_at
            && at == name
        {
            self.ctl.as_ref().unwrap().request(cause);
            return Err(StepError::Stopped);
        }
        if self.fail_at == Some(name) {
            return Err(StepError::Failed(anyhow::anyhow!("{name} broke")));
        }
        Ok(())
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl JobSteps for Fake {
    fn check(&self, _job: &Job, _disk: &blockdev::DiskInfo) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({}))
    }
    fn write(
        &self,
        _job: &Job,
        dev: &Path,
        _stop: &Arc<AtomicBool>,
        progress: &dyn Fn(StepProgress),
    ) -> Result<WriteDone, StepError> {
        progress(StepProgress {
            phase: "writing".into(),
            bytes_done: 1,
            bytes_total: 2,
            rate_bps: 1.0,
        });
        self.step("write")?;
        Ok(verified_write(dev))
    }
    fn migrate(
        &self,
        _job: &Job,
        _dev: &Path,
        image: &imager::VerifiedImage,
        _progress: &dyn Fn(StepProgress),
    ) -> Result<RestoreRecord, StepError> {
        assert!(
            image.bytes_verified() > 0,
            "migrating onto an unverified image"
        );
        self.step("migrate")?;
        self.migrated.store(true, Ordering::SeqCst);
        Ok(RestoreRecord::from_json(
            serde_json::json!({"entries_verified": 3}),
        ))
    }
    fn wipe(&self, _job: &Job) -> Result<SanitizationRecord, StepError> {
        assert!(
            self.migrated.load(Ordering::SeqCst),
            "wipe before a verified migration"
        );
        self.step("wipe")?;
        self.staged.store(false, Ordering::SeqCst);
        Ok(SanitizationRecord::from_json(
            serde_json::json!({"method": "overwrite"}),
        ))
    }
    fn image_written(&self, _job: &Job, _dev: &Path, ok: bool) -> Result<()> {
        self.calls.lock().unwrap().push(format!("audit-image-{ok}"));
        Ok(())
    }
    fn finish(&self, job: &Job) -> Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("finish-{}", job.state));
        Ok(())
    }
    fn still_present(&self, _dev: &Path) -> bool {
        !self.gone
    }
    fn dataset_gone(&self, _job: &Job) -> Result<Option<String>> {
        Ok(self
            .withdrawn
            .load(Ordering::SeqCst)
            .then(|| "dataset ds-1 was destroyed because the client withdrew".to_string()))
    }
}

struct Env {
    _dir: tempfile::TempDir,
    journal: Journal,
    staged: Arc<AtomicBool>,
    migrated: Arc<AtomicBool>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("jobs")).unwrap();
    Env {
        _dir: dir,
        journal,
        staged: Arc::new(AtomicBool::new(true)),
        migrated: Arc::new(AtomicBool::new(false)),
    }
}

fn data_job(e: &Env) -> Job {
    let j = Job::new(
        "T-1",
        "img@1",
        Some("ds-1".into()),
        JobTarget::Bay("a".into()),
    );
    e.journal.save(&j).unwrap();
    j
}

fn run(e: &Env, job: &mut Job, fake: &Fake, ctl: &JobControl) -> Vec<JobState> {
    let seen = Mutex::new(Vec::new());
    let state = |j: &Job| seen.lock().unwrap().push(j.state);
    let progress = |_: &Job, _: StepProgress| {};
    let hooks = Hooks {
        state: &state,
        progress: &progress,
    };
    run_job(job, Path::new("/dev/fake"), fake, &e.journal, ctl, &hooks).unwrap();
    seen.into_inner().unwrap()
}

fn states(job: &Job) -> Vec<JobState> {
    job.history.iter().map(|t| t.state).collect()
}

#[test]
fn happy_path_with_data_goes_through_every_state() {
    let e = env();
    let mut job = data_job(&e);
    let fake = Fake::new(&e.staged, &e.migrated);
    let seen = run(&e, &mut job, &fake, &JobControl::default());
    use JobState::*;
    let expected = vec![
        Claimed,
        Writing,
        ImageVerified,
        Migrating,
        DataVerified,
        Wiping,
        Reporting,
        Done,
    ];
    assert_eq!(seen, expected);
    assert_eq!(&states(&job)[1..], &expected[..]);
    assert_eq!(
        fake.calls(),
        [
            "write",
            "audit-image-true",
            "migrate",
            "wipe",
            "finish-done"
        ]
    );
    assert!(!e.staged.load(Ordering::SeqCst));
    assert_eq!(e.journal.load(&job.id).unwrap(), job);
    assert!(job.results.sanitization.is_some());
}

#[test]
fn job_without_data_skips_migration() {
    let e = env();
    let mut job = Job::new("T", "img@1", None, JobTarget::Serial("S".into()));
    let fake = Fake::new(&e.staged, &e.migrated);
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Done);
    assert_eq!(fake.calls(), ["write", "audit-image-true", "finish-done"]);
    assert!(e.staged.load(Ordering::SeqCst));
}

#[test]
fn failed_migration_keeps_staging_and_fails() {
    let e = env();
    let mut job = data_job(&e);
    let fake = Fake {
        fail_at: Some("migrate"),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.as_deref().unwrap().contains("staged copy kept"));
    assert!(e.staged.load(Ordering::SeqCst));
    assert!(!fake.calls().contains(&"wipe".to_string()));
}

#[test]
fn failed_write_is_audited_and_fails() {
    let e = env();
    let mut job = data_job(&e);
    let fake = Fake {
        fail_at: Some("write"),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        fake.calls(),
        ["write", "audit-image-false", "finish-failed"]
    );
}

#[test]
fn write_error_on_a_pulled_disk_interrupts_instead_of_failing() {
    let e = env();
    let mut job = data_job(&e);
    let fake = Fake {
        fail_at: Some("write"),
        gone: true,
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Interrupted);
    assert_eq!(job.resume_from, Some(JobState::Writing));
}

#[test]
fn cancel_during_write_never_wipes() {
    let e = env();
    let mut job = data_job(&e);
    let ctl = Arc::new(JobControl::default());
    let fake = Fake {
        stop_at: Some(("write", StopCause::Cancel)),
        ctl: Some(ctl.clone()),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &ctl);
    assert_eq!(job.state, JobState::Cancelled);
    assert!(e.staged.load(Ordering::SeqCst));
    assert_eq!(e.journal.load(&job.id).unwrap().state, JobState::Cancelled);
}

#[test]
fn pulled_disk_interrupts_then_resumes_where_it_was() {
    let e = env();
    let mut job = data_job(&e);
    let ctl = Arc::new(JobControl::default());
    let fake = Fake {
        stop_at: Some(("migrate", StopCause::Gone)),
        ctl: Some(ctl.clone()),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &ctl);
    assert_eq!(job.state, JobState::Interrupted);
    assert_eq!(job.resume_from, Some(JobState::Migrating));
    assert!(e.staged.load(Ordering::SeqCst));

    // Plugged back: a fresh run resumes at the migration, without rewriting the image.
    let mut job = e.journal.load(&job.id).unwrap();
    let fake = Fake::new(&e.staged, &e.migrated);
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Done);
    assert_eq!(fake.calls(), ["migrate", "wipe", "finish-done"]);
}

#[test]
fn shutdown_interrupts_and_restart_resumes() {
    let e = env();
    let mut job = data_job(&e);
    let ctl = Arc::new(JobControl::default());
    let fake = Fake {
        stop_at: Some(("write", StopCause::Shutdown)),
        ctl: Some(ctl.clone()),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &ctl);
    let mut job = e.journal.load(&job.id).unwrap();
    assert_eq!(job.state, JobState::Interrupted);
    assert_eq!(
        job.history.last().unwrap().note.as_deref(),
        Some("agent stopping")
    );
    let fake = Fake::new(&e.staged, &e.migrated);
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Done);
    assert_eq!(fake.calls()[0], "write");
}

#[test]
fn pulled_disk_after_verified_migration_still_wipes_and_finishes() {
    let e = env();
    let mut job = data_job(&e);
    job.set_state(JobState::DataVerified, None);
    e.migrated.store(true, Ordering::SeqCst);
    let ctl = JobControl::default();
    ctl.request(StopCause::Gone);
    let fake = Fake::new(&e.staged, &e.migrated);
    run(&e, &mut job, &fake, &ctl);
    assert_eq!(job.state, JobState::Done);
    assert!(!e.staged.load(Ordering::SeqCst));
}

/// A cancel after the migration was verified does not keep the staging copy (it must not
/// outlive its verified copy) nor record "staged client data kept": the job wipes and finishes.
#[test]
fn cancel_after_verified_migration_still_wipes_and_finishes() {
    for at in [JobState::DataVerified, JobState::Wiping] {
        let e = env();
        let mut job = data_job(&e);
        job.set_state(at, None);
        e.migrated.store(true, Ordering::SeqCst);
        let ctl = JobControl::default();
        ctl.request(StopCause::Cancel);
        let fake = Fake::new(&e.staged, &e.migrated);
        run(&e, &mut job, &fake, &ctl);
        assert_eq!(job.state, JobState::Done, "cancelled at {at}");
        assert!(!e.staged.load(Ordering::SeqCst));
        assert!(
            job.history
                .iter()
                .all(|t| !t.note.as_deref().unwrap_or("").contains("kept")),
            "{:?}",
            job.history
        );
    }
}

/// A crash (panic) inside each step in turn; the job is reloaded from the journal and run
/// again. Every time, it ends done, staged data was only wiped after a verified migration, and
/// the step that crashed is redone.
#[test]
fn crash_at_every_step_then_restart_completes() {
    for (crash, first_after) in [("write", "write"), ("migrate", "migrate"), ("wipe", "wipe")] {
        let e = env();
        let job = data_job(&e);
        let fake = Fake {
            crash_at: Some(crash),
            ..Fake::new(&e.staged, &e.migrated)
        };
        let mut j = job.clone();
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(&e, &mut j, &fake, &JobControl::default());
        }));
        assert!(r.is_err(), "{crash}: expected the simulated crash");
        assert!(e.staged.load(Ordering::SeqCst), "{crash}: staging lost");
        let mut j = e.journal.load(&job.id).unwrap();
        assert!(j.state.is_active(), "{crash}: journal says {}", j.state);
        let fake = Fake::new(&e.staged, &e.migrated);
        run(&e, &mut j, &fake, &JobControl::default());
        assert_eq!(j.state, JobState::Done, "{crash}");
        assert_eq!(fake.calls()[0], first_after, "{crash}: {:?}", fake.calls());
        assert!(!e.staged.load(Ordering::SeqCst));
    }
}

#[test]
fn withdrawn_before_the_disk_is_claimed_writes_nothing() {
    let e = env();
    let mut job = data_job(&e);
    let fake = Fake::new(&e.staged, &e.migrated);
    fake.withdrawn.store(true, Ordering::SeqCst);
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(fake.calls(), ["finish-cancelled"]);
    let note = job.history.last().unwrap().note.clone().unwrap();
    assert!(note.contains("client withdrew"), "{note}");
    assert_eq!(e.journal.load(&job.id).unwrap(), job);
}

#[test]
fn withdrawn_during_the_write_stops_before_migration() {
    let e = env();
    let mut job = data_job(&e);
    let fake = Fake {
        withdraw_at: Some("write"),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(
        fake.calls(),
        ["write", "audit-image-true", "finish-cancelled"]
    );
    assert!(!states(&job).contains(&JobState::Migrating));
    assert!(job.results.restore.is_none() && job.results.sanitization.is_none());
}

#[test]
fn withdrawal_stop_cause_ends_a_running_write_at_its_safe_point() {
    let e = env();
    let mut job = data_job(&e);
    let ctl = Arc::new(JobControl::default());
    let fake = Fake {
        withdraw_at: Some("write"),
        stop_at: Some(("write", StopCause::Withdrawn)),
        ctl: Some(ctl.clone()),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &ctl);
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(fake.calls(), ["write", "finish-cancelled"]);
}

#[test]
fn withdrawal_after_a_verified_migration_does_not_stop_the_job() {
    let e = env();
    let mut job = data_job(&e);
    let ctl = Arc::new(JobControl::default());
    let fake = Fake {
        withdraw_at: Some("migrate"),
        ..Fake::new(&e.staged, &e.migrated)
    };
    ctl.request(StopCause::Withdrawn);
    job.set_state(JobState::DataVerified, None);
    e.journal.save(&job).unwrap();
    fake.migrated.store(true, Ordering::SeqCst);
    fake.withdrawn.store(true, Ordering::SeqCst);
    run(&e, &mut job, &fake, &ctl);
    // The wipe step reports what custody did (the fake's wipe stands in for that).
    assert_eq!(job.state, JobState::Done);
}

#[test]
fn a_pulled_disk_still_interrupts_after_a_withdrawal_stop_was_ignored() {
    let e = env();
    let mut job = data_job(&e);
    job.set_state(JobState::Migrating, None);
    job.results.write = Some(verified_write(Path::new("/dev/fake")).record);
    e.journal.save(&job).unwrap();
    let ctl = JobControl::default();
    // Told of a withdrawal that did not concern this dataset (the custody check says live).
    ctl.request(StopCause::Withdrawn);
    let fake = Fake {
        fail_at: Some("migrate"),
        gone: true,
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &ctl);
    assert_eq!(job.state, JobState::Interrupted);
    assert_eq!(ctl.cause(), Some(StopCause::Gone));
}

#[test]
fn a_withdrawal_stop_custody_does_not_confirm_fails_instead_of_looping() {
    let e = env();
    let mut job = data_job(&e);
    let ctl = Arc::new(JobControl::default());
    let fake = Fake {
        stop_at: Some(("write", StopCause::Withdrawn)),
        ctl: Some(ctl.clone()),
        ..Fake::new(&e.staged, &e.migrated)
    };
    run(&e, &mut job, &fake, &ctl);
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.as_deref().unwrap().contains("custody records"));
    assert_eq!(fake.calls(), ["write", "finish-failed"]);
    assert!(e.staged.load(Ordering::SeqCst));
}

/// A job resuming at `migrating` (its write ran in an earlier process) migrates only onto the
/// image its journaled write report proves verified: a missing or failed report fails the job
/// before any client data is written, and staging is untouched.
#[test]
fn migration_needs_a_verified_image_proof_from_the_write_or_the_journal() {
    use JobState::*;
    let failed_write = WriteRecord::from_json(serde_json::json!({
        "format": 1, "path": "/dev/fake", "bytes_verified": 0,
        "result": {"status": "failed", "phase": "verifying"},
    }));
    for recorded in [None, Some(failed_write)] {
        let e = env();
        let mut job = data_job(&e);
        for s in [Claimed, Writing, ImageVerified, Migrating] {
            job.set_state(s, None);
        }
        job.interrupt("agent stopping");
        job.results.write = recorded.clone();
        e.journal.save(&job).unwrap();
        let fake = Fake::new(&e.staged, &e.migrated);
        run(&e, &mut job, &fake, &JobControl::default());
        assert_eq!(job.state, Failed, "{:?}", job.history);
        let err = job.error.clone().unwrap();
        assert!(err.contains("no verified image"), "{err}");
        assert!(
            !fake.calls().iter().any(|c| c == "migrate" || c == "wipe"),
            "{:?}",
            fake.calls()
        );
        assert!(e.staged.load(Ordering::SeqCst), "staging kept");
    }
    // With the verified write on record, the same resume migrates.
    let e = env();
    let mut job = data_job(&e);
    for s in [Claimed, Writing, ImageVerified, Migrating] {
        job.set_state(s, None);
    }
    job.interrupt("agent stopping");
    job.results.write = Some(verified_write(Path::new("/dev/fake")).record);
    let fake = Fake::new(&e.staged, &e.migrated);
    run(&e, &mut job, &fake, &JobControl::default());
    assert_eq!(job.state, Done);
    assert_eq!(fake.calls()[0], "migrate");
}
