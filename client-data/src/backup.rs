//! Key backups by epoch. The depot's backup tool copies the state directory minus `keys/`, so
//! backups hold only ciphertext. `tek backup keys DIR` writes the live dataset keys, encrypted
//! under a fresh epoch key, to `DIR/tek-keys-<epoch>.enc`; the epoch key stays in
//! `<keys>/epochs/<epoch>.json` (0600) until it expires (`backup_retention_days` working days,
//! default 3) and `tek backup prune` destroys it. After that the key backup, and with it every
//! backed-up ciphertext whose key is nowhere else, is unreadable.
//!
//! Backup file: the `stream` format (kind 3) over JSON lines: a header line
//! `{"format":1,"epoch":..,"created":..}` then one `{"dataset":..,"client":..,"key":HEX}` per key.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::Duration;

use crate::audit::AuditEvent;
use crate::custody::Custody;
use crate::dataset::{parse_rfc3339, rfc3339};
use crate::error::{DataError, io};
use crate::keystore::{mkdir_private, shred, write_private};
use crate::stream::{EncryptWriter, Key, StreamKind};
use crate::withdraw::add_working_days;

/// A key-backup epoch (its key lives until it expires).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Epoch {
    /// Format version (1).
    pub format: u32,
    /// Epoch id.
    pub epoch: String,
    /// Created (RFC 3339).
    pub created: String,
    /// Expires (RFC 3339).
    pub expires: String,
    /// Datasets whose keys the backup holds.
    pub datasets: Vec<String>,
    /// The epoch key (hex). Never printed.
    #[serde(default)]
    key: String,
}

/// What `backup_keys` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct KeyBackup {
    /// Epoch id.
    pub epoch: String,
    /// The backup file.
    pub file: PathBuf,
    /// Keys in it.
    pub datasets: u64,
    /// When the epoch key will be destroyed.
    pub expires: String,
}

impl Custody {
    /// Unexpired (not yet pruned) epochs.
    pub fn live_epochs(&self) -> Result<Vec<Epoch>, DataError> {
        let d = self.keys.epochs_dir();
        let mut out = Vec::new();
        if !d.is_dir() {
            return Ok(out);
        }
        for e in std::fs::read_dir(&d).map_err(io("listing epochs", &d))? {
            let p = e.map_err(io("listing epochs", &d))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let t = std::fs::read_to_string(&p).map_err(io("reading epoch", &p))?;
                out.push(serde_json::from_str(&t).map_err(|e| DataError::Corrupt {
                    path: p.clone(),
                    reason: e.to_string(),
                })?);
            }
        }
        out.sort_by(|a: &Epoch, b: &Epoch| a.created.cmp(&b.created));
        Ok(out)
    }

    /// Writes a key backup of every live dataset key into `dir` under a new epoch key.
    pub fn backup_keys(&self, dir: &Path) -> Result<KeyBackup, DataError> {
        let now = self.now();
        let mut r = [0u8; 4];
        getrandom::getrandom(&mut r).expect("getrandom failed");
        let epoch_id = format!(
            "ep-{}-{}",
            rfc3339(now).get(..10).unwrap_or("0").replace('-', ""),
            hex::encode(r)
        );
        let live: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|d| d.state.is_live() && self.keys.has(d.id.as_str()))
            .collect();
        let kek = if live.is_empty() {
            None
        } else {
            Some(self.keys.kek(false)?)
        };
        let epoch_key = Key::random();
        let expires_date = add_working_days(
            now.date(),
            self.config.backup_retention_days,
            &self.config.holidays,
        );
        let expires = now + Duration::days((expires_date - now.date()).whole_days());
        std::fs::create_dir_all(dir).map_err(io("creating backup directory", dir))?;
        let file = dir.join(format!("tek-keys-{epoch_id}.enc"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .map_err(io("creating", &file))?;
        let mut w = EncryptWriter::new(f, &epoch_key, StreamKind::KeyBackup)
            .map_err(io("writing", &file))?;
        let head = serde_json::json!({"format": 1, "epoch": epoch_id, "created": rfc3339(now)});
        writeln!(w, "{head}").map_err(io("writing", &file))?;
        let mut ids = Vec::new();
        for d in &live {
            let k = self
                .keys
                .load(kek.as_ref().expect("kek loaded"), d.id.as_str())?;
            let line = serde_json::json!({"dataset": d.id.as_str(), "client": d.client, "key": hex::encode(k.0)});
            writeln!(w, "{line}").map_err(io("writing", &file))?;
            ids.push(d.id.to_string());
        }
        let (f, _) = w.finish().map_err(io("writing", &file))?;
        f.sync_all().map_err(io("syncing", &file))?;
        let epoch = Epoch {
            format: 1,
            epoch: epoch_id.clone(),
            created: rfc3339(now),
            expires: rfc3339(expires),
            datasets: ids,
            key: hex::encode(epoch_key.0),
        };
        let ed = self.keys.epochs_dir();
        mkdir_private(&ed)?;
        write_private(
            &ed.join(format!("{epoch_id}.json")),
            serde_json::to_string_pretty(&epoch)
                .expect("serialize")
                .as_bytes(),
        )?;
        self.audit.append(AuditEvent::Backup {
            epoch: epoch_id.clone(),
            datasets: epoch.datasets.len() as u64,
            expires: epoch.expires.clone(),
        })?;
        Ok(KeyBackup {
            epoch: epoch_id,
            file,
            datasets: epoch.datasets.len() as u64,
            expires: epoch.expires,
        })
    }

    /// Destroys expired epochs (their keys) and brings deletion cases up to date. Returns the
    /// epochs destroyed.
    pub fn prune(&self) -> Result<Vec<String>, DataError> {
        let now = self.now();
        let mut gone = Vec::new();
        for e in self.live_epochs()? {
            if parse_rfc3339(&e.expires).is_none_or(|t| t <= now) {
                shred(
                    &self.keys.epochs_dir().join(format!("{}.json", e.epoch)),
                    false,
                )?;
                gone.push(e.epoch);
            }
        }
        if !gone.is_empty() {
            self.audit.append(AuditEvent::Prune {
                epochs: gone.clone(),
            })?;
        }
        self.deletions()?;
        Ok(gone)
    }
}
