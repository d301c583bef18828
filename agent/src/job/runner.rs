//! Running one job on its disk: the state machine that calls the steps in order and journals
//! after each one, so that a crash at any moment resumes from the last step whose result was
//! verified.
//!
//! The steps themselves (imager, client-data custody, audit log) sit behind [`JobSteps`], so the
//! state machine is tested here with a fake that fails, stops or "crashes" at any step. The real
//! implementation lives in `steps.rs`.
//!
//! Safety ordering, the reason for this file:
//! - `image_verified` is journaled only after the imager read everything back and wrote the
//!   first MiB;
//! - the migrate step takes an `imager::VerifiedImage`: the one the write step returned, or
//!   after a restart the one the journaled write report proves ([`WriteRecord::proof`]); without
//!   one the job fails and no client data is written;
//! - `data_verified` only after the restore was read back and matched the staged manifest;
//! - the staging wipe runs only in `wiping`, which is only entered from `data_verified`;
//! - a cancel or a failure never enters `wiping`, so staged data survives both.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use anyhow::Result;
use serde::Serialize;

use crate::job::journal::Journal;
use crate::job::{Job, JobState, RestoreRecord, SanitizationRecord, WriteRecord};
use blockdev::DiskInfo;

/// Live progress of the running step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StepProgress {
    /// Phase name (`writing`, `verifying`, `restoring`...).
    pub phase: String,
    /// Bytes done in this phase.
    pub bytes_done: u64,
    /// Bytes this phase will do.
    pub bytes_total: u64,
    /// Current rate in bytes per second.
    pub rate_bps: f64,
}

/// A finished write: its report for the record, and the proof the imager gave that the image
/// is on the disk, verified.
#[derive(Debug)]
pub struct WriteDone {
    /// The imager's report.
    pub record: WriteRecord,
    /// The proof the migrate step needs.
    pub proof: imager::VerifiedImage,
    /// Where the image came from (the local store, or fetched from the library and how much),
    /// for the record's image facts (`source`).
    pub source: Option<String>,
}

/// How a step ended without a result.
#[derive(Debug)]
pub enum StepError {
    /// The step noticed the stop flag and stopped at a safe point.
    Stopped,
    /// The step failed.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for StepError {
    fn from(e: anyhow::Error) -> Self {
        StepError::Failed(e)
    }
}

/// The work a job does, one method per step. Each must be safe to run again after a crash in
/// the middle of it (the runner redoes an unfinished step).
pub trait JobSteps: Send + Sync {
    /// Checks a new job's references (image exists, dataset is staged) when it is added.
    fn validate(&self, _job: &Job) -> Result<()> {
        Ok(())
    }
    /// Whether the job's image is still in the store: asked once more right after a new job
    /// was journaled, so a `tek image rm` racing with `job add` never leaves a queued job for a
    /// removed image (the removal lists the journal after removing).
    fn image_exists(&self, _job: &Job) -> bool {
        true
    }
    /// Eligibility of `disk` for `job`, without writing anything: the image loads and passes
    /// the signature policy, and the imager's target checks pass (not mounted, not the system
    /// disk, large enough...). Returns facts about the image for the report, or a one-line
    /// refusal reason for the technician.
    fn check(&self, job: &Job, disk: &DiskInfo) -> Result<serde_json::Value, String>;
    /// Writes and verifies the image onto `dev`; returns the imager's report for the record
    /// and its proof of the verified image. Must stop early (and leave no bootable half-image)
    /// when `stop` is set.
    fn write(
        &self,
        job: &Job,
        dev: &Path,
        stop: &Arc<AtomicBool>,
        progress: &dyn Fn(StepProgress),
    ) -> Result<WriteDone, StepError>;
    /// Mounts the data partition of `dev`, whose image `image` proves verified, restores the
    /// job's dataset, verifies it, unmounts; returns the restore result. Failing verification
    /// is an `Err`.
    fn migrate(
        &self,
        job: &Job,
        dev: &Path,
        image: &imager::VerifiedImage,
        progress: &dyn Fn(StepProgress),
    ) -> Result<RestoreRecord, StepError>;
    /// Wipes the dataset's staging copy (only ever called after a verified migration); returns
    /// the sanitization record. Must succeed if the dataset was already wiped by a previous run.
    fn wipe(&self, job: &Job) -> Result<SanitizationRecord, StepError>;
    /// Records the end of the image write in the audit log (`ok` = verified).
    fn image_written(&self, job: &Job, dev: &Path, ok: bool) -> Result<()>;
    /// Writes the service report and the `JobFinished` audit entry (also for failed and
    /// cancelled jobs).
    fn finish(&self, job: &Job) -> Result<()>;
    /// Whether the disk is still there (an I/O error from a pulled disk may arrive before the
    /// kernel's remove event).
    fn still_present(&self, dev: &Path) -> bool;
    /// Asks the custody records, now, whether the job's dataset may still be migrated:
    /// `Some(why)` when it may not (the client withdrew and the dataset was destroyed, or it is
    /// otherwise no longer staged). Checked before a disk is claimed, before the migration and
    /// after a failed one, so a withdrawal stops a job even if the daemon was never told.
    fn dataset_gone(&self, _job: &Job) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Why a running job was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The agent is shutting down: stop at a safe point, resume on restart.
    Shutdown = 1,
    /// The disk went away: interrupted, resumes when it comes back.
    Gone = 2,
    /// A technician cancelled the job.
    Cancel = 3,
    /// The client withdrew: stop before the migration (after it, the runner's own custody
    /// checks decide).
    Withdrawn = 4,
}

/// Shared between the daemon and a running job: the stop flag the imager polls, and why.
#[derive(Debug, Default)]
pub struct JobControl {
    /// Set to stop; handed to the imager as its cancel flag.
    pub stop: Arc<AtomicBool>,
    cause: AtomicU8,
}

impl JobControl {
    /// Asks the job to stop. The first cause wins, except that a cancel overrides a gone disk,
    /// and every other cause overrides a withdrawal (which only acts before the migration, so
    /// a disk pulled later must still interrupt the job).
    pub fn request(&self, cause: StopCause) {
        let _ = self
            .cause
            .compare_exchange(0, cause as u8, Ordering::SeqCst, Ordering::SeqCst);
        let soft = self.cause.load(Ordering::SeqCst) == StopCause::Withdrawn as u8;
        if cause == StopCause::Cancel || (soft && cause != StopCause::Withdrawn) {
            self.cause.store(cause as u8, Ordering::SeqCst);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The stop cause, if a stop was requested.
    pub fn cause(&self) -> Option<StopCause> {
        match self.cause.load(Ordering::SeqCst) {
            1 => Some(StopCause::Shutdown),
            2 => Some(StopCause::Gone),
            3 => Some(StopCause::Cancel),
            4 => Some(StopCause::Withdrawn),
            _ => None,
        }
    }
}

/// Callbacks to the daemon: state changes (after they are journaled) and progress.
pub struct Hooks<'a> {
    /// Called after each journaled state change.
    pub state: &'a (dyn Fn(&Job) + Sync),
    /// Called with live progress of the current step.
    pub progress: &'a (dyn Fn(&Job, StepProgress) + Sync),
}

/// Runs (or resumes) `job` on `dev` until it is done, failed, cancelled or interrupted.
/// The caller has set `job.device`. Errors are journaling failures only; step failures end in
/// the `failed` state.
pub fn run_job(
    job: &mut Job,
    dev: &Path,
    steps: &dyn JobSteps,
    journal: &Journal,
    ctl: &JobControl,
    hooks: &Hooks<'_>,
) -> Result<()> {
    let save = |job: &Job| -> Result<()> {
        journal.save(job)?;
        (hooks.state)(job);
        Ok(())
    };
    // The proof of the verified image, from this run's write; after a restart, the journaled
    // write report is asked for it (`image_proof`).
    let mut verified: Option<imager::VerifiedImage> = None;
    // Nothing is written for data that may no longer be migrated.
    if job.dataset.is_some()
        && matches!(
            job.next_step(),
            JobState::Claimed | JobState::Writing | JobState::ImageVerified | JobState::Migrating
        )
        && let Some(why) = gone(job, steps)
    {
        return withdrawn(job, &why, steps, &save);
    }
    if matches!(job.state, JobState::Queued | JobState::Interrupted) {
        let next = job.next_step();
        job.resume_from = None;
        job.set_state(JobState::Claimed, None);
        save(job)?;
        if next != JobState::Claimed && next != JobState::Writing {
            job.set_state(next, Some("resumed".into()));
            save(job)?;
        }
    }
    loop {
        if job.state.is_terminal() {
            return Ok(());
        }
        if let Some(cause) = ctl.cause() {
            // After a verified migration the disk is no longer needed: finish the wipe and the
            // report even if it was pulled or cancelled, so staged data does not outlive its
            // copy (and a cancel never records "staged data kept" for a wiped dataset).
            let before_migration = matches!(
                job.state,
                JobState::Claimed | JobState::Writing | JobState::ImageVerified
            );
            if cause == StopCause::Withdrawn {
                if before_migration {
                    // The stop flag stays set: going on would only stop the write again.
                    return match gone(job, steps) {
                        Some(why) => withdrawn(job, &why, steps, &save),
                        None => fail(
                            job,
                            "stopped for a client's withdrawal, but the custody records do not \
                             show its dataset destroyed (retry the job)",
                            steps,
                            &save,
                        ),
                    };
                }
            } else if !(matches!(cause, StopCause::Gone | StopCause::Cancel)
                && job.past_verified_migration())
            {
                return stop(job, cause, steps, &save);
            }
        }
        match job.next_step() {
            JobState::Claimed | JobState::Writing => {
                if job.state != JobState::Writing {
                    job.set_state(JobState::Writing, None);
                    save(job)?;
                }
                let snapshot = job.clone();
                let progress = |p: StepProgress| (hooks.progress)(&snapshot, p);
                match steps.write(&snapshot, dev, &ctl.stop, &progress) {
                    // A write that completed is verified and on the disk, even if a stop came
                    // in the same instant: record it, so the journal never calls a complete,
                    // verified image a half-written one. The loop's stop check comes next.
                    Ok(done) => {
                        if let (Some(line), Some(serde_json::Value::Object(facts))) =
                            (done.source, job.results.image.as_mut())
                        {
                            facts.insert("source".into(), line.into());
                        }
                        job.results.write = Some(done.record);
                        verified = Some(done.proof);
                        steps.image_written(job, dev, true)?;
                        job.set_state(JobState::ImageVerified, None);
                        save(job)?;
                    }
                    Err(StepError::Stopped) if ctl.cause().is_some() => {}
                    Err(StepError::Stopped) => {
                        return fail(job, "the write stopped without a reason", steps, &save);
                    }
                    Err(StepError::Failed(e)) => {
                        if !steps.still_present(dev) {
                            ctl.request(StopCause::Gone);
                            continue;
                        }
                        let _ = steps.image_written(job, dev, false);
                        return fail(
                            job,
                            &format!("writing the image: {}", crate::errors::Chain(&e)),
                            steps,
                            &save,
                        );
                    }
                }
            }
            JobState::ImageVerified => {
                // The safe point: the image is verified, no client data touched yet.
                if job.dataset.is_some()
                    && let Some(why) = gone(job, steps)
                {
                    return withdrawn(job, &why, steps, &save);
                }
                let next = if job.dataset.is_some() {
                    JobState::Migrating
                } else {
                    JobState::Reporting
                };
                job.set_state(next, None);
                save(job)?;
            }
            JobState::Migrating => {
                if job.state != JobState::Migrating {
                    job.set_state(JobState::Migrating, None);
                    save(job)?;
                }
                let image = match verified.take().map_or_else(|| image_proof(job), Ok) {
                    Ok(p) => p,
                    Err(why) => {
                        let msg =
                            format!("no verified image to migrate onto ({why}); staged copy kept");
                        return fail(job, &msg, steps, &save);
                    }
                };
                let snapshot = job.clone();
                let progress = |p: StepProgress| (hooks.progress)(&snapshot, p);
                match steps.migrate(&snapshot, dev, &image, &progress) {
                    Ok(result) => {
                        job.results.restore = Some(result);
                        job.set_state(JobState::DataVerified, None);
                        save(job)?;
                    }
                    Err(StepError::Stopped) => verified = Some(image),
                    Err(StepError::Failed(e)) => {
                        if !steps.still_present(dev) {
                            ctl.request(StopCause::Gone);
                            continue;
                        }
                        // A withdrawal destroyed the dataset while the migration started.
                        if let Some(why) = gone(job, steps) {
                            return withdrawn(job, &why, steps, &save);
                        }
                        let msg = format!(
                            "migrating client data (staged copy kept): {}",
                            crate::errors::Chain(&e)
                        );
                        return fail(job, &msg, steps, &save);
                    }
                }
            }
            JobState::DataVerified | JobState::Wiping => {
                if job.state != JobState::Wiping {
                    job.set_state(JobState::Wiping, None);
                    save(job)?;
                }
                match steps.wipe(job) {
                    Ok(record) => {
                        job.results.sanitization = Some(record);
                        job.set_state(JobState::Reporting, None);
                        save(job)?;
                    }
                    Err(StepError::Stopped) => {}
                    Err(StepError::Failed(e)) => {
                        return fail(
                            job,
                            &format!("wiping staged data: {}", crate::errors::Chain(&e)),
                            steps,
                            &save,
                        );
                    }
                }
            }
            JobState::Reporting => {
                // The report names the final state, so it is written with `done` set; the
                // journal records `done` only after the report and audit entry exist.
                let mut finished = job.clone();
                finished.set_state(JobState::Done, Some("safe to remove".into()));
                steps.finish(&finished)?;
                *job = finished;
                save(job)?;
            }
            other => {
                return fail(
                    job,
                    &format!("unexpected resume point {other}"),
                    steps,
                    &save,
                );
            }
        }
    }
}

/// The proof of the verified image in the job's journaled write report (the write ran in an
/// earlier process, or before a retry).
fn image_proof(job: &Job) -> Result<imager::VerifiedImage, imager::NotVerified> {
    match &job.results.write {
        Some(w) => w.proof(),
        None => Err(imager::NotVerified {
            reason: "no write report is recorded".into(),
        }),
    }
}

/// The custody answer for the job's dataset; an error asking is logged and taken as "not gone"
/// (the step itself then fails with the real cause).
fn gone(job: &Job, steps: &dyn JobSteps) -> Option<String> {
    match steps.dataset_gone(job) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(job = %job.id, "checking the dataset's custody state: {e:#}");
            None
        }
    }
}

fn withdrawn(
    job: &mut Job,
    why: &str,
    steps: &dyn JobSteps,
    save: &dyn Fn(&Job) -> Result<()>,
) -> Result<()> {
    job.cancel_withdrawn(why);
    let _ = steps.finish(job);
    save(job)
}

fn stop(
    job: &mut Job,
    cause: StopCause,
    steps: &dyn JobSteps,
    save: &dyn Fn(&Job) -> Result<()>,
) -> Result<()> {
    match cause {
        StopCause::Shutdown => job.interrupt("agent stopping"),
        StopCause::Gone => job.interrupt("disk removed"),
        StopCause::Cancel => {
            job.cancel();
            let _ = steps.finish(job);
        }
        // Handled by the caller before the migration and ignored after it.
        StopCause::Withdrawn => return Ok(()),
    }
    save(job)
}

fn fail(
    job: &mut Job,
    msg: &str,
    steps: &dyn JobSteps,
    save: &dyn Fn(&Job) -> Result<()>,
) -> Result<()> {
    job.error = Some(msg.to_string());
    job.set_state(JobState::Failed, Some(msg.to_string()));
    let _ = steps.finish(job);
    save(job)
}

/// A write report as the imager records a verified write.
#[cfg(test)]
pub(crate) fn verified_write(dev: &Path) -> WriteDone {
    let record = WriteRecord::from_json(serde_json::json!({
        "format": 1,
        "path": dev,
        "image": {"name": "img", "version": "1"},
        "bytes_verified": 4096,
        "result": {"status": "ok"},
    }));
    let proof = record.proof().expect("a verified write record");
    WriteDone {
        record,
        proof,
        source: None,
    }
}

#[cfg(test)]
mod tests;
