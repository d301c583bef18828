//! Progress events: what phase each target is in and how far it has come, sent over a
//! crossbeam channel that the CLI draws as bars and the agent forwards to its clients.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::Serialize;

/// The phases of one target's job, in order (`Failed` can follow any of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Eligibility checks and claiming the target.
    Checking,
    /// Writing the image (all but the first MiB).
    Writing,
    /// Flushing writes to the medium.
    Flushing,
    /// Reading everything back and comparing hashes.
    Verifying,
    /// Moving the backup GPT, growing a partition, new GUIDs.
    FixingGpt,
    /// Growing the grown partition's filesystem and checking it with its own checker.
    GrowingFilesystem,
    /// Writing and verifying the held-back first MiB.
    FirstMib,
    /// Clearing the disk beyond the image's end.
    ClearingBeyond,
    /// Finished and verified.
    Done,
    /// Failed (the report says why).
    Failed,
}

impl Phase {
    /// The phase's name as the job progress, the JSON and the log show it (`fixing_gpt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checking => "checking",
            Phase::Writing => "writing",
            Phase::Flushing => "flushing",
            Phase::Verifying => "verifying",
            Phase::FixingGpt => "fixing_gpt",
            Phase::GrowingFilesystem => "growing_filesystem",
            Phase::FirstMib => "first_mib",
            Phase::ClearingBeyond => "clearing_beyond",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

impl Phase {
    /// The phase in words for a technician's screen (`fitting the partition table`); the JSON
    /// and the logs keep [`Phase::as_str`].
    pub fn words(self) -> &'static str {
        match self {
            Phase::Checking => "checking the disk",
            Phase::Writing => "writing",
            Phase::Flushing => "flushing to the disk",
            Phase::Verifying => "verifying",
            Phase::FixingGpt => "fitting the partition table",
            Phase::GrowingFilesystem => "growing the filesystem",
            Phase::FirstMib => "writing the partition table",
            Phase::ClearingBeyond => "clearing past the image",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One progress update for one target.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressEvent {
    /// The target.
    pub target: PathBuf,
    /// Current phase.
    pub phase: Phase,
    /// Bytes done in this phase (image offset reached).
    pub bytes_done: u64,
    /// Bytes this phase covers.
    pub bytes_total: u64,
    /// Bytes per second in this phase so far.
    pub rate_bps: f64,
    /// Estimated seconds left in this phase.
    pub eta_secs: Option<f64>,
}

/// Sends throttled progress events for one target (at most every 200 ms, plus every phase
/// change). A full or closed channel never blocks or fails the job.
pub struct Reporter {
    tx: Option<Sender<ProgressEvent>>,
    target: PathBuf,
    phase: Phase,
    total: u64,
    started: Instant,
    last: Instant,
}

const EVERY: Duration = Duration::from_millis(200);

impl Reporter {
    /// A reporter for `target`.
    pub fn new(tx: Option<Sender<ProgressEvent>>, target: PathBuf) -> Self {
        let now = Instant::now();
        Reporter {
            tx,
            target,
            phase: Phase::Checking,
            total: 0,
            started: now,
            last: now,
        }
    }

    /// Enters `phase`, which covers `total` bytes.
    pub fn phase(&mut self, phase: Phase, total: u64) {
        self.phase = phase;
        self.total = total;
        self.started = Instant::now();
        self.emit(0);
    }

    /// Reports `done` bytes in the current phase (throttled).
    pub fn update(&mut self, done: u64) {
        if self.last.elapsed() >= EVERY {
            self.emit(done);
        }
    }

    fn emit(&mut self, done: u64) {
        self.last = Instant::now();
        let Some(tx) = &self.tx else { return };
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = (rate > 0.0).then(|| (self.total.saturating_sub(done)) as f64 / rate);
        let _ = tx.try_send(ProgressEvent {
            target: self.target.clone(),
            phase: self.phase,
            bytes_done: done,
            bytes_total: self.total,
            rate_bps: rate,
            eta_secs: eta,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_are_the_json_names() {
        for p in [
            Phase::Checking,
            Phase::Writing,
            Phase::Flushing,
            Phase::Verifying,
            Phase::FixingGpt,
            Phase::FirstMib,
            Phase::ClearingBeyond,
            Phase::Done,
            Phase::Failed,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(p.to_string(), p.as_str());
        }
    }

    #[test]
    fn phase_changes_are_always_sent_updates_are_throttled() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut r = Reporter::new(Some(tx), "/dev/x".into());
        r.phase(Phase::Writing, 100);
        for i in 0..1000 {
            r.update(i);
        }
        r.phase(Phase::Done, 0);
        let ev: Vec<_> = rx.try_iter().collect();
        assert_eq!(ev.first().unwrap().phase, Phase::Writing);
        assert_eq!(ev.last().unwrap().phase, Phase::Done);
        assert!(ev.len() < 10, "{}", ev.len());
    }
}
