//! A bay's tile, computed from the agent's status snapshot: pure, so it is unit-tested without
//! a terminal; and the events pane's lines.

use std::time::Duration;

use agent::daemon::matching::DiskStatus;
use agent::job::Job;
use agent::server::protocol::{BayView, Event, Status};
use ratatui::style::Color;

use crate::cli::render::size;

/// What a bay's tile shows, by colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKind {
    /// No disk in the bay.
    Empty,
    /// A disk with nothing to do yet (or ignored).
    Waiting,
    /// A job wanted the disk, a check failed, nothing was written.
    Refused,
    /// A job is working on the disk.
    Running,
    /// The job finished: safe to remove.
    Done,
    /// The job failed, was cancelled or stopped.
    Failed,
}

impl TileKind {
    pub(super) fn colour(self) -> Color {
        match self {
            TileKind::Empty => Color::DarkGray,
            TileKind::Waiting => Color::Blue,
            TileKind::Refused => Color::Magenta,
            TileKind::Running => Color::Yellow,
            TileKind::Done => Color::Green,
            TileKind::Failed => Color::Red,
        }
    }

    pub(super) fn word(self) -> &'static str {
        match self {
            TileKind::Empty => "EMPTY",
            TileKind::Waiting => "WAITING",
            TileKind::Refused => "REFUSED",
            TileKind::Running => "RUNNING",
            TileKind::Done => "DONE",
            TileKind::Failed => "FAILED",
        }
    }
}

/// One bay's tile, computed from a status snapshot (pure, so it is unit-tested).
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    /// Bay name.
    pub bay: String,
    /// Colour class.
    pub kind: TileKind,
    /// The state in words (the reason for refused and failed).
    pub state: String,
    /// The disk: name and size.
    pub disk: Option<String>,
    /// The job's id, ticket and image.
    pub job: Option<(String, String, String)>,
    /// Running phase, fraction done and ETA.
    pub progress: Option<(String, f64, Option<Duration>)>,
}

/// The tiles of `st`, one per bay, in the configuration's order.
pub fn tiles(st: &Status) -> Vec<Tile> {
    st.bays.iter().map(|b| tile(st, b)).collect()
}

pub(super) fn tile(st: &Status, b: &BayView) -> Tile {
    let disk = b
        .disk
        .as_ref()
        .and_then(|d| st.disks.iter().find(|v| &v.disk.name == d));
    let job = b
        .job
        .as_ref()
        .and_then(|id| st.jobs.iter().find(|j| &j.id == id));
    let (kind, state) = match disk.map(|d| &d.status) {
        None => (TileKind::Empty, "empty".to_string()),
        Some(DiskStatus::Ignored { reason }) | Some(DiskStatus::Waiting { reason }) => {
            (TileKind::Waiting, reason.clone())
        }
        Some(DiskStatus::Refused { reason, .. }) => (TileKind::Refused, reason.clone()),
        Some(DiskStatus::Running { .. }) => (
            TileKind::Running,
            job.map(|j| j.state.to_string())
                .unwrap_or_else(|| "running".into()),
        ),
        Some(DiskStatus::Done { .. }) => (TileKind::Done, "done: safe to remove".into()),
        Some(DiskStatus::Stopped { reason, .. }) => (TileKind::Failed, reason.clone()),
    };
    let progress = match (kind, &b.progress) {
        (TileKind::Running, Some(p)) if p.bytes_total > 0 => {
            let frac = (p.bytes_done as f64 / p.bytes_total as f64).clamp(0.0, 1.0);
            let left = p.bytes_total.saturating_sub(p.bytes_done) as f64;
            let eta = (p.rate_bps > 0.0).then(|| Duration::from_secs_f64(left / p.rate_bps));
            Some((p.phase.clone(), frac, eta))
        }
        _ => None,
    };
    Tile {
        bay: b.name.clone(),
        kind,
        state,
        disk: disk.map(|d| format!("{} ({})", d.disk.name, size(d.disk.size_bytes))),
        job: job.map(|j| (j.id.to_string(), j.ticket.clone(), j.image.clone())),
        progress,
    }
}

/// One event as a line for the bottom pane; `None` for events too frequent to list (progress).
pub fn event_line(e: &Event) -> Option<String> {
    Some(match e {
        Event::DeviceArrived { disk, bay } => match bay {
            Some(b) => format!(
                "disk {} ({}) arrived in bay {b}",
                disk.name,
                size(disk.size_bytes)
            ),
            None => format!(
                "disk {} ({}) arrived outside every bay",
                disk.name,
                size(disk.size_bytes)
            ),
        },
        Event::DeviceLeft { name } => format!("disk {name} left"),
        Event::DiskStatus { name, status } => format!("disk {name}: {}", status.line()),
        Event::JobState { job } => job_event(job),
        Event::JobProgress { .. } => return None,
    })
}

fn job_event(j: &Job) -> String {
    match &j.error {
        Some(e) => format!("job {} ({}): {}: {e}", j.ticket, j.id, j.state.words()),
        None => format!("job {} ({}): {}", j.ticket, j.id, j.state.words()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::daemon::matching::test_disk;
    use agent::job::runner::StepProgress;
    use agent::server::protocol::DiskView;

    fn bay(name: &str, disk: Option<&str>, job: Option<&str>) -> BayView {
        BayView {
            name: name.into(),
            matcher: String::new(),
            default_image: None,
            disk: disk.map(Into::into),
            state: String::new(),
            job: job.map(|j| j.parse().unwrap()),
            progress: None,
        }
    }

    #[test]
    fn tiles_say_the_state_the_reason_and_the_progress() {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "format": 1, "id": "j-1", "ticket": "T-9", "image": "win11@2024.06",
            "target": {"bay": "b2"}, "state": "writing", "history": [], "results": {}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        job.state = agent::job::JobState::Writing;
        let mut b2 = bay("b2", Some("loop2"), Some("j-1"));
        b2.progress = Some(StepProgress {
            phase: "writing".into(),
            bytes_done: 25,
            bytes_total: 100,
            rate_bps: 5.0,
        });
        let st = Status {
            summary: String::new(),
            bays: vec![
                bay("b1", None, None),
                b2,
                bay("b3", Some("loop3"), Some("j-2")),
            ],
            disks: vec![
                DiskView {
                    disk: test_disk("loop2"),
                    bay: Some("b2".into()),
                    status: DiskStatus::Running {
                        job: "j-1".parse().unwrap(),
                    },
                },
                DiskView {
                    disk: test_disk("loop3"),
                    bay: Some("b3".into()),
                    status: DiskStatus::Refused {
                        job: "j-2".parse().unwrap(),
                        reason: "too small for the image".into(),
                    },
                },
            ],
            jobs: vec![job],
            progress: Default::default(),
        };
        let t = tiles(&st);
        assert_eq!((t[0].kind, t[0].state.as_str()), (TileKind::Empty, "empty"));
        assert_eq!(t[1].kind, TileKind::Running);
        assert_eq!(t[1].job.as_ref().unwrap().1, "T-9");
        let (phase, frac, eta) = t[1].progress.clone().unwrap();
        assert_eq!(
            (phase.as_str(), frac, eta),
            ("writing", 0.25, Some(Duration::from_secs(15)))
        );
        assert_eq!(t[1].disk.as_deref(), Some("loop2 (64.0 MiB)"));
        assert_eq!(
            (t[2].kind, t[2].state.as_str()),
            (TileKind::Refused, "too small for the image")
        );
    }
}
