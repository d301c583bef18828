//! Choosing audit entries to show (`tek audit show --since/--until/--client/--event`): a time
//! window, a client, event kinds. One pass in log order; a client's entries are those naming it
//! and those naming one of its datasets (the log learns a dataset's client from its `ingest`
//! entry, which comes first).

use std::collections::HashMap;

use time::OffsetDateTime;

use super::{AuditEvent, AuditRecord};
use crate::dataset::parse_rfc3339;
use crate::error::DataError;

/// Every event kind the log can hold ([`AuditEvent::kind`]), for `--event` and its help.
pub const EVENT_KINDS: &[&str] = &[
    "ingest",
    "migrate",
    "verify",
    "wipe",
    "withdraw",
    "reactivate",
    "deletion_complete",
    "backup",
    "prune",
    "breach_report",
    "image_written",
    "backup_rotated",
    "dataset_of_other_ticket",
    "job_finished",
    "image_audit_recorded",
    "image_evicted",
    "image_finding_accepted",
    "unsigned_entries",
];

/// Which entries to keep. Empty fields keep everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Keep entries at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Keep entries at or before this time.
    pub until: Option<OffsetDateTime>,
    /// Keep entries of this client (naming it, or one of its datasets).
    pub client: Option<String>,
    /// Keep entries of these kinds (any of them).
    pub events: Vec<String>,
    owners: HashMap<String, String>,
}

impl AuditFilter {
    /// A filter; refuses an event kind the log does not know (a typo would show nothing).
    pub fn new(
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
        client: Option<String>,
        events: Vec<String>,
    ) -> Result<AuditFilter, DataError> {
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(DataError::Invalid {
                what: "window",
                value: format!("{s} .. {u}"),
                reason: "--since is after --until".into(),
            });
        }
        for e in &events {
            if !EVENT_KINDS.contains(&e.as_str()) {
                return Err(DataError::Invalid {
                    what: "event kind",
                    value: e.clone(),
                    reason: format!("use one of {}", EVENT_KINDS.join(", ")),
                });
            }
        }
        Ok(AuditFilter {
            since,
            until,
            client,
            events,
            owners: HashMap::new(),
        })
    }

    /// Whether `rec` is kept. Call it on every record in log order (it learns which client
    /// owns which dataset as it goes). A record whose time does not parse is kept only by a
    /// filter without a window.
    pub fn keep(&mut self, rec: &AuditRecord) -> bool {
        if let AuditEvent::Ingest {
            dataset, client, ..
        } = &rec.event
        {
            self.owners.insert(dataset.clone(), client.clone());
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = parse_rfc3339(&rec.time) else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        if !self.events.is_empty() && !self.events.contains(&rec.event.kind()) {
            return false;
        }
        match &self.client {
            Some(c) => self.client_of(&rec.event).is_some_and(|o| o == c),
            None => true,
        }
    }

    /// The client an event is about, directly or through its dataset.
    fn client_of<'a>(&'a self, e: &'a AuditEvent) -> Option<&'a str> {
        use AuditEvent as E;
        let dataset = match e {
            E::Ingest { client, .. }
            | E::Migrate { client, .. }
            | E::Wipe { client, .. }
            | E::Withdraw { client, .. }
            | E::Reactivate { client }
            | E::DeletionComplete { client, .. } => return Some(client),
            E::DatasetOfOtherTicket { dataset_client, .. } => return Some(dataset_client),
            E::Verify { dataset, .. } => dataset,
            E::JobFinished {
                dataset: Some(d), ..
            } => d,
            _ => return None,
        };
        self.owners.get(dataset).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, time: &str, event: AuditEvent) -> AuditRecord {
        AuditRecord {
            v: 2,
            seq,
            time: time.into(),
            prev: String::new(),
            event,
            hash: String::new(),
        }
    }

    fn ingest(ds: &str, client: &str) -> AuditEvent {
        AuditEvent::Ingest {
            dataset: ds.into(),
            client: client.into(),
            ticket: "T".into(),
            entries: 1,
            bytes: 1,
            ciphertext_bytes: 1,
            source: "tar".into(),
        }
    }

    fn verify(ds: &str) -> AuditEvent {
        AuditEvent::Verify {
            dataset: ds.into(),
            entries: 1,
            bytes: 1,
            mismatches: 0,
            result: "passed".into(),
        }
    }

    #[test]
    fn client_reaches_its_datasets_entries() {
        let mut f = AuditFilter::new(None, None, Some("C1".into()), vec![]).unwrap();
        let t = "2026-03-01T10:00:00Z";
        assert!(f.keep(&rec(0, t, ingest("ds-a", "C1"))));
        assert!(!f.keep(&rec(1, t, ingest("ds-b", "C2"))));
        assert!(f.keep(&rec(2, t, verify("ds-a"))), "through the dataset");
        assert!(!f.keep(&rec(3, t, verify("ds-b"))));
        assert!(!f.keep(&rec(4, t, AuditEvent::Prune { epochs: vec![] })));
    }

    #[test]
    fn window_and_kinds() {
        let at = |s: &str| parse_rfc3339(s).unwrap();
        let mut f = AuditFilter::new(
            Some(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T23:59:59Z")),
            None,
            vec!["verify".into()],
        )
        .unwrap();
        assert!(!f.keep(&rec(0, "2026-02-28T23:59:59Z", verify("a"))));
        assert!(f.keep(&rec(1, "2026-03-01T12:00:00Z", verify("a"))));
        assert!(!f.keep(&rec(2, "2026-03-01T12:00:00Z", ingest("a", "C"))));
        assert!(!f.keep(&rec(3, "2026-03-02T00:00:00Z", verify("a"))));
        assert!(!f.keep(&rec(4, "garbage", verify("a"))));
    }

    #[test]
    fn unknown_kinds_and_reversed_windows_are_refused() {
        let e = AuditFilter::new(None, None, None, vec!["ingset".into()]).unwrap_err();
        assert!(e.to_string().contains("ingest, migrate"), "{e}");
        let now = OffsetDateTime::now_utc();
        assert!(
            AuditFilter::new(
                Some(now),
                Some(now - time::Duration::hours(1)),
                None,
                vec![]
            )
            .is_err()
        );
    }

    #[test]
    fn every_listed_kind_is_a_kind_of_the_log() {
        // A kind the enum does not have fails as an unknown variant; a real one only lacks
        // its fields.
        for k in EVENT_KINDS {
            let e = serde_json::from_str::<AuditEvent>(&format!(r#"{{"event":"{k}"}}"#))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("unknown variant"), "{k}: {e}");
        }
        assert_eq!(ingest("a", "b").kind(), "ingest");
    }
}
