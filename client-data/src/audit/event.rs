//! The audited events: what each audit line says, the id rule applied to every entry before it
//! is written, and the reading of format 1 lines.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::fields::{DeviceIdentity, WipeReason};
use crate::error::DataError;

/// One audited event (serde tag `event`). Ids, counts, sizes, hashes only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A dataset was ingested into staging.
    Ingest {
        /// Dataset id.
        dataset: String,
        /// Client id.
        client: String,
        /// Ticket.
        ticket: String,
        /// Entries.
        entries: u64,
        /// Content bytes.
        bytes: u64,
        /// Ciphertext bytes stored.
        ciphertext_bytes: u64,
        /// "directory", "tar", "tar.gz", "tar.zst".
        source: String,
    },
    /// A dataset was restored onto a device.
    Migrate {
        /// Dataset id.
        dataset: String,
        /// Client id.
        client: String,
        /// Ticket.
        ticket: String,
        /// Job id, if the agent ran it.
        job: Option<String>,
        /// Device written (hardware identity; empty for a plain directory).
        device: DeviceIdentity,
        /// Entries restored.
        entries: u64,
        /// Bytes restored.
        bytes: u64,
        /// Entries skipped (device nodes, FIFOs, sockets).
        skipped: u64,
        /// Entries restored under another name because the target (NTFS, FAT) cannot hold
        /// theirs (a count only: names stay out of the log). Absent when 0, as in entries
        /// written before it existed.
        #[serde(default, skip_serializing_if = "is_zero")]
        renamed: u64,
        /// Entries that stood in the target and were replaced at the caller's request
        /// (`--replace-existing`). Absent when 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        replaced: u64,
        /// Entries an unfinished earlier restore of the dataset had made, found and replaced.
        /// Absent when 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        resumed: u64,
        /// Entries an interrupted earlier restore had made but not yet journaled, found to hold
        /// a prefix of the staged data (losing nothing) and replaced. Absent when 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        unjournaled: u64,
    },
    /// A restored dataset was read back and compared.
    Verify {
        /// Dataset id.
        dataset: String,
        /// Entries verified.
        entries: u64,
        /// Bytes verified.
        bytes: u64,
        /// Mismatching entries.
        mismatches: u64,
        /// "passed" or "failed".
        result: String,
    },
    /// A dataset's staging copy and key were destroyed.
    Wipe {
        /// Dataset id.
        dataset: String,
        /// Client id.
        client: String,
        /// Ticket.
        ticket: String,
        /// Without verified migration (`--force`).
        forced: bool,
        /// Reason code of a forced wipe or a withdrawal; `None` after a verified migration.
        reason: Option<WipeReason>,
        /// Operator.
        operator: String,
        /// Ciphertext bytes overwritten.
        ciphertext_bytes: u64,
        /// Sanitization record id.
        record: String,
    },
    /// A client withdrew (or the contract ended).
    Withdraw {
        /// Client id.
        client: String,
        /// Deletion case id.
        case: String,
        /// "withdrawal" or "termination".
        reason: String,
        /// Date the request was received.
        received: String,
        /// Deadline.
        due: String,
        /// Datasets destroyed now.
        datasets: u64,
    },
    /// A withdrawn client was reactivated.
    Reactivate {
        /// Client id.
        client: String,
    },
    /// A deletion case completed (backups unreadable too).
    DeletionComplete {
        /// Case id.
        case: String,
        /// Client id.
        client: String,
    },
    /// A key backup epoch was written.
    Backup {
        /// Epoch id.
        epoch: String,
        /// Dataset keys in it.
        datasets: u64,
        /// Expiry (RFC 3339).
        expires: String,
    },
    /// Expired key-backup epochs were destroyed.
    Prune {
        /// Epoch ids destroyed.
        epochs: Vec<String>,
    },
    /// A breach report was issued.
    BreachReport {
        /// Window start.
        from: String,
        /// Window end.
        to: String,
        /// Clients in it.
        clients: u64,
        /// Datasets in it.
        datasets: u64,
    },
    /// Written by the agent when a job's image write ends (either way).
    ImageWritten {
        /// Job id.
        job: String,
        /// Ticket.
        ticket: String,
        /// Image name.
        image: String,
        /// Image version.
        version: String,
        /// Manifest hash.
        manifest_hash: String,
        /// Device written.
        device: DeviceIdentity,
        /// Bytes written.
        bytes: u64,
        /// Outcome.
        result: String,
    },
    /// A withdrawal rotated the key backups holding its client's keys: the remaining live keys
    /// went into a new epoch (if any were left) and the old epochs were destroyed before expiry.
    BackupRotated {
        /// Deletion case.
        case: String,
        /// Epoch ids destroyed.
        destroyed: Vec<String>,
        /// New epochs holding the other live keys.
        replaced_by: Vec<String>,
    },
    /// Written by the agent when it accepts a job whose dataset belongs to another ticket,
    /// on an explicit override (`tek job add --dataset-of-other-ticket`). The technician's
    /// reason is free text and stays in the job record, out of this log.
    DatasetOfOtherTicket {
        /// Job id.
        job: String,
        /// The job's ticket.
        ticket: String,
        /// Dataset id.
        dataset: String,
        /// The ticket the dataset was ingested for.
        dataset_ticket: String,
        /// The dataset's client.
        dataset_client: String,
    },
    /// Written by the agent when a job ends.
    JobFinished {
        /// Job id.
        job: String,
        /// Ticket.
        ticket: String,
        /// Dataset migrated, if any.
        dataset: Option<String>,
        /// Outcome.
        result: String,
    },
    /// A maintainer audited a stored image again and recorded the new verdict in its manifest
    /// (`tek image audit NAME@VERSION --record`).
    ImageAuditRecorded {
        /// Image name.
        image: String,
        /// Image version.
        version: String,
        /// The audit rules' version the verdict was reached by.
        rules_version: u32,
        /// Whether the image is clean now.
        clean: bool,
        /// Findings of the new audit.
        findings: u64,
    },
    /// A maintainer accepted one finding of an image's privacy audit (`tek image accept`).
    ImageFindingAccepted {
        /// Image name.
        image: String,
        /// Image version.
        version: String,
        /// The finding's id (a hash of rule, partition and path; never the path itself).
        finding: String,
        /// The finding's rule, e.g. `win.memory`.
        rule: String,
        /// The reason code given.
        reason: String,
    },
    /// The bench's image cache (`[library] cache_max_bytes`) evicted an image the library still
    /// holds: its manifest left the local store and the chunks only it used were swept.
    ImageEvicted {
        /// Image name.
        image: String,
        /// Image version.
        version: String,
        /// Compressed bytes freed.
        freed_bytes: u64,
    },
    /// Written before the next entry when the log's last entries were covered by no signature:
    /// a crash between an append and its head update, lines written without the audit key, or
    /// a format 1 log's entries from before signing.
    UnsignedEntries {
        /// First unsigned seq.
        from: u64,
        /// Last unsigned seq.
        to: u64,
    },
}

/// Checks an image name or version for the log: 1-128 of `[A-Za-z0-9._+-]`.
fn check_image_part(what: &'static str, s: &str) -> Result<(), DataError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DataError::Invalid {
            what,
            value: s.to_string(),
            reason: "use 1-128 characters of A-Z a-z 0-9 . _ + -".into(),
        })
    }
}

impl AuditEvent {
    /// The serde tag (`ingest`, `job_finished`, ...).
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v["event"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Refuses an entry whose ids (ticket, client, dataset, job, operator, case, epoch, image)
    /// break the id rule ([`check_ident`](crate::dataset::check_ident)): free text (a name, an
    /// e-mail address, a path) never reaches the log, whatever path it came in by. Devices are
    /// [`DeviceIdentity`] tokens, re-checked here too.
    pub fn check(&self) -> Result<(), DataError> {
        use crate::dataset::check_ident as id;
        let dev = |d: &DeviceIdentity| {
            if &d.sanitized() == d {
                Ok(())
            } else {
                Err(DataError::Invalid {
                    what: "device identity",
                    value: d.to_string(),
                    reason: "build it with DeviceIdentity::new".into(),
                })
            }
        };
        match self {
            AuditEvent::Ingest {
                dataset,
                client,
                ticket,
                ..
            } => {
                id("dataset id", dataset)?;
                id("client id", client)?;
                id("ticket", ticket)
            }
            AuditEvent::Migrate {
                dataset,
                client,
                ticket,
                job,
                device,
                ..
            } => {
                id("dataset id", dataset)?;
                id("client id", client)?;
                id("ticket", ticket)?;
                job.as_deref().map(|j| id("job id", j)).transpose()?;
                dev(device)
            }
            AuditEvent::Verify { dataset, .. } => id("dataset id", dataset),
            AuditEvent::Wipe {
                dataset,
                client,
                ticket,
                operator,
                record,
                ..
            } => {
                id("dataset id", dataset)?;
                id("client id", client)?;
                id("ticket", ticket)?;
                id("operator", operator)?;
                id("record id", record)
            }
            AuditEvent::Withdraw { client, case, .. } => {
                id("client id", client)?;
                id("case id", case)
            }
            AuditEvent::Reactivate { client } => id("client id", client),
            AuditEvent::DeletionComplete { case, client } => {
                id("case id", case)?;
                id("client id", client)
            }
            AuditEvent::Backup { epoch, .. } => id("epoch id", epoch),
            AuditEvent::Prune { epochs } => epochs.iter().try_for_each(|e| id("epoch id", e)),
            AuditEvent::BackupRotated {
                case,
                destroyed,
                replaced_by,
            } => {
                id("case id", case)?;
                destroyed
                    .iter()
                    .chain(replaced_by)
                    .try_for_each(|e| id("epoch id", e))
            }
            AuditEvent::BreachReport { .. } | AuditEvent::UnsignedEntries { .. } => Ok(()),
            AuditEvent::ImageWritten {
                job,
                ticket,
                image,
                version,
                device,
                ..
            } => {
                id("job id", job)?;
                id("ticket", ticket)?;
                check_image_part("image name", image)?;
                check_image_part("image version", version)?;
                dev(device)
            }
            AuditEvent::ImageAuditRecorded { image, version, .. }
            | AuditEvent::ImageEvicted { image, version, .. } => {
                check_image_part("image name", image)?;
                check_image_part("image version", version)
            }
            AuditEvent::ImageFindingAccepted {
                image,
                version,
                finding,
                rule,
                reason,
            } => {
                check_image_part("image name", image)?;
                check_image_part("image version", version)?;
                check_image_part("finding id", finding)?;
                check_image_part("rule", rule)?;
                check_image_part("reason code", reason)
            }
            AuditEvent::DatasetOfOtherTicket {
                job,
                ticket,
                dataset,
                dataset_ticket,
                dataset_client,
            } => {
                id("job id", job)?;
                id("ticket", ticket)?;
                id("dataset id", dataset)?;
                id("ticket", dataset_ticket)?;
                id("client id", dataset_client)
            }
            AuditEvent::JobFinished {
                job,
                ticket,
                dataset,
                ..
            } => {
                id("job id", job)?;
                id("ticket", ticket)?;
                dataset
                    .as_deref()
                    .map(|d| id("dataset id", d))
                    .transpose()
                    .map(|_| ())
            }
        }
    }
}

/// Reads a format 1 line's event into today's shape: the free `device` text becomes a
/// [`DeviceIdentity`] (its serial, and the last path component as kernel name), a free wipe
/// reason becomes a [`WipeReason`] code, `NAME@VERSION` is split. The line's hash is over its
/// stored bytes, so this changes nothing that is verified.
pub(super) fn upgrade_v1(v: &mut serde_json::Value) {
    let Some(o) = v.as_object_mut() else { return };
    let event = o
        .get("event")
        .and_then(|e| e.as_str())
        .unwrap_or("")
        .to_string();
    if matches!(event.as_str(), "migrate" | "image_written") {
        let serial = o
            .remove("device_serial")
            .and_then(|s| s.as_str().map(String::from));
        let device = o.get("device").and_then(|d| d.as_str()).unwrap_or("");
        let name = Path::new(device)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let id = DeviceIdentity::new(serial.as_deref(), None, None, None, name.as_deref());
        o.insert("device".into(), serde_json::to_value(id).expect("identity"));
    }
    if event == "image_written" {
        let image = o
            .get("image")
            .and_then(|i| i.as_str())
            .unwrap_or("")
            .to_string();
        let (name, version) = image.split_once('@').unwrap_or((&image, ""));
        o.insert("image".into(), name.into());
        o.insert("version".into(), version.into());
    }
    if event == "wipe" {
        if let Some(r) = o.get("reason").and_then(|r| r.as_str()) {
            let code = WipeReason::from_legacy(r);
            o.insert("reason".into(), serde_json::to_value(code).expect("code"));
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
