//! Withdrawal and termination: destroy a client's live data now, refuse its later ingests, and
//! follow a deletion case until its backups are unreadable too.
//!
//! Files (format 1, no personal data): `<staging>/clients/<client>.json` (known clients and whether
//! they withdrew), `<staging>/cases/<case>.json` (deletion cases). When a case completes, a
//! confirmation for the client is written to `<reports>/deletions/<case>.json` and `.html`.
//!
//! Deadline: five working days after the request was received (weekends and the configured
//! holidays skipped). Backups hold only ciphertext; the keys are in key-backup epochs that expire
//! after `backup_retention_days` working days (default 3), so a case's backup copies become
//! unreadable when the last unexpired epoch holding one of its keys is pruned, and that date is
//! known in advance.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, Weekday};

use crate::audit::AuditEvent;
use crate::custody::Custody;
use crate::dataset::{DatasetState, check_ident, parse_rfc3339, rfc3339};
use crate::error::{DataError, io};
use crate::keystore::{mkdir_private, write_private};
use crate::wipe::{WipeOptions, html_page};

/// Why a client's data is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WithdrawReason {
    /// The client withdrew consent in writing.
    Withdrawal,
    /// The contract ended.
    Termination,
}

impl std::fmt::Display for WithdrawReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WithdrawReason::Withdrawal => "withdrawal",
            WithdrawReason::Termination => "termination",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClientRecord {
    format: u32,
    client: String,
    withdrawn: bool,
    case: Option<String>,
}

/// A deletion case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionCase {
    /// Format version (1).
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
    /// Datasets destroyed for this case.
    pub datasets: Vec<String>,
    /// When live copies were destroyed.
    pub live_destroyed_at: String,
    /// When backup copies became unreadable (last key-backup epoch holding a key destroyed).
    pub backup_unreadable_at: Option<String>,
    /// When they will (expiry of the last epoch holding one of the keys).
    pub backup_unreadable_expected: String,
    /// "open" or "complete".
    pub state: String,
    /// The confirmation document (JSON), once complete.
    pub confirmation: Option<String>,
}

impl DeletionCase {
    /// A printable HTML confirmation for the client.
    pub fn to_html(&self) -> String {
        html_page(
            "Confirmation of deletion of client data",
            &[
                ("Case", self.case.clone()),
                ("Client", self.client.clone()),
                ("Request", format!("{} received {}", self.reason, self.received)),
                ("Deadline", self.due.clone()),
                ("Datasets", self.datasets.join(", ")),
                ("Live copies destroyed", self.live_destroyed_at.clone()),
                ("Backup copies unreadable", self.backup_unreadable_at.clone().unwrap_or_default()),
                ("Method", "cryptographic erase of every dataset key and key backup, plus overwrite of staged ciphertext".into()),
            ],
        )
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
    fn client_path(&self, client: &str) -> std::path::PathBuf {
        self.paths
            .staging
            .join("clients")
            .join(format!("{client}.json"))
    }

    fn client_record(&self, client: &str) -> Result<Option<ClientRecord>, DataError> {
        let p = self.client_path(client);
        match std::fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| DataError::Corrupt {
                    path: p,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading client record", &p)(e)),
        }
    }

    fn save_client(&self, r: &ClientRecord) -> Result<(), DataError> {
        let p = self.client_path(&r.client);
        mkdir_private(p.parent().expect("parent"))?;
        write_private(
            &p,
            serde_json::to_string_pretty(r)
                .expect("serialize")
                .as_bytes(),
        )
    }

    pub(crate) fn register_client(&self, client: &str) -> Result<(), DataError> {
        if self.client_record(client)?.is_none() {
            self.save_client(&ClientRecord {
                format: 1,
                client: client.into(),
                withdrawn: false,
                case: None,
            })?;
        }
        Ok(())
    }

    /// True when `client` withdrew and was not reactivated.
    pub fn client_withdrawn(&self, client: &str) -> Result<bool, DataError> {
        Ok(self.client_record(client)?.is_some_and(|r| r.withdrawn))
    }

    /// Destroys every key and ciphertext of `client` now, refuses its later ingests until
    /// [`Custody::reactivate`], and opens a deletion case due five working days after `received`
    /// (YYYY-MM-DD, not in the future).
    pub fn withdraw(
        &self,
        client: &str,
        received: &str,
        reason: WithdrawReason,
        operator: &str,
    ) -> Result<DeletionCase, DataError> {
        check_ident("client id", client)?;
        let received_date = parse_date(received)?;
        let now = self.now();
        if received_date > now.date() {
            return Err(DataError::Invalid {
                what: "date",
                value: received.into(),
                reason: "is in the future".into(),
            });
        }
        let mut rec = self
            .client_record(client)?
            .ok_or_else(|| DataError::UnknownClient(client.into()))?;
        // Refuse new ingests before destroying anything, so none slips in meanwhile.
        rec.withdrawn = true;
        self.save_client(&rec)?;
        let mut destroyed = Vec::new();
        for info in self.list()? {
            if info.client == client && info.state.is_live() {
                let opts = WipeOptions {
                    force_reason: Some(reason.into()),
                    note: None,
                    operator: operator.into(),
                };
                self.wipe_as(&info.id, &opts, DatasetState::Withdrawn)?;
                destroyed.push(info.id.to_string());
            }
        }
        let mut r = [0u8; 3];
        getrandom::getrandom(&mut r).expect("getrandom failed");
        let case_id = format!(
            "case-{}-{}",
            format_date(now.date()).replace('-', ""),
            hex::encode(r)
        );
        let due = add_working_days(
            received_date,
            self.config.deletion_deadline_days,
            &self.config.holidays,
        );
        let mut all_ids = destroyed.clone();
        // Datasets wiped earlier may still have keys in unexpired backup epochs: they count too.
        for info in self.list()? {
            if info.client == client && !all_ids.contains(&info.id.to_string()) {
                all_ids.push(info.id.to_string());
            }
        }
        let case = DeletionCase {
            format: 1,
            case: case_id.clone(),
            client: client.into(),
            reason,
            received: format_date(received_date),
            due: format_date(due),
            datasets: all_ids,
            live_destroyed_at: rfc3339(now),
            backup_unreadable_at: None,
            backup_unreadable_expected: rfc3339(now),
            state: "open".into(),
            confirmation: None,
        };
        self.save_case(&case)?;
        rec.case = Some(case_id.clone());
        self.save_client(&rec)?;
        self.audit.append(AuditEvent::Withdraw {
            client: client.into(),
            case: case_id.clone(),
            reason: reason.to_string(),
            received: case.received.clone(),
            due: case.due.clone(),
            datasets: destroyed.len() as u64,
        })?;
        self.deletions()?
            .into_iter()
            .find(|c| c.case == case_id)
            .ok_or(DataError::NotFound(case_id))
    }

    /// Lets a withdrawn client's data be ingested again.
    pub fn reactivate(&self, client: &str) -> Result<(), DataError> {
        check_ident("client id", client)?;
        let mut rec = self
            .client_record(client)?
            .ok_or_else(|| DataError::UnknownClient(client.into()))?;
        rec.withdrawn = false;
        self.save_client(&rec)?;
        self.audit.append(AuditEvent::Reactivate {
            client: client.into(),
        })
    }

    fn cases_dir(&self) -> std::path::PathBuf {
        self.paths.staging.join("cases")
    }

    fn save_case(&self, c: &DeletionCase) -> Result<(), DataError> {
        let d = self.cases_dir();
        mkdir_private(&d)?;
        write_private(
            &d.join(format!("{}.json", c.case)),
            serde_json::to_string_pretty(c)
                .expect("serialize")
                .as_bytes(),
        )
    }

    /// All deletion cases, brought up to date (completing those whose backups are now
    /// unreadable and writing their confirmation documents).
    pub fn deletions(&self) -> Result<Vec<DeletionCase>, DataError> {
        let d = self.cases_dir();
        let mut cases = Vec::new();
        if d.is_dir() {
            for e in std::fs::read_dir(&d).map_err(io("listing cases", &d))? {
                let p = e.map_err(io("listing cases", &d))?.path();
                if p.extension().is_some_and(|x| x == "json") {
                    let t = std::fs::read_to_string(&p).map_err(io("reading case", &p))?;
                    let c: DeletionCase =
                        serde_json::from_str(&t).map_err(|e| DataError::Corrupt {
                            path: p.clone(),
                            reason: e.to_string(),
                        })?;
                    cases.push(c);
                }
            }
        }
        let epochs = self.live_epochs()?;
        let now = self.now();
        for c in cases.iter_mut().filter(|c| c.state == "open") {
            let holding: Vec<_> = epochs
                .iter()
                .filter(|e| e.datasets.iter().any(|d| c.datasets.contains(d)))
                .collect();
            if holding.is_empty() {
                self.complete_case(c, now)?;
            } else {
                let last = holding
                    .iter()
                    .map(|e| e.expires.clone())
                    .max()
                    .expect("non-empty");
                if last != c.backup_unreadable_expected {
                    c.backup_unreadable_expected = last;
                    self.save_case(c)?;
                }
            }
        }
        cases.sort_by(|a, b| a.received.cmp(&b.received).then(a.case.cmp(&b.case)));
        Ok(cases)
    }

    fn complete_case(&self, c: &mut DeletionCase, now: OffsetDateTime) -> Result<(), DataError> {
        let at = rfc3339(now);
        // The expected date may be earlier (prune ran late); record when it really happened.
        c.backup_unreadable_at = Some(at.clone());
        if parse_rfc3339(&c.backup_unreadable_expected).is_some_and(|t| t > now) {
            c.backup_unreadable_expected = at;
        }
        c.state = "complete".into();
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
            c.to_html().as_bytes(),
        )?;
        self.save_case(c)?;
        self.audit.append(AuditEvent::DeletionComplete {
            case: c.case.clone(),
            client: c.client.clone(),
        })
    }
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
