//! The job requests the agent answers (`tek job add|show|list|cancel|retry`): validating,
//! journaling and offering a new job to the disks present, cancelling without ever wiping staged
//! data, and retrying from the last safe step.

use anyhow::{Result, bail};

use crate::daemon::{Agent, Inner};
use crate::job::runner::StopCause;
use crate::job::{Job, JobId, JobState, JobTarget};
use crate::server::protocol::{ErrorCode, Event};

/// A request the agent refused, with the protocol's code for the refusal: the reply carries
/// both, so a client branches on the code ([`error_code`]) and shows the sentence.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// The kind of refusal.
    pub code: ErrorCode,
    /// What the technician reads.
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
    Refused {
        code,
        message: message.into(),
    }
    .into()
}

/// The protocol code of a request's error: the [`Refused`] code it carries, else
/// [`ErrorCode::Internal`] (the agent failed doing it, e.g. journal I/O).
pub fn error_code(e: &anyhow::Error) -> ErrorCode {
    e.downcast_ref::<Refused>()
        .map_or(ErrorCode::Internal, |r| r.code)
}

impl Agent {
    /// Queues a job, then offers it to the disks present.
    pub fn add_job(
        &self,
        ticket: &str,
        image: &str,
        data: Option<String>,
        bay: Option<String>,
        serial: Option<String>,
    ) -> Result<Job> {
        self.add_job_with(ticket, image, data, bay, serial, None)
    }

    /// [`Agent::add_job`], with the technician's reason for migrating a dataset that was
    /// ingested for another ticket (`--dataset-of-other-ticket REASON`; audited).
    pub fn add_job_with(
        &self,
        ticket: &str,
        image: &str,
        data: Option<String>,
        bay: Option<String>,
        serial: Option<String>,
        dataset_of_other_ticket: Option<String>,
    ) -> Result<Job> {
        if let Some(r) = &dataset_of_other_ticket {
            if data.is_none() {
                return Err(refuse(
                    ErrorCode::InvalidArgument,
                    "adding a job: --dataset-of-other-ticket needs --data",
                ));
            }
            if r.trim().is_empty() || r.len() > 500 || r.chars().any(char::is_control) {
                return Err(refuse(
                    ErrorCode::InvalidArgument,
                    "adding a job: the reason for --dataset-of-other-ticket must be 1-500 \
                     characters of text on one line",
                ));
            }
        }
        // The ticket lands in the journal, the report and the audit log: an id, never a name.
        client_data::dataset::check_ident("ticket", ticket)
            .map_err(|e| refuse(ErrorCode::InvalidArgument, format!("adding a job: {e}")))?;
        let image = image
            .parse::<image_store::ImageRef>()
            .map_err(|e| refuse(ErrorCode::InvalidArgument, format!("adding a job: {e}")))?;
        let target = match (bay, serial) {
            (Some(b), None) => {
                if self.cfg.bay(&b).is_none() {
                    let names: Vec<_> = self.cfg.bays.iter().map(|b| b.name.as_str()).collect();
                    return Err(refuse(
                        ErrorCode::InvalidArgument,
                        format!("adding a job: no bay \"{b}\" (bays: {})", names.join(", ")),
                    ));
                }
                JobTarget::Bay(b)
            }
            (None, Some(s)) if !s.trim().is_empty() => JobTarget::Serial(s.trim().to_string()),
            _ => {
                return Err(refuse(
                    ErrorCode::InvalidArgument,
                    "adding a job: give exactly one of --bay or --serial",
                ));
            }
        };
        let mut job = Job::new(ticket, &image.to_string(), data, target);
        job.dataset_of_other_ticket = dataset_of_other_ticket.map(|r| r.trim().to_string());
        if let Err(e) = self.steps.validate(&job) {
            let why = format!(
                "checking the new job for ticket {ticket}: {}",
                crate::errors::Chain(&e)
            );
            if e.is::<crate::job::admission::ImageNotClean>() {
                return Err(self.record_refused(job, why));
            }
            return Err(refuse(ErrorCode::Rejected, why));
        }
        let mut inner = self.lock();
        let mut job = self.create_record(job)?;
        if !self.steps.image_exists(&job) {
            // `tek image rm` removed it since `validate`, and may have listed the journal
            // before this record existed: the job is recorded as failed, not left queued.
            let reason = format!(
                "image {} was removed while the job was being added",
                job.image
            );
            job.error = Some(reason.clone());
            job.set_state(JobState::Failed, Some(reason.clone()));
            self.journal.save(&job)?;
            inner.jobs.insert(job.id.clone(), job.clone());
            return Err(refuse(
                ErrorCode::Rejected,
                format!("adding a job: {reason} (job {} recorded as failed)", job.id),
            ));
        }
        inner.jobs.insert(job.id.clone(), job.clone());
        self.emit(Event::JobState {
            job: Box::new(job.clone()),
        });
        self.reconsider_all(&mut inner);
        let job = inner.jobs.get(&job.id).cloned().unwrap_or(job);
        Ok(job)
    }

    /// A new job refused by the image policy (`require_clean_image`): journaled as failed with
    /// the reason, its report written and its end audited (`finish`), shown in `tek status`
    /// and `tek job list`, as a job failed later would be. Returns the refusal to answer with.
    fn record_refused(&self, job: Job, why: String) -> anyhow::Error {
        let mut inner = self.lock();
        let mut job = match self.create_record(job) {
            Ok(j) => j,
            Err(e) => return e.context(why),
        };
        job.error = Some(why.clone());
        job.set_state(JobState::Failed, Some(why.clone()));
        if let Err(e) = self.journal.save(&job) {
            return e.context(why);
        }
        if let Err(e) = self.steps.finish(&job) {
            tracing::warn!(job = %job.id, "writing the report of a refused job: {}", crate::errors::Chain(&e));
        }
        inner.jobs.insert(job.id.clone(), job.clone());
        self.emit(Event::JobState {
            job: Box::new(job.clone()),
        });
        refuse(
            ErrorCode::Rejected,
            format!("{why} (job {} recorded as failed)", job.id),
        )
    }

    /// Journals a new job exclusively; on an id collision (128 random bits: practically never)
    /// it takes a fresh id rather than overwrite the other job's record.
    pub(super) fn create_record(&self, mut job: Job) -> Result<Job> {
        for _ in 0..3 {
            match self.journal.create(&job) {
                Err(e) if e.is::<crate::job::journal::JobIdTaken>() => {
                    tracing::warn!(job = %job.id, "job id already taken; drawing another");
                    job.id = crate::job::JobId::random();
                }
                r => return r.map(|()| job),
            }
        }
        bail!("journaling a new job: three random job ids in a row were taken")
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<Job> {
        match self.lock().jobs.get(id) {
            Some(j) => Ok(j.clone()),
            None => Err(refuse(ErrorCode::NotFound, format!("no job {id}"))),
        }
    }

    /// All jobs, oldest first.
    pub fn jobs(&self) -> Vec<Job> {
        let mut v: Vec<Job> = self.lock().jobs.values().cloned().collect();
        v.sort_by(|a, b| a.history[0].at.cmp(&b.history[0].at));
        v
    }

    /// Cancels a job: a running one stops at its next safe point; staged data is never wiped.
    pub fn cancel(&self, id: &str) -> Result<Job> {
        let mut inner = self.lock();
        let past = |job: &Job| {
            job.past_verified_migration().then(|| {
                refuse(
                    ErrorCode::Conflict,
                    format!(
                        "job {id} already verified its client data on the disk; it finishes \
                         the staging wipe and the report, and cannot be cancelled"
                    ),
                )
            })
        };
        if let Some(r) = inner.running.get(id) {
            if let Some(e) = past(&inner.jobs[id]) {
                return Err(e);
            }
            r.ctl.request(StopCause::Cancel);
            return Ok(inner.jobs[id].clone());
        }
        let Some(job) = inner.jobs.get_mut(id) else {
            return Err(refuse(ErrorCode::NotFound, format!("no job {id}")));
        };
        if job.state.is_terminal() {
            return Err(refuse(
                ErrorCode::Conflict,
                format!("job {id} is already {}", job.state),
            ));
        }
        if let Some(e) = past(job) {
            return Err(e);
        }
        job.cancel();
        let job = job.clone();
        self.journal.save(&job)?;
        let _ = self.steps.finish(&job);
        self.emit(Event::JobState {
            job: Box::new(job.clone()),
        });
        Ok(job)
    }

    /// Fails a job that is not running (queued or interrupted) with `reason`: its image was
    /// removed (`tek image rm --force`), so it cannot succeed. Staged data is never wiped by
    /// it. A running job is refused: it stops only at a safe point (cancel it).
    pub fn fail(&self, id: &str, reason: &str) -> Result<Job> {
        let mut inner = self.lock();
        if inner.running.contains_key(id) {
            return Err(refuse(
                ErrorCode::Conflict,
                format!("job {id} is running; cancel it, or wait until it ends"),
            ));
        }
        let Some(job) = inner.jobs.get_mut(id) else {
            return Err(refuse(ErrorCode::NotFound, format!("no job {id}")));
        };
        if job.state.is_terminal() {
            return Err(refuse(
                ErrorCode::Conflict,
                format!("job {id} is already {}", job.state),
            ));
        }
        job.error = Some(reason.to_string());
        job.set_state(
            JobState::Failed,
            Some(format!("{reason}; staged client data kept")),
        );
        let job = job.clone();
        self.journal.save(&job)?;
        let _ = self.steps.finish(&job);
        self.emit(Event::JobState {
            job: Box::new(job.clone()),
        });
        // A disk refused for this job may take another one now.
        self.reconsider_all(&mut inner);
        Ok(job)
    }

    /// The custody records changed (`tek data withdraw` says so): every job whose dataset may
    /// no longer be migrated is cancelled if it waits, or stopped at its next safe point before
    /// the migration if it runs. Returns the ids of the jobs affected. The runner checks the
    /// custody records itself too, so this only makes it prompt.
    pub fn custody_changed(&self) -> Vec<JobId> {
        let mut inner = self.lock();
        let mut hit = Vec::new();
        let ids: Vec<JobId> = inner
            .jobs
            .values()
            .filter(|j| j.dataset.is_some() && !j.state.is_terminal())
            .map(|j| j.id.clone())
            .collect();
        for id in ids {
            let job = inner.jobs[&id].clone();
            let Ok(Some(why)) = self.steps.dataset_gone(&job) else {
                continue;
            };
            if let Some(r) = inner.running.get(&id) {
                r.ctl.request(StopCause::Withdrawn);
            } else {
                self.cancel_withdrawn(&mut inner, &id, &why);
            }
            hit.push(id);
        }
        self.reconsider_all(&mut inner);
        hit
    }

    /// Cancels waiting job `id` because its client withdrew (`why` from the custody records).
    pub(super) fn cancel_withdrawn(&self, inner: &mut Inner, id: &str, why: &str) {
        let Some(job) = inner.jobs.get_mut(id) else {
            return;
        };
        job.cancel_withdrawn(why);
        let job = job.clone();
        tracing::info!(job = %id, %why, "job cancelled: client withdrew");
        if let Err(e) = self.journal.save(&job) {
            tracing::error!(job = %id, "journaling the cancel: {e:#}");
        }
        let _ = self.steps.finish(&job);
        self.emit(Event::JobState {
            job: Box::new(job.clone()),
        });
    }

    /// Retries a failed, cancelled or interrupted job. A job that got past a verified image
    /// resumes from the step where it stopped ([`Job::retry_point`]), on the same disk only
    /// (matched like a re-plug: its client data may be half-restored there); it waits,
    /// interrupted, until that disk is present. A job that stopped before its image was
    /// verified starts over and takes any disk in its bay (or with its serial).
    pub fn retry(&self, id: &str) -> Result<Job> {
        let mut inner = self.lock();
        if inner.running.contains_key(id) {
            return Err(refuse(ErrorCode::Conflict, format!("job {id} is running")));
        }
        let Some(job) = inner.jobs.get_mut(id) else {
            return Err(refuse(ErrorCode::NotFound, format!("no job {id}")));
        };
        if !matches!(
            job.state,
            JobState::Failed | JobState::Cancelled | JobState::Interrupted
        ) {
            return Err(refuse(
                ErrorCode::Conflict,
                format!(
                    "job {id} is {}; only failed, cancelled or interrupted jobs can be retried",
                    job.state
                ),
            ));
        }
        job.error = None;
        match job.retry_point() {
            Some(step) => {
                let on = job
                    .device
                    .as_ref()
                    .map(|d| d.identity.clone())
                    .unwrap_or_default();
                job.resume_from = Some(step);
                job.set_state(
                    JobState::Interrupted,
                    Some(format!("retried; resumes at {step} on disk {on}")),
                );
            }
            None => {
                job.resume_from = None;
                job.device = None;
                // Starting over rewrites the image: it pins the manifest its name resolves to
                // when it next claims a disk (admission.rs), not the one of the first attempt.
                job.results.image = None;
                job.results.write = None;
                job.set_state(JobState::Queued, Some("retried from the start".into()));
            }
        }
        let snapshot = job.clone();
        self.journal.save(&snapshot)?;
        self.emit(Event::JobState {
            job: Box::new(snapshot.clone()),
        });
        self.reconsider_all(&mut inner);
        Ok(inner.jobs[id].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_keeps_its_code_through_context_and_anything_else_is_internal() {
        let e = refuse(ErrorCode::NotFound, "no job j-1").context("showing a job");
        assert_eq!(error_code(&e), ErrorCode::NotFound);
        assert_eq!(
            error_code(&anyhow::anyhow!("journal: disk full")),
            ErrorCode::Internal
        );
    }
}
