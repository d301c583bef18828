//! The agent's status snapshot (`tek status`): every bay with what its disk is doing, every
//! disk present, the jobs, and the one-line summary also sent to systemd as STATUS.

use crate::daemon::Agent;
use crate::daemon::matching::DiskStatus;
use crate::job::{Job, JobState};
use crate::server::protocol::{BayView, DiskView, Status};

impl Agent {
    /// Everything at a glance.
    pub fn status(&self) -> Status {
        let inner = self.lock();
        let mut bays = Vec::new();
        for b in &self.cfg.bays {
            let here = inner
                .disks
                .values()
                .find(|e| e.bay.as_deref() == Some(&b.name));
            let (state, job) = match here {
                None => ("empty".to_string(), None),
                Some(e) => (
                    e.status.line(),
                    match &e.status {
                        DiskStatus::Running { job }
                        | DiskStatus::Done { job }
                        | DiskStatus::Refused { job, .. }
                        | DiskStatus::Stopped { job, .. } => Some(job.clone()),
                        _ => None,
                    },
                ),
            };
            let progress = job
                .as_ref()
                .and_then(|j| inner.running.get(j))
                .and_then(|r| r.progress.clone());
            bays.push(BayView {
                name: b.name.clone(),
                matcher: match (&b.port_path, &b.loop_backing) {
                    (Some(p), _) => format!("port {p}"),
                    (_, Some(g)) => format!("loop backing {g}"),
                    _ => String::new(),
                },
                default_image: b.default_image.as_ref().map(ToString::to_string),
                disk: here.map(|e| e.disk.name.clone()),
                state,
                job,
                progress,
            });
        }
        let disks: Vec<DiskView> = inner
            .disks
            .values()
            .map(|e| DiskView {
                disk: e.disk.clone(),
                bay: e.bay.clone(),
                status: e.status.clone(),
            })
            .collect();
        let mut jobs: Vec<Job> = inner.jobs.values().cloned().collect();
        jobs.sort_by(|a, b| a.history[0].at.cmp(&b.history[0].at));
        let progress = inner
            .running
            .iter()
            .filter_map(|(id, r)| r.progress.clone().map(|p| (id.clone(), p)))
            .collect();
        let count = |s: JobState| jobs.iter().filter(|j| j.state == s).count();
        let refused = disks
            .iter()
            .filter(|d| matches!(d.status, DiskStatus::Refused { .. }))
            .count();
        let summary = format!(
            "{} bays, {} disks; jobs: {} running, {} queued, {} interrupted, {} failed, {} done; {} refused",
            bays.len(),
            disks.len(),
            inner.running.len(),
            count(JobState::Queued),
            count(JobState::Interrupted),
            count(JobState::Failed),
            count(JobState::Done),
            refused
        );
        Status {
            summary,
            bays,
            disks,
            jobs,
            progress,
        }
    }
}
