//! The agent's brain: which disks are present, which bay each sits in, which job each gets,
//! and the threads running those jobs. Socket and hotplug plumbing live in `server.rs`; this
//! file is plain synchronous logic under one mutex, driven by method calls, so tests can feed it
//! hand-made disks and a fake [`JobSteps`].
//!
//! Matching a disk to a job, in order:
//! 1. a job that already claimed this disk (same identity: serial, WWN or loop backing file)
//!    and has work left: it resumes (after a crash, a restart or a re-plug);
//! 2. the very disk a job finished on stays "done, safe to remove", also after an agent restart
//!    or a re-plug: matched by serial or WWN, and for a loop device by backing file plus the
//!    kernel's `diskseq` (re-attaching is a new disk; see [`matching::is_same_medium`]);
//! 3. the oldest queued job for its bay;
//! 4. the oldest queued job expecting its serial, if its bus is allowed and its bay takes
//!    serial jobs (`serial_jobs`, default true);
//! 5. the bay's default image (a provisioning bay) makes a new job.
//!
//! A disk outside every bay is ignored before any of this: nothing is matched, checked or
//! written, whatever a job names (the status says which job named it). Otherwise a disk in a
//! bay with nothing to do is "waiting for a job". A disk is
//! only claimed after the job's checks pass ([`JobSteps::check`]); a refusal is kept as the
//! disk's status and nothing is written.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::broadcast;

use crate::config::Config;
use blockdev::DiskInfo;

use crate::daemon::matching::{DiskStatus, bay_of, is_same_medium};
use crate::job::journal::Journal;
use crate::job::runner::{Hooks, JobControl, JobSteps, StepProgress, StopCause, run_job};
use crate::job::{DeviceRecord, Job, JobId, JobState, JobTarget};
use crate::server::protocol::Event;

/// Progress events per job are sent at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

struct DiskEntry {
    disk: DiskInfo,
    bay: Option<String>,
    status: DiskStatus,
}

struct Running {
    ctl: Arc<JobControl>,
    disk: String,
    progress: Option<StepProgress>,
    last_sent: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    disks: BTreeMap<String, DiskEntry>,
    jobs: BTreeMap<JobId, Job>,
    running: HashMap<JobId, Running>,
    shutting_down: bool,
}

/// The agent state shared by the hotplug loop, the socket connections and the job threads.
pub struct Agent {
    cfg: Config,
    journal: Journal,
    steps: Arc<dyn JobSteps>,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    me: Weak<Agent>,
}

impl Agent {
    /// Loads the journal and builds the agent. Jobs that were running when the agent last
    /// stopped keep their state and resume when their disk is seen.
    pub fn new(cfg: Config, journal: Journal, steps: Arc<dyn JobSteps>) -> Result<Arc<Agent>> {
        let jobs = journal.load_all()?;
        let (events, _) = broadcast::channel(1024);
        let mut inner = Inner::default();
        for j in jobs {
            if j.state.is_active() {
                tracing::info!(job = %j.id, state = %j.state, "job will resume when its disk is seen");
            }
            inner.jobs.insert(j.id.clone(), j);
        }
        Ok(Arc::new_cyclic(|me| Agent {
            cfg,
            journal,
            steps,
            inner: Mutex::new(inner),
            events,
            threads: Mutex::new(Vec::new()),
            me: me.clone(),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking job thread must not take the whole agent down with a poisoned lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receives every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// A disk appeared or changed.
    pub fn disk_present(&self, disk: DiskInfo) {
        let mut inner = self.lock();
        if inner
            .disks
            .get(&disk.name)
            .is_some_and(|e| e.disk.identity() != disk.identity())
        {
            // The kernel reused the name for another disk before we saw the first one go.
            drop(inner);
            self.disk_gone(&disk.name);
            inner = self.lock();
        }
        let bay = bay_of(&self.cfg, &disk).map(|b| b.name.clone());
        tracing::info!(disk = %disk.name, bay = ?bay, identity = %disk.identity(), "disk present");
        self.emit(Event::DeviceArrived {
            disk: Box::new(disk.clone()),
            bay: bay.clone(),
        });
        let name = disk.name.clone();
        match inner.disks.get_mut(&name) {
            // A change event for a disk we are busy with or finished with: keep its status.
            Some(e)
                if matches!(
                    e.status,
                    DiskStatus::Running { .. } | DiskStatus::Done { .. }
                ) =>
            {
                e.disk = disk;
                return;
            }
            Some(e) => {
                e.disk = disk;
                e.bay = bay;
            }
            None => {
                let status = DiskStatus::Waiting {
                    reason: "new".into(),
                };
                inner
                    .disks
                    .insert(name.clone(), DiskEntry { disk, bay, status });
            }
        }
        self.consider(&mut inner, &name);
    }

    /// A disk went away.
    pub fn disk_gone(&self, name: &str) {
        let mut inner = self.lock();
        if inner.disks.remove(name).is_none() {
            return;
        }
        tracing::info!(disk = %name, "disk gone");
        for r in inner.running.values() {
            if r.disk == name {
                r.ctl.request(StopCause::Gone);
            }
        }
        self.emit(Event::DeviceLeft { name: name.into() });
    }

    fn reconsider_all(&self, inner: &mut Inner) {
        let names: Vec<String> = inner
            .disks
            .iter()
            .filter(|(_, e)| {
                !matches!(
                    e.status,
                    DiskStatus::Running { .. } | DiskStatus::Done { .. }
                )
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.consider(inner, &n);
        }
    }

    fn set_status(&self, inner: &mut Inner, name: &str, status: DiskStatus) {
        if let Some(e) = inner.disks.get_mut(name) {
            if e.status != status {
                tracing::info!(disk = %name, status = %status.line(), "disk status");
                e.status = status.clone();
                self.emit(Event::DiskStatus {
                    name: name.into(),
                    status,
                });
            }
        }
    }

    /// Decides what to do with a present disk that is not busy.
    fn consider(&self, inner: &mut Inner, name: &str) {
        let Some(entry) = inner.disks.get(name) else {
            return;
        };
        let disk = entry.disk.clone();
        let bay = entry.bay.clone();
        if inner.shutting_down {
            return;
        }
        let ident = disk.identity();
        let owned_by = |j: &Job| j.device.as_ref().is_some_and(|d| d.identity == ident);
        // Only the bench's own disks are ever written: a disk outside every bay gets no job,
        // whatever a job says (a serial job naming an internal disk, a job that claimed this
        // disk in a bay before it moved). Nothing is checked or opened.
        let Some(bay) = bay else {
            let reason = Self::outside_bays_reason(inner, &disk);
            self.set_status(inner, name, DiskStatus::Ignored { reason });
            return;
        };
        let bay = Some(bay);
        let mut pick = inner
            .jobs
            .values()
            .filter(|j| !inner.running.contains_key(&j.id))
            .find(|j| owned_by(j) && (j.state.is_active() || j.state == JobState::Interrupted))
            .map(|j| j.id.clone());
        if pick.is_none()
            && let Some(done) = inner.jobs.values().find(|j| {
                j.state == JobState::Done
                    && j.device.as_ref().is_some_and(|d| is_same_medium(&disk, d))
            })
        {
            let job = done.id.clone();
            self.set_status(inner, name, DiskStatus::Done { job });
            return;
        }
        let queued = |want: &dyn Fn(&JobTarget) -> bool| {
            inner
                .jobs
                .values()
                .filter(|j| j.state == JobState::Queued && want(&j.target))
                .min_by(|a, b| a.history[0].at.cmp(&b.history[0].at))
                .map(|j| j.id.clone())
        };
        if pick.is_none()
            && let Some(b) = &bay
        {
            pick = queued(&|t| matches!(t, JobTarget::Bay(x) if x == b));
        }
        let bus_ok = self.cfg.policy.allowed_buses.contains(&disk.bus);
        let serial_bay = bay
            .as_deref()
            .and_then(|b| self.cfg.bay(b))
            .is_some_and(|b| b.serial_jobs);
        if pick.is_none()
            && bus_ok
            && serial_bay
            && let Some(s) = disk.serial.as_ref().filter(|s| !s.trim().is_empty())
        {
            pick = queued(&|t| matches!(t, JobTarget::Serial(x) if x == s.trim()));
        }
        if pick.is_none()
            && let Some(b) = &bay
            && let Some(image) = self.cfg.bay(b).and_then(|c| c.default_image.clone())
        {
            let mut job = Job::new(
                &format!("provisioning-{b}"),
                &image.to_string(),
                None,
                JobTarget::Bay(b.clone()),
            );
            job.provisioning = true;
            let job = match self.create_record(job) {
                Ok(job) => job,
                Err(e) => {
                    let reason = format!(
                        "journaling a provisioning job: {}",
                        crate::errors::Chain(&e)
                    );
                    self.set_status(inner, name, DiskStatus::Waiting { reason });
                    return;
                }
            };
            pick = Some(job.id.clone());
            inner.jobs.insert(job.id.clone(), job);
        }
        let Some(id) = pick else {
            let status = if bay.is_some() {
                DiskStatus::Waiting {
                    reason: "waiting for a job".into(),
                }
            } else {
                DiskStatus::Ignored {
                    reason: "not in a bench bay and no job expects its serial".into(),
                }
            };
            self.set_status(inner, name, status);
            return;
        };
        let job = inner.jobs[&id].clone();
        // A queued job whose client withdrew is cancelled here, before any disk is claimed.
        if job.state == JobState::Queued
            && job.dataset.is_some()
            && let Ok(Some(why)) = self.steps.dataset_gone(&job)
        {
            self.cancel_withdrawn(inner, &id, &why);
            return self.consider(inner, name);
        }
        let info = match self.steps.check(&job, &disk) {
            Ok(info) => info,
            Err(reason) => {
                tracing::warn!(disk = %name, job = %id, %reason, "disk refused");
                self.set_status(inner, name, DiskStatus::Refused { job: id, reason });
                return;
            }
        };
        self.start(inner, job, disk, bay, info);
    }

    /// Why a disk outside every bay is left alone, naming the jobs that would have wanted it.
    fn outside_bays_reason(inner: &Inner, disk: &DiskInfo) -> String {
        let ident = disk.identity();
        let serial = disk
            .serial
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let wanting: Vec<&str> = inner
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .filter(|j| {
                j.device.as_ref().is_some_and(|d| d.identity == ident)
                    || matches!((&j.target, serial), (JobTarget::Serial(s), Some(have)) if s == have)
            })
            .map(|j| j.id.as_str())
            .collect();
        if wanting.is_empty() {
            "not in a bench bay: never written".into()
        } else {
            format!(
                "not in a bench bay: never written, although job {} names it (jobs match only \
                 disks in a bay)",
                wanting.join(", ")
            )
        }
    }

    fn start(
        &self,
        inner: &mut Inner,
        mut job: Job,
        disk: DiskInfo,
        bay: Option<String>,
        info: serde_json::Value,
    ) {
        let record = DeviceRecord {
            name: disk.name.clone(),
            dev_path: disk.dev_path.display().to_string(),
            identity: disk.identity(),
            bus: disk.bus.clone(),
            model: disk.model_line(),
            serial: disk.serial.clone(),
            wwn: disk.wwn.clone(),
            size_bytes: disk.size_bytes,
            bay,
            diskseq: disk.diskseq,
        };
        job.device = Some(record);
        if job.results.image.is_none() {
            job.results.image = Some(info);
        }
        tracing::info!(job = %job.id, disk = %disk.name, from = %job.next_step(), "starting job");
        let ctl = Arc::new(JobControl::default());
        inner.running.insert(
            job.id.clone(),
            Running {
                ctl: ctl.clone(),
                disk: disk.name.clone(),
                progress: None,
                last_sent: None,
            },
        );
        inner.jobs.insert(job.id.clone(), job.clone());
        self.set_status(
            inner,
            &disk.name,
            DiskStatus::Running {
                job: job.id.clone(),
            },
        );
        let Some(me) = self.me.upgrade() else { return };
        let dev: PathBuf = disk.dev_path.clone();
        let handle = std::thread::Builder::new()
            .name(format!("job-{}", job.id))
            .spawn(move || me.job_thread(job, dev, ctl));
        match handle {
            Ok(h) => self
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(h),
            Err(e) => tracing::error!("spawning a job thread: {e}"),
        }
    }

    fn job_thread(self: Arc<Self>, mut job: Job, dev: PathBuf, ctl: Arc<JobControl>) {
        let state = |j: &Job| {
            let mut inner = self.lock();
            inner.jobs.insert(j.id.clone(), j.clone());
            if j.state.is_terminal() || j.state == JobState::Interrupted {
                self.settle(&mut inner, j);
            }
            tracing::info!(job = %j.id, state = %j.state, "job state");
            self.emit(Event::JobState {
                job: Box::new(j.clone()),
            });
        };
        let progress = |j: &Job, p: StepProgress| {
            let mut inner = self.lock();
            if let Some(r) = inner.running.get_mut(&j.id) {
                r.progress = Some(p.clone());
                if r.last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL) {
                    r.last_sent = Some(Instant::now());
                    self.emit(Event::JobProgress {
                        id: j.id.clone(),
                        progress: p,
                    });
                }
            }
        };
        let hooks = Hooks {
            state: &state,
            progress: &progress,
        };
        if let Err(e) = run_job(
            &mut job,
            &dev,
            self.steps.as_ref(),
            &self.journal,
            &ctl,
            &hooks,
        ) {
            tracing::error!(job = %job.id, "journaling failed, job stopped: {e:#}");
        }
        let mut inner = self.lock();
        let name = inner.running.get(&job.id).map(|r| r.disk.clone());
        inner.jobs.insert(job.id.clone(), job.clone());
        let settled = self.settle(&mut inner, &job);
        inner.running.remove(&job.id);
        // An interrupted job whose disk is (again) present resumes now: the disk may have come
        // back while the job was still winding down.
        if settled
            && job.state == JobState::Interrupted
            && let Some(name) = name
        {
            self.consider(&mut inner, &name);
        }
    }

    /// Gives the disk of a job that stopped running its final status, if the disk under that
    /// name is still the one the job ran on. Called from the state hook, before the job's
    /// final state event goes out (so a client that sees `done` also sees the bay done), and
    /// again when the job thread ends.
    fn settle(&self, inner: &mut Inner, job: &Job) -> bool {
        let ident = job.device.as_ref().map(|d| d.identity.clone());
        let Some(name) = inner
            .running
            .get(&job.id)
            .map(|r| r.disk.clone())
            .filter(|n| inner.disks.get(n).map(|e| e.disk.identity()) == ident)
        else {
            return false;
        };
        let status = match job.state {
            JobState::Done => DiskStatus::Done {
                job: job.id.clone(),
            },
            s => DiskStatus::Stopped {
                job: job.id.clone(),
                reason: match &job.error {
                    Some(e) => format!("{s}: {e}"),
                    None => s.to_string(),
                },
            },
        };
        self.set_status(inner, &name, status);
        true
    }

    /// Stops taking work, asks every running job to reach a safe point, and waits for them.
    pub fn shutdown(&self) {
        {
            let mut inner = self.lock();
            inner.shutting_down = true;
            for r in inner.running.values() {
                r.ctl.request(StopCause::Shutdown);
            }
        }
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    /// Waits until no job is running (tests, the demo).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.lock().running.is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

pub mod matching;
mod requests;
pub use requests::{Refused, error_code};
mod status;

#[cfg(test)]
pub(crate) mod tests;
