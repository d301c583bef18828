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

use std::fmt::Write as _;

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
        let Some(ds) = job.dataset.as_deref() else {
            return Self::build(job, None, None);
        };
        let fate = match (custody, ds.parse::<client_data::DatasetId>()) {
            (Some(c), Ok(id)) => c.dataset_fate(&id).map_err(|e| e.to_string()),
            (None, _) => Err("custody records not available".to_string()),
            (_, Err(e)) => Err(e.to_string()),
        };
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

    fn sections(&self) -> Vec<(&'static str, Vec<(String, String)>)> {
        let mut out = Vec::new();
        let mut head = vec![
            ("job".to_string(), self.job.clone()),
            ("ticket".into(), self.ticket.clone()),
            ("outcome".into(), self.outcome.clone()),
        ];
        if self.provisioning {
            head.push(("provisioning".into(), "yes (bay default image)".into()));
        }
        out.push(("Service report", head));
        if let Some(d) = &self.device {
            out.push((
                "Device",
                vec![
                    ("model".into(), d.model.clone()),
                    (
                        "serial".into(),
                        d.serial.clone().unwrap_or_else(|| "-".into()),
                    ),
                    ("bus".into(), d.bus.to_string()),
                    ("size".into(), blockdev::sysfs::human_size(d.size_bytes)),
                    ("device".into(), d.dev_path.clone()),
                    ("bay".into(), d.bay.clone().unwrap_or_else(|| "-".into())),
                ],
            ));
        }
        let mut img = vec![("image".into(), self.image.clone())];
        flatten("", self.image_details.as_ref(), &mut img);
        out.push(("Image and signature", img));
        let mut ver = Vec::new();
        flatten("", self.verification.as_ref(), &mut ver);
        out.push(("Verification", ver));
        if let Some(ds) = &self.dataset {
            let mut data = vec![("dataset".into(), ds.clone())];
            flatten("", self.data_migration.as_ref(), &mut data);
            out.push(("Client data migration", data));
            let mut san = Vec::new();
            let custody = match &self.data_custody {
                Some(f) => fate_line(f),
                None => format!(
                    "unknown here: {} (see `tek data show {ds}`)",
                    self.data_custody_error
                        .as_deref()
                        .unwrap_or("custody records not read")
                ),
            };
            san.push(("custody records".into(), custody));
            flatten("", self.sanitization.as_ref(), &mut san);
            out.push(("Sanitization of the staging copy", san));
        }
        let t = &self.timings;
        let f = |v: Option<f64>| v.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into());
        out.push((
            "Timings",
            vec![
                ("queued".into(), t.queued.clone().unwrap_or_default()),
                ("started".into(), t.started.clone().unwrap_or_default()),
                ("finished".into(), t.finished.clone().unwrap_or_default()),
                ("image write + verify".into(), f(t.image_secs)),
                ("data restore + verify".into(), f(t.data_secs)),
                ("staging wipe".into(), f(t.wipe_secs)),
                ("total".into(), f(t.total_secs)),
            ],
        ));
        if let Some(a) = &self.audit {
            let c = &a.checkpoint;
            out.push((
                "Audit log",
                vec![
                    ("entries".into(), a.entries.to_string()),
                    (
                        "head".into(),
                        format!("seq {} hash {}", a.entries - 1, a.head),
                    ),
                    (
                        "checkpoint".into(),
                        format!("seq {} hash {} signed {}", c.seq, c.hash, c.time),
                    ),
                    ("audit key".into(), c.public_key.clone()),
                    ("signature".into(), c.signature.clone()),
                ],
            ));
        }
        out
    }

    /// Plain text for the terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (title, rows) in self.sections() {
            let _ = writeln!(s, "== {title}");
            let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in rows {
                let _ = writeln!(s, "  {k:<w$}  {v}");
            }
        }
        s
    }

    /// A printable HTML page.
    pub fn to_html(&self) -> String {
        let mut s = String::from(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Service report ",
        );
        s.push_str(&esc(&self.job));
        s.push_str(
            "</title><style>body{font-family:sans-serif;max-width:50em;margin:2em auto}\
             table{border-collapse:collapse;width:100%}td{border-bottom:1px solid #ccc;\
             padding:.2em .5em;vertical-align:top}td:first-child{width:30%;color:#444}</style>\
             </head><body>\n",
        );
        for (title, rows) in self.sections() {
            let _ = writeln!(s, "<h2>{}</h2>\n<table>", esc(title));
            for (k, v) in rows {
                let _ = writeln!(s, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
            }
            s.push_str("</table>\n");
        }
        s.push_str("</body></html>\n");
        s
    }
}

/// Flattens a JSON object into `a.b: value` rows (arrays of scalars joined).
fn flatten(prefix: &str, v: Option<&serde_json::Value>, out: &mut Vec<(String, String)>) {
    let Some(v) = v else { return };
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, Some(v), out);
            }
        }
        serde_json::Value::Null => {}
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        serde_json::Value::Array(a) if a.is_empty() => {
            out.push((prefix.to_string(), "none".into()))
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobTarget;

    fn done_job() -> Job {
        let mut j = Job::new(
            "T-77",
            "base@1",
            Some("ds-1".into()),
            JobTarget::Bay("a".into()),
        );
        j.results.image =
            Some(serde_json::json!({"manifest_hash": "ab", "signature": "valid (depot)"}));
        j.results.write = Some(crate::job::WriteRecord::from_json(
            serde_json::json!({"verified": true, "bytes": 100}),
        ));
        j.results.restore = Some(crate::job::RestoreRecord::from_json(
            serde_json::json!({"entries_verified": 5, "mismatches": []}),
        ));
        j.results.sanitization = Some(crate::job::SanitizationRecord::from_json(
            serde_json::json!({"method": "overwrite+unlink+key destroyed"}),
        ));
        for s in [
            JobState::Claimed,
            JobState::Writing,
            JobState::ImageVerified,
            JobState::Migrating,
            JobState::DataVerified,
            JobState::Wiping,
            JobState::Reporting,
            JobState::Done,
        ] {
            j.set_state(s, None);
        }
        j
    }

    #[test]
    fn report_has_every_section() {
        let r = Report::build(
            &done_job(),
            Some(fate(client_data::DatasetState::Wiped, false)),
            None,
        );
        let t = r.to_text();
        for want in [
            "ticket",
            "T-77",
            "manifest_hash",
            "verified",
            "entries_verified",
            "overwrite+unlink+key destroyed",
            "staging copy wiped",
            "total",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(
            t.lines()
                .any(|l| l.trim_start().starts_with("mismatches") && l.ends_with(" none")),
            "{t}"
        );
        assert!(r.timings.total_secs.is_some());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["format"], 2);
        assert_eq!(v["state"], "done");
        assert_eq!(v["data_custody"]["state"], "wiped");
    }

    #[test]
    fn audit_head_and_checkpoint_are_printed() {
        let mut r = Report::of(&done_job());
        assert!(!r.to_text().contains("Audit log"));
        let cp: client_data::Checkpoint = serde_json::from_value(serde_json::json!({
            "format": 1, "seq": 41, "hash": "ab".repeat(32), "time": "2026-03-01T10:00:00Z",
            "public_key": "PK", "signature": "SIG"
        }))
        .unwrap();
        r.audit = Some(AuditAnchor::of(cp));
        let t = r.to_text();
        for want in [
            "== Audit log",
            "entries     42",
            &format!("seq 41 hash {}", "ab".repeat(32)),
            "signed 2026-03-01T10:00:00Z",
            "SIG",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["audit"]["checkpoint"]["seq"], 41);
    }

    #[test]
    fn html_escapes() {
        let mut j = done_job();
        j.ticket = "<script>".into();
        let h = Report::of(&j).to_html();
        assert!(h.contains("&lt;script&gt;") && !h.contains("<script>"));
    }

    fn fate(state: client_data::DatasetState, key: bool) -> client_data::DatasetFate {
        client_data::DatasetFate {
            dataset: "ds-1".into(),
            state,
            wiped_at: (!key).then(|| "2026-03-11T10:00:00Z".into()),
            key_present: key,
            sanitization_record: (!key).then(|| "/r/san-ds-1.json".into()),
            case: (state == client_data::DatasetState::Withdrawn).then(|| "case-1".into()),
        }
    }

    #[test]
    fn unwiped_data_is_said_plainly() {
        let mut j = Job::new("T", "b@1", Some("ds-1".into()), JobTarget::Bay("a".into()));
        j.set_state(JobState::Cancelled, None);
        let t = Report::build(
            &j,
            Some(fate(client_data::DatasetState::Staged, true)),
            None,
        )
        .to_text();
        assert!(t.contains("still in staging"), "{t}");
    }

    #[test]
    fn data_lines_come_from_custody_not_from_the_job() {
        let mut j = Job::new("T", "b@1", Some("ds-1".into()), JobTarget::Bay("a".into()));
        j.cancel_withdrawn("the client withdrew");
        let r = Report::build(
            &j,
            Some(fate(client_data::DatasetState::Withdrawn, false)),
            None,
        );
        let t = r.to_text();
        assert!(!t.contains("still in staging"), "{t}");
        assert!(
            r.outcome
                .contains("destroyed at 2026-03-11T10:00:00Z because the client withdrew")
                && r.outcome.contains("case-1"),
            "{}",
            r.outcome
        );
        assert!(t.contains("san-ds-1.json"), "{t}");
        // Without the custody records, nothing is claimed about the data.
        let t = Report::of(&j).to_text();
        assert!(
            !t.contains("still in staging") && t.contains("unknown here"),
            "{t}"
        );
    }
}
