//! Deletion cases: one per client and received date, due five working days after receipt,
//! complete only when nothing of the client is left, live or in a key backup.
//!
//! `<staging>/cases/<case>.json` (format 2; format 1, without `pending` and `backup_late`, is
//! still read). When a case completes, a confirmation for the client is written to
//! `<reports>/deletions/<case>.json` and `.html`.
//!
//! Deadline: five working days after the request was received (weekends and the configured
//! holidays skipped). A case completes once (1) no dataset of the client is live, has a key or
//! is being ingested (for a client who was reactivated since: none that existed when the live
//! copies were destroyed), (2) nothing is pending, and (3) no unpruned key-backup epoch holds a
//! key of one of its datasets. Until then every `deletions()` destroys what it can still find.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, Weekday};

use crate::audit::AuditEvent;
use crate::custody::Custody;
use crate::dataset::{DatasetState, parse_rfc3339, rfc3339};
use crate::document::{self, Letterhead};
use crate::error::{DataError, io};
use crate::keystore::{mkdir_private, write_private};
use crate::withdraw::WithdrawReason;

/// The printable confirmation of a completed case (`templates/deletion.html`).
#[derive(askama::Template)]
#[template(path = "deletion.html")]
struct DeletionPage<'a> {
    lh: &'a Letterhead,
    c: &'a DeletionCase,
    outcome: String,
    request: String,
    request_kind: &'a str,
    issued: String,
    live: String,
    backups: String,
}

/// Version of the deletion case file written by this version.
pub const CASE_FORMAT: u32 = 2;

/// A deletion case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionCase {
    /// Format version ([`CASE_FORMAT`]; 1 is still read).
    pub format: u32,
    /// Case id.
    pub case: String,
    /// Client id.
    pub client: String,
    /// Withdrawal or termination.
    pub reason: WithdrawReason,
    /// Date the request was received (YYYY-MM-DD).
    pub received: String,
    /// Deadline (YYYY-MM-DD): five working days after `received`.
    pub due: String,
    /// Datasets of the client this case covers (destroyed now or earlier).
    pub datasets: Vec<String>,
    /// When live copies were (last) destroyed.
    pub live_destroyed_at: String,
    /// When backup copies became unreadable (last key-backup epoch holding a key destroyed).
    pub backup_unreadable_at: Option<String>,
    /// When they will (expiry of the last epoch holding one of the keys).
    pub backup_unreadable_expected: String,
    /// Set when the backups will only be unreadable after `due`: the date and why.
    #[serde(default)]
    pub backup_late: Option<String>,
    /// Datasets not destroyed yet (an ingest in flight, a restore holding the dataset), by id.
    #[serde(default)]
    pub pending: Vec<String>,
    /// "open" or "complete".
    pub state: String,
    /// The confirmation document (JSON), once complete.
    pub confirmation: Option<String>,
}

impl DeletionCase {
    /// The confirmation for the client as a printable A4 page under the depot's letterhead.
    pub fn to_html(&self, lh: &Letterhead) -> String {
        let live = lh.time(&self.live_destroyed_at);
        let backups = self
            .backup_unreadable_at
            .as_deref()
            .map(|t| lh.time(t))
            .unwrap_or_else(|| format!("{} (expected)", self.backup_unreadable_date()));
        let outcome = if self.backups_in_time() {
            format!(
                "All data of client {} held by {} has been deleted, within the deadline of {}.",
                self.client, lh.name, self.due
            )
        } else {
            format!(
                "All data of client {} held by {} has been deleted; the backup copies became \
                 unreadable on {}, after the deadline of {}.",
                self.client,
                lh.name,
                self.backup_unreadable_date(),
                self.due
            )
        };
        let (request, request_kind) = match self.reason {
            WithdrawReason::Withdrawal => (
                format!(
                    "On {} we received your written withdrawal of consent.",
                    self.received
                ),
                "withdrawal of consent",
            ),
            WithdrawReason::Termination => (
                format!(
                    "Your contract with us ended; we recorded this on {}.",
                    self.received
                ),
                "end of contract",
            ),
        };
        document::render(&DeletionPage {
            lh,
            c: self,
            outcome,
            request,
            request_kind,
            issued: lh.time(
                self.backup_unreadable_at
                    .as_deref()
                    .unwrap_or(&self.live_destroyed_at),
            ),
            live,
            backups,
        })
    }

    /// The date (YYYY-MM-DD) by which backups are (or will be) unreadable.
    pub fn backup_unreadable_date(&self) -> &str {
        let t = self
            .backup_unreadable_at
            .as_deref()
            .unwrap_or(&self.backup_unreadable_expected);
        t.get(..10).unwrap_or(t)
    }

    /// True when the backups are (or will be) unreadable on or before the due date.
    pub fn backups_in_time(&self) -> bool {
        self.backup_unreadable_date() <= self.due.as_str()
    }
}

/// Parses YYYY-MM-DD.
pub fn parse_date(s: &str) -> Result<Date, DataError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, fmt).map_err(|e| DataError::Invalid {
        what: "date",
        value: s.to_string(),
        reason: format!("expected YYYY-MM-DD ({e})"),
    })
}

/// Formats YYYY-MM-DD.
pub fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// `n` working days after `start` (weekends and `holidays` skipped).
pub fn add_working_days(start: Date, n: u32, holidays: &[Date]) -> Date {
    let mut d = start;
    let mut left = n;
    while left > 0 {
        d = d.next_day().expect("date in range");
        if !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday) && !holidays.contains(&d) {
            left -= 1;
        }
    }
    d
}

impl Custody {
    fn cases_dir(&self) -> std::path::PathBuf {
        self.paths.staging.join("cases")
    }

    pub(crate) fn save_case(&self, c: &DeletionCase) -> Result<(), DataError> {
        // Whatever version it was read as, it is written in this version's format.
        let c = &DeletionCase {
            format: CASE_FORMAT,
            ..c.clone()
        };
        let d = self.cases_dir();
        mkdir_private(&d)?;
        write_private(
            &d.join(format!("{}.json", c.case)),
            serde_json::to_string_pretty(c)
                .expect("serialize")
                .as_bytes(),
        )
    }

    /// Every case as stored, without bringing any up to date.
    pub(crate) fn load_cases(&self) -> Result<Vec<DeletionCase>, DataError> {
        load_cases_in(&self.cases_dir())
    }

    /// All deletion cases, brought up to date: what is still left of a withdrawn client is
    /// destroyed, and a case whose client has nothing left (live or in a key backup) completes
    /// and gets its confirmation documents.
    pub fn deletions(&self) -> Result<Vec<DeletionCase>, DataError> {
        let _lock = crate::backup::DepotLock::take(&self.paths.staging, "cases")?;
        let mut cases = self.load_cases()?;
        let now = self.now();
        for c in cases.iter_mut().filter(|c| c.state == "open") {
            if self.client_withdrawn(&c.client)? {
                // Never waits: an ingest in flight discards itself, a restore ends on its own.
                let sweep = self.sweep_client(&c.client, c.reason, "tek-deletion-sweep", None)?;
                for d in sweep.destroyed.iter().chain(&sweep.discarded) {
                    if !c.datasets.contains(d) {
                        c.datasets.push(d.clone());
                    }
                }
                if !sweep.destroyed.is_empty() {
                    c.live_destroyed_at = rfc3339(now);
                }
                c.pending = sweep.pending;
            }
            let left = self.left_of(c)?;
            let holds = |e: &crate::Epoch| e.datasets.iter().any(|d| c.datasets.contains(d));
            let kept = if self.live_epochs()?.iter().any(holds) {
                self.rotate_backups(&c.case, &c.datasets)?.kept
            } else {
                Vec::new()
            };
            let epochs = self.live_epochs()?;
            let holding: Vec<_> = epochs.iter().filter(|e| holds(e)).collect();
            if left.is_empty() && c.pending.is_empty() && holding.is_empty() {
                self.complete_case(c, now)?;
                continue;
            }
            c.backup_late = None;
            if let Some(last) = holding.iter().max_by(|a, b| a.expires.cmp(&b.expires)) {
                c.backup_unreadable_expected = last.expires.clone();
                if c.backup_unreadable_date() > c.due.as_str() {
                    let why = kept
                        .iter()
                        .find(|(e, _, _)| *e == last.epoch)
                        .map(|(_, _, why)| why.clone())
                        .unwrap_or_else(|| "it was not rotated".into());
                    c.backup_late = Some(format!(
                        "backups become unreadable on {}, after the due date {}: key-backup \
                         epoch {} holds a key of this client until it expires, and {why}",
                        c.backup_unreadable_date(),
                        c.due,
                        last.epoch
                    ));
                }
            }
            for d in left {
                if !c.pending.contains(&d) {
                    c.pending.push(d);
                }
            }
            self.save_case(c)?;
        }
        Ok(cases)
    }

    /// Datasets of `c`'s client that still exist (live, a key, or being ingested).
    fn left_of(&self, c: &DeletionCase) -> Result<Vec<String>, DataError> {
        let withdrawn = self.client_withdrawn(&c.client)?;
        let mut left = Vec::new();
        for info in self.list()? {
            if info.client != c.client {
                continue;
            }
            // A reactivated client may have new data: only what existed at destruction counts.
            let later = parse_rfc3339(&info.created)
                .zip(parse_rfc3339(&c.live_destroyed_at))
                .is_some_and(|(made, destroyed)| made > destroyed);
            if !withdrawn && later {
                continue;
            }
            if info.state.is_live() || self.keys.has(info.id.as_str()) {
                left.push(info.id.to_string());
            }
        }
        for id in &c.datasets {
            if self.keys.has(id) && !left.contains(id) {
                left.push(id.clone());
            }
        }
        if withdrawn {
            for (id, _) in self.partials_of(&c.client)? {
                left.push(id.to_string());
            }
        }
        Ok(left)
    }

    fn complete_case(&self, c: &mut DeletionCase, now: OffsetDateTime) -> Result<(), DataError> {
        let at = rfc3339(now);
        // The expected date may be earlier (prune ran late); record when it really happened.
        c.backup_unreadable_at = Some(at.clone());
        if parse_rfc3339(&c.backup_unreadable_expected).is_some_and(|t| t > now) {
            c.backup_unreadable_expected = at;
        }
        c.pending.clear();
        // The expectation is settled: `backup_unreadable_at` against `due` tells the rest.
        c.backup_late = None;
        c.state = "complete".into();
        c.format = CASE_FORMAT;
        let dir = self.paths.reports.join("deletions");
        mkdir_private(&dir)?;
        let json_path = dir.join(format!("{}.json", c.case));
        c.confirmation = Some(json_path.display().to_string());
        write_private(
            &json_path,
            serde_json::to_string_pretty(c)
                .expect("serialize")
                .as_bytes(),
        )?;
        write_private(
            &dir.join(format!("{}.html", c.case)),
            c.to_html(&self.config.letterhead).as_bytes(),
        )?;
        self.save_case(c)?;
        self.audit.append(AuditEvent::DeletionComplete {
            case: c.case.clone(),
            client: c.client.clone(),
        })
    }

    /// What the custody records say about dataset `id` now: its state, when its staging copy was
    /// destroyed, the sanitization record of that, and the deletion case that covers it.
    pub fn dataset_fate(&self, id: &crate::DatasetId) -> Result<DatasetFate, DataError> {
        crate::records::CustodyRecords::of(&self.paths, &self.keys).dataset_fate(id)
    }
}

/// Every case stored in `d` (`<staging>/cases`), oldest first, as stored; none when `d` does not
/// exist.
pub(crate) fn load_cases_in(d: &std::path::Path) -> Result<Vec<DeletionCase>, DataError> {
    let mut cases = Vec::new();
    if d.is_dir() {
        for e in std::fs::read_dir(d).map_err(io("listing cases", d))? {
            let p = e.map_err(io("listing cases", d))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let t = std::fs::read_to_string(&p).map_err(io("reading case", &p))?;
                let c: DeletionCase = serde_json::from_str(&t).map_err(|e| DataError::Corrupt {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                if c.format == 0 || c.format > CASE_FORMAT {
                    return Err(DataError::Corrupt {
                        path: p,
                        reason: format!("unknown format {}", c.format),
                    });
                }
                cases.push(c);
            }
        }
    }
    cases.sort_by(|a, b| a.received.cmp(&b.received).then(a.case.cmp(&b.case)));
    Ok(cases)
}

/// A dataset's fate as the custody records tell it (see [`Custody::dataset_fate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetFate {
    /// Dataset id.
    pub dataset: String,
    /// The client it belongs to (reports made before this field have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// State in `meta.json`.
    pub state: DatasetState,
    /// When its staging copy was destroyed.
    pub wiped_at: Option<String>,
    /// Whether its wrapped key file still exists.
    pub key_present: bool,
    /// The sanitization record file, if one was written.
    pub sanitization_record: Option<String>,
    /// The deletion case covering it, if any.
    pub case: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_days_skip_weekends_and_holidays() {
        let fri = parse_date("2026-03-06").unwrap();
        assert_eq!(format_date(add_working_days(fri, 5, &[])), "2026-03-13");
        let hol = [parse_date("2026-03-09").unwrap()];
        assert_eq!(format_date(add_working_days(fri, 5, &hol)), "2026-03-16");
        let sat = parse_date("2026-03-07").unwrap();
        assert_eq!(format_date(add_working_days(sat, 1, &[])), "2026-03-09");
    }

    #[test]
    fn bad_dates() {
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
        assert!(parse_date("2026-3-1").is_err());
    }
}
