//! Wipe: destroy a dataset's staging copy and key, and write the sanitization record.
//!
//! Method: cryptographic erase (the wrapped dataset key is overwritten, fsync'd, unlinked and its
//! directory fsync'd; without it the ciphertext is noise) plus one overwrite pass of the ciphertext
//! (zeros, fsync, read back with the page cache dropped, unlink, fsync the directory). The record
//! carries the fields NIST SP 800-88 Rev. 2 section 4.6 asks of a sanitization record and is written
//! as JSON and as a printable HTML page under `<reports>/sanitization/`.

use serde::Serialize;

use crate::audit::{AuditEvent, WipeReason};
use crate::custody::Custody;
use crate::dataset::{DatasetId, DatasetState, check_ident, rfc3339};
use crate::document::{self, Letterhead, count, size};
use crate::error::DataError;
use crate::keystore::{shred, write_private};
use crate::proof::VerifiedRestore;

/// Options of a wipe.
#[derive(Debug, Clone, Default)]
pub struct WipeOptions {
    /// A free-text explanation: kept in the sanitization record, never in the audit log.
    pub note: Option<String>,
    /// Who asked (a user name or "tek-agent"; an id, see `check_ident`).
    pub operator: String,
}

/// A sanitization record (NIST SP 800-88 Rev. 2, section 4.6).
#[derive(Debug, Clone, Serialize)]
pub struct SanitizationRecord {
    /// Format version (3: `verified`; 2: `reason` is a code and `note` holds free text; 1 had
    /// free text in `reason`).
    pub format: u32,
    /// Record id (`san-<dataset>`).
    pub record: String,
    /// What was sanitized.
    pub subject: SanitizedSubject,
    /// Sanitization category (800-88 terms): "purge (cryptographic erase)".
    pub category: String,
    /// Method description.
    pub method: String,
    /// Tool and version.
    pub tool: String,
    /// How the result was verified.
    pub verification_method: String,
    /// The verification outcome.
    pub verification_result: String,
    /// True when the verification passed: key file and ciphertext files absent (format 3).
    pub verified: bool,
    /// Whether a verified migration existed.
    pub migration_verified: bool,
    /// Reason code when forced or withdrawn; `None` after a verified migration.
    pub reason: Option<WipeReason>,
    /// The operator's free-text note, if any (not in the audit log).
    pub note: Option<String>,
    /// Who.
    pub operator: String,
    /// Where (host name).
    pub location: String,
    /// When (RFC 3339).
    pub date: String,
}

/// The sanitized media/data description.
#[derive(Debug, Clone, Serialize)]
pub struct SanitizedSubject {
    /// Dataset id.
    pub dataset: String,
    /// Client id.
    pub client: String,
    /// Ticket.
    pub ticket: String,
    /// Media type.
    pub media_type: String,
    /// Entries held.
    pub entries: u64,
    /// Content bytes held.
    pub bytes: u64,
    /// Ciphertext bytes overwritten.
    pub ciphertext_bytes: u64,
    /// Confidentiality before sanitization.
    pub confidentiality: String,
}

/// The printable page of a sanitization record (`templates/sanitization.html`).
#[derive(askama::Template)]
#[template(path = "sanitization.html")]
struct SanitizationPage<'a> {
    lh: &'a Letterhead,
    r: &'a SanitizationRecord,
    outcome: String,
    when: String,
    contents: String,
    ciphertext: String,
    why: String,
}

impl SanitizationRecord {
    /// The record as a printable A4 page under the depot's letterhead.
    pub fn to_html(&self, lh: &Letterhead) -> String {
        let s = &self.subject;
        let when = lh.time(&self.date);
        let outcome = if self.verified {
            format!(
                "The client data held in staging for ticket {} ({}) was destroyed by \
                 cryptographic erase on {when}, and the erase was verified.",
                s.ticket,
                count(s.entries, "entry", "entries")
            )
        } else {
            format!(
                "The sanitization of the staging copy for ticket {} on {when} could NOT be \
                 verified: {}.",
                s.ticket, self.verification_result
            )
        };
        let why = match self.reason {
            None if self.migration_verified => "its copy on the replacement device was verified \
                 first (restored and read back equal)"
                .to_string(),
            None => "no reason recorded".to_string(),
            Some(r) if self.migration_verified => format!(
                "{} (a verified copy on the replacement device existed)",
                r.describe()
            ),
            Some(r) => format!("{}; no verified copy was made first", r.describe()),
        };
        document::render(&SanitizationPage {
            lh,
            r: self,
            outcome,
            when,
            contents: format!(
                "{}, {}",
                count(s.entries, "entry", "entries"),
                size(s.bytes)
            ),
            ciphertext: size(s.ciphertext_bytes),
            why,
        })
    }
}

impl Custody {
    /// Destroys the staging copy and key of the dataset whose verified restore `proof` is (see
    /// [`crate::proof`]). The custody record is re-checked under the dataset's lock.
    pub fn wipe(
        &self,
        proof: &VerifiedRestore,
        opts: &WipeOptions,
    ) -> Result<SanitizationRecord, DataError> {
        self.wipe_as(proof.dataset(), None, opts, DatasetState::Wiped)
    }

    /// Destroys a dataset's staging copy and key without a verified migration, for `reason`
    /// (`tek data wipe --force --reason`): the record and the audit entry say it was forced.
    pub fn force_wipe(
        &self,
        id: &DatasetId,
        reason: WipeReason,
        opts: &WipeOptions,
    ) -> Result<SanitizationRecord, DataError> {
        self.wipe_as(id, Some(reason), opts, DatasetState::Wiped)
    }

    /// The wipe itself; `forced`: the reason it may go ahead without a verified migration.
    pub(crate) fn wipe_as(
        &self,
        id: &DatasetId,
        forced: Option<WipeReason>,
        opts: &WipeOptions,
        end: DatasetState,
    ) -> Result<SanitizationRecord, DataError> {
        check_ident("operator", &opts.operator)?;
        let (_lock, mut meta) = self.lock_live(id, "wipe")?;
        let migrated = meta.info.state == DatasetState::Migrated && !meta.migrations.is_empty();
        if !migrated && forced.is_none() {
            return Err(DataError::NotMigrated(id.to_string()));
        }
        let dir = self.dataset_dir(id);
        // Key first: once it is gone the ciphertext is unreadable even if the overwrite fails.
        let key_destroyed = self.keys.destroy(id.as_str())?;
        let mut overwritten = 0;
        for name in ["data.enc", "manifest.enc"] {
            let p = dir.join(name);
            if p.exists() {
                overwritten += shred(&p, true)?;
            }
        }
        // A restore journal (entry numbers of a partial restore) has no use once the data is
        // gone.
        crate::restore::remove_journal(&dir);
        let now = rfc3339(self.now());
        meta.info.state = end;
        meta.wiped_at = Some(now.clone());
        meta.save(&dir)?;
        let gone = !self.keys.has(id.as_str())
            && !dir.join("data.enc").exists()
            && !dir.join("manifest.enc").exists();
        let record = SanitizationRecord {
            format: 3,
            record: format!("san-{id}"),
            subject: SanitizedSubject {
                dataset: id.to_string(),
                client: meta.info.client.clone(),
                ticket: meta.info.ticket.clone(),
                media_type: "encrypted staging files (XChaCha20-Poly1305) on the depot state volume".into(),
                entries: meta.info.entries,
                bytes: meta.info.bytes,
                ciphertext_bytes: overwritten,
                confidentiality: "client personal data (confidential)".into(),
            },
            category: "purge (cryptographic erase)".into(),
            method: "cryptographic erase: dataset key overwritten, fsync'd and unlinked, directory fsync'd; \
                     plus one overwrite pass of the ciphertext with zeros, fsync, unlink, directory fsync"
                .into(),
            tool: format!("tek client-data {}", env!("CARGO_PKG_VERSION")),
            verification_method: "overwrite read back with page cache dropped and compared to zeros; \
                                  key file and ciphertext files checked absent after unlink"
                .into(),
            verification_result: if gone {
                format!("passed (key {}, {} ciphertext bytes overwritten)", if key_destroyed { "destroyed" } else { "already absent" }, overwritten)
            } else {
                "failed: files still present".into()
            },
            verified: gone,
            migration_verified: migrated,
            reason: forced,
            note: opts.note.clone(),
            operator: opts.operator.clone(),
            location: document::hostname(),
            date: now,
        };
        let rdir = self.paths.reports.join("sanitization");
        crate::keystore::mkdir_private(&rdir)?;
        let json = serde_json::to_string_pretty(&record).expect("serialize record");
        write_private(
            &rdir.join(format!("{}.json", record.record)),
            json.as_bytes(),
        )?;
        write_private(
            &rdir.join(format!("{}.html", record.record)),
            record.to_html(&self.config.letterhead).as_bytes(),
        )?;
        self.audit.append(AuditEvent::Wipe {
            dataset: id.to_string(),
            client: meta.info.client.clone(),
            ticket: meta.info.ticket.clone(),
            forced: !migrated,
            reason: forced,
            operator: opts.operator.clone(),
            ciphertext_bytes: overwritten,
            record: record.record.clone(),
        })?;
        Ok(record)
    }
}
