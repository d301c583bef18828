//! The service report of a job: what a technician prints or attaches to the ticket. Built
//! from the journaled job record alone, so `tek report` works without the agent, and written
//! by the agent to `<state>/reports/<job>.json` and `.html` when the job ends.
//!
//! Format version [`REPORT_FORMAT`]; the JSON carries the device, the image and its signature
//! status, the imager's verification report, the client data restore-and-verify result, the
//! staging wipe's sanitization record, timings, and the full state history. What the report says
//! about the client data (outcome line, sanitization section, `data_custody`) comes from the
//! custody records of the dataset at the time the report is made ([`Report::with_custody`]),
//! never from what the job assumed.
//! It also carries the audit log's head with the checkpoint signed for this report (`audit`), so a
//! printed report pins the audit chain off the machine.

mod page;

use serde::{Deserialize, Serialize};

use crate::job::{DeviceRecord, Job, JobState, Transition};

/// Version of the report JSON (2: `data_custody`).
pub const REPORT_FORMAT: u32 = 2;

/// Durations in seconds between journaled states.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timings {
    /// When the job was queued.
    pub queued: Option<String>,
    /// When a disk was (last) claimed.
    pub started: Option<String>,
    /// When the job ended.
    pub finished: Option<String>,
    /// Writing and verifying the image.
    pub image_secs: Option<f64>,
    /// Restoring and verifying client data.
    pub data_secs: Option<f64>,
    /// Wiping the staging copy.
    pub wipe_secs: Option<f64>,
    /// Claim to end.
    pub total_secs: Option<f64>,
}

/// Where the audit log stood when the report was written: its head and the checkpoint signed
/// for this report (keep it: `tek audit verify` must find this entry with this hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditAnchor {
    /// Entries in the audit log, up to and including this job's `job_finished` entry.
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
    /// The signed checkpoint of that entry.
    pub checkpoint: client_data::Checkpoint,
}

impl AuditAnchor {
    /// The anchor of a fresh checkpoint.
    pub fn of(cp: client_data::Checkpoint) -> AuditAnchor {
        AuditAnchor {
            entries: cp.seq + 1,
            head: cp.hash.clone(),
            checkpoint: cp,
        }
    }

    /// The anchor saved in a written report (`<reports>/<job>.json`), if any.
    pub fn saved(reports: &std::path::Path, job: &str) -> Option<AuditAnchor> {
        let text = std::fs::read(reports.join(format!("{job}.json"))).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        serde_json::from_value(v.get("audit")?.clone()).ok()
    }
}

/// A service report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Always [`REPORT_FORMAT`].
    pub format: u32,
    /// Job id.
    pub job: String,
    /// Service ticket.
    pub ticket: String,
    /// Final (or current) state.
    pub state: JobState,
    /// One line: what this means for the technician.
    pub outcome: String,
    /// Created by a provisioning bay.
    pub provisioning: bool,
    /// The disk.
    pub device: Option<DeviceRecord>,
    /// Image `NAME@VERSION`.
    pub image: String,
    /// Manifest hash, signature status, size.
    pub image_details: Option<serde_json::Value>,
    /// The imager's report: bytes written, read-back verification, GPT fix-ups.
    pub verification: Option<serde_json::Value>,
    /// The dataset migrated, if any.
    pub dataset: Option<String>,
    /// Restore result: entries and bytes restored and verified.
    pub data_migration: Option<serde_json::Value>,
    /// Sanitization record of the staging wipe.
    pub sanitization: Option<serde_json::Value>,
    /// The dataset as the custody records showed it when the report was made (`None` when
    /// there is no dataset or the records could not be read).
    pub data_custody: Option<client_data::DatasetFate>,
    /// Why the custody records could not be read, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_custody_error: Option<String>,
    /// Timings.
    pub timings: Timings,
    /// Error of a failed job.
    pub error: Option<String>,
    /// Every state change.
    pub history: Vec<Transition>,
    /// The audit log's head and signed checkpoint at the end of the job (set by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditAnchor>,
}

fn parse(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

fn secs(a: Option<&str>, b: Option<&str>) -> Option<f64> {
    let d = parse(b?)? - parse(a?)?;
    Some((d.as_seconds_f64() * 1000.0).round() / 1000.0)
}

fn last(job: &Job, s: JobState) -> Option<&str> {
    job.history
        .iter()
        .rev()
        .find(|t| t.state == s)
        .map(|t| t.at.as_str())
}

/// One line on what the custody records say happened to a dataset.
pub fn fate_line(f: &client_data::DatasetFate) -> String {
    use client_data::DatasetState as S;
    let record = f
        .sanitization_record
        .as_deref()
        .map(|r| format!(" (sanitization record {r})"))
        .unwrap_or_else(|| " (no sanitization record found)".into());
    let at = f.wiped_at.as_deref().unwrap_or("an unrecorded time");
    match f.state {
        S::Staged | S::Migrated if f.key_present => format!(
            "dataset {} is still in staging, encrypted (custody state {})",
            f.dataset, f.state
        ),
        S::Staged | S::Migrated => format!(
            "dataset {} is in staging as {} but its key is gone (unreadable)",
            f.dataset, f.state
        ),
        S::Wiped => format!("dataset {}: staging copy wiped at {at}{record}", f.dataset),
        S::Withdrawn => format!(
            "dataset {} was destroyed at {at} because the client withdrew{}{record}",
            f.dataset,
            f.case
                .as_deref()
                .map(|c| format!(" (deletion case {c})"))
                .unwrap_or_default()
        ),
    }
}

impl Report {
    /// Builds the report of `job` from its record alone; what happened to its client data is
    /// then not stated (see [`Report::with_custody`]).
    pub fn of(job: &Job) -> Report {
        Self::build(job, None, None)
    }

    /// Builds the report of `job`, reading the custody records of its dataset from `custody`.
    pub fn with_custody(job: &Job, custody: Option<&client_data::Custody>) -> Report {
        Self::with_fate(job, |id| match custody {
            Some(c) => c.dataset_fate(id).map_err(|e| e.to_string()),
            None => Err("custody records not available".to_string()),
        })
    }

    /// Builds the report of `job`, reading its dataset's fate from the custody records
    /// read-only (`tek report`).
    pub fn with_records(job: &Job, records: &client_data::CustodyRecords) -> Report {
        Self::with_fate(job, |id| {
            records.dataset_fate(id).map_err(|e| e.to_string())
        })
    }

    fn with_fate(
        job: &Job,
        fate_of: impl FnOnce(&client_data::DatasetId) -> Result<client_data::DatasetFate, String>,
    ) -> Report {
        let Some(ds) = job.dataset.as_deref() else {
            return Self::build(job, None, None);
        };
        let fate = ds
            .parse::<client_data::DatasetId>()
            .map_err(|e| e.to_string())
            .and_then(|id| fate_of(&id));
        match fate {
            Ok(f) => Self::build(job, Some(f), None),
            Err(e) => Self::build(job, None, Some(e)),
        }
    }

    fn build(
        job: &Job,
        fate: Option<client_data::DatasetFate>,
        fate_err: Option<String>,
    ) -> Report {
        let end = if job.state.is_terminal() {
            job.history.last().map(|t| t.at.as_str())
        } else {
            None
        };
        let started = last(job, JobState::Claimed);
        let timings = Timings {
            queued: job.entered(JobState::Queued).map(String::from),
            started: started.map(String::from),
            finished: end.map(String::from),
            image_secs: secs(
                last(job, JobState::Writing),
                last(job, JobState::ImageVerified),
            ),
            data_secs: secs(
                last(job, JobState::Migrating),
                last(job, JobState::DataVerified),
            ),
            wipe_secs: secs(last(job, JobState::Wiping), last(job, JobState::Reporting)),
            total_secs: secs(started, end),
        };
        let data = match (&job.dataset, &fate) {
            (None, _) => None,
            (Some(_), Some(f)) => Some(fate_line(f)),
            (Some(d), None) => Some(format!(
                "what happened to dataset {d} is unknown here: {} (see `tek data show {d}`)",
                fate_err.as_deref().unwrap_or("custody records not read")
            )),
        };
        let note = job.history.last().and_then(|t| t.note.clone());
        let outcome = match (job.state, &data) {
            (JobState::Done, Some(d)) => format!(
                "done: image written and verified, client data migrated and verified; {d}; safe to remove"
            ),
            (JobState::Done, None) => "done: image written and verified; safe to remove".into(),
            (JobState::Failed, d) => format!(
                "FAILED: {}{}",
                job.error.as_deref().unwrap_or("unknown error"),
                d.as_ref().map(|d| format!("; {d}")).unwrap_or_default()
            ),
            (JobState::Cancelled, d) => format!(
                "cancelled{}{}",
                note.map(|n| format!(" ({n})")).unwrap_or_default(),
                d.as_ref().map(|d| format!("; {d}")).unwrap_or_default()
            ),
            (s, _) => format!("in progress ({s})"),
        };
        Report {
            format: REPORT_FORMAT,
            job: job.id.to_string(),
            ticket: job.ticket.clone(),
            state: job.state,
            outcome,
            provisioning: job.provisioning,
            device: job.device.clone(),
            image: job.image.clone(),
            image_details: job.results.image.clone(),
            verification: job.results.write.as_ref().map(|r| r.json().clone()),
            dataset: job.dataset.clone(),
            data_migration: job.results.restore.as_ref().map(|r| r.json().clone()),
            sanitization: job.results.sanitization.as_ref().map(|r| r.json().clone()),
            data_custody: fate,
            data_custody_error: fate_err,
            timings,
            error: job.error.clone(),
            history: job.history.clone(),
            audit: None,
        }
    }

    /// The first thing the page says: the outcome in one sentence, and its tone.
    pub(crate) fn sentence(&self, lh: &client_data::Letterhead) -> (Tone, String) {
        let img = &self.image;
        let data = self.dataset.as_ref().map(|_| self.custody_words(lh));
        let wiped = self
            .data_custody
            .as_ref()
            .is_some_and(|f| f.state == client_data::DatasetState::Wiped);
        match (self.state, &data) {
            (JobState::Done, None) => (
                Tone::Good,
                format!("Done: image {img} written and verified; the disk is safe to remove."),
            ),
            (JobState::Done, Some(_)) if wiped => (
                Tone::Good,
                format!(
                    "Done: image {img} written and verified, the client's data restored and \
                     verified, and the staging copy wiped; the disk is safe to remove."
                ),
            ),
            (JobState::Done, Some(d)) => (
                Tone::Open,
                format!(
                    "Done: image {img} written and verified and the client's data restored and \
                     verified; the data set is {d}; the disk is safe to remove."
                ),
            ),
            (JobState::Failed, d) => {
                let during = self
                    .history
                    .iter()
                    .rev()
                    .nth(1)
                    .map(|t| t.state.words())
                    .unwrap_or("starting");
                (
                    Tone::Bad,
                    format!(
                        "FAILED ({during}): {}{}.",
                        page::fit_to(
                            self.error.as_deref().unwrap_or("unknown error"),
                            page::REASON_MAX
                        ),
                        d.as_ref()
                            .map(|d| format!("; the data set is {d}"))
                            .unwrap_or_default()
                    ),
                )
            }
            (JobState::Cancelled, d) => {
                let note = self.history.last().and_then(|t| t.note.clone());
                (
                    Tone::Open,
                    format!(
                        "Cancelled{}{}.",
                        note.map(|n| format!(" ({n})")).unwrap_or_default(),
                        d.as_ref()
                            .map(|d| format!("; the data set is {d}"))
                            .unwrap_or_default()
                    ),
                )
            }
            (s, _) => (Tone::Open, format!("In progress: {}.", s.words())),
        }
    }

    /// What the custody records say about the job's data set, in words, with times in the
    /// depot's zone ("still in staging, encrypted", "wiped 2026-03-11 10:00:07 GMT").
    pub(crate) fn custody_words(&self, lh: &client_data::Letterhead) -> String {
        use client_data::DatasetState as S;
        let Some(f) = &self.data_custody else {
            return format!(
                "unknown here: {}",
                self.data_custody_error
                    .as_deref()
                    .unwrap_or("custody records not read")
            );
        };
        let at = f
            .wiped_at
            .as_deref()
            .map(|t| lh.time(t))
            .unwrap_or_else(|| "at an unrecorded time".into());
        match f.state {
            S::Staged | S::Migrated if f.key_present => {
                "still in staging, encrypted (not wiped yet)".into()
            }
            S::Staged | S::Migrated => "in staging, but its key is gone (unreadable)".into(),
            S::Wiped => format!("staging copy wiped {at}"),
            S::Withdrawn => format!(
                "destroyed {at} because the client withdrew{}",
                f.case
                    .as_deref()
                    .map(|c| format!(" (deletion case {c})"))
                    .unwrap_or_default()
            ),
        }
    }

    /// The report as terminal text: the page's sections and rows, aligned.
    pub fn to_text(&self, lh: &client_data::Letterhead) -> String {
        let p = page::Page::of(self, lh);
        askama::Template::render(&page::TextPage { p: &p })
            .unwrap_or_else(|e| format!("rendering the report failed: {e}\n"))
    }

    /// The report as a printable A4 page under the depot's letterhead.
    pub fn to_html(&self, lh: &client_data::Letterhead) -> String {
        askama::Template::render(&page::Page::of(self, lh))
            .unwrap_or_else(|e| format!("<!doctype html><p>rendering failed: {e}</p>\n"))
    }
}

/// How the outcome reads: good (done, nothing left to do), bad (failed), open (something
/// remains: data still in staging, a job in progress or cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tone {
    Good,
    Bad,
    Open,
}

#[cfg(test)]
mod tests;
