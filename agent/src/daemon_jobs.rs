//! The job requests the agent answers (`tek job add|show|list|cancel|retry`): validating,
//! journaling and offering a new job to the disks present, cancelling without ever wiping staged
//! data, and retrying from the last safe step.

use super::*;

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
        if ticket.trim().is_empty() {
            bail!("adding a job: the ticket is empty");
        }
        check_image_ref(image)?;
        let target = match (bay, serial) {
            (Some(b), None) => {
                if self.cfg.bay(&b).is_none() {
                    let names: Vec<_> = self.cfg.bays.iter().map(|b| b.name.as_str()).collect();
                    bail!("adding a job: no bay {b:?} (bays: {})", names.join(", "));
                }
                JobTarget::Bay(b)
            }
            (None, Some(s)) if !s.trim().is_empty() => JobTarget::Serial(s.trim().to_string()),
            _ => bail!("adding a job: give exactly one of --bay or --serial"),
        };
        let job = Job::new(ticket, image, data, target);
        self.steps.validate(&job)?;
        let mut inner = self.lock();
        self.journal.save(&job)?;
        inner.jobs.insert(job.id.clone(), job.clone());
        self.emit(Event::JobState {
            job: Box::new(job.clone()),
        });
        self.reconsider_all(&mut inner);
        let job = inner.jobs.get(&job.id).cloned().unwrap_or(job);
        Ok(job)
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<Job> {
        match self.lock().jobs.get(id) {
            Some(j) => Ok(j.clone()),
            None => bail!("no job {id}"),
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
        if let Some(r) = inner.running.get(id) {
            r.ctl.request(StopCause::Cancel);
            return Ok(inner.jobs[id].clone());
        }
        let Some(job) = inner.jobs.get_mut(id) else {
            bail!("no job {id}");
        };
        if job.state.is_terminal() {
            bail!("job {id} is already {}", job.state);
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

    /// The custody records changed (`tek data withdraw` says so): every job whose dataset may
    /// no longer be migrated is cancelled if it waits, or stopped at its next safe point before
    /// the migration if it runs. Returns the ids of the jobs affected. The runner checks the
    /// custody records itself too, so this only makes it prompt.
    pub fn custody_changed(&self) -> Vec<String> {
        let mut inner = self.lock();
        let mut hit = Vec::new();
        let ids: Vec<String> = inner
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
            bail!("job {id} is running");
        }
        let Some(job) = inner.jobs.get_mut(id) else {
            bail!("no job {id}");
        };
        if !matches!(
            job.state,
            JobState::Failed | JobState::Cancelled | JobState::Interrupted
        ) {
            bail!(
                "job {id} is {}; only failed, cancelled or interrupted jobs can be retried",
                job.state
            );
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
