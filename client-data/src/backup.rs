//! Key backups by epoch. The depot's backup tool copies the state directory minus `keys/`, so
//! backups hold only ciphertext. `tek backup keys DIR` writes the live dataset keys, encrypted
//! under a fresh epoch key, to `DIR/tek-keys-<epoch>.enc`; the epoch key stays in
//! `<keys>/epochs/<epoch>.json` (0600) until it expires (`backup_retention_days` working days,
//! default 3) and `tek backup prune` destroys it. After that the key backup, and with it every
//! backed-up ciphertext whose key is nowhere else, is unreadable.
//!
//! DIR must exist (a missing backup mount must not turn into a directory on the local disk) and
//! lie on another filesystem than the depot's keys and staging, unless the caller explicitly
//! allows the same filesystem.
//!
//! A withdrawal *rotates* ([`Custody::rotate_backups`]): every unpruned epoch holding a key of the
//! client is replaced by a new epoch holding the other live keys, written to the same directory,
//! and the old epoch keys are destroyed at once, so the client's backed-up keys are unreadable
//! the same day. An epoch that cannot be rewritten (its directory is unavailable, or it was made
//! before epochs recorded their directory) stays until it expires, and the case says so.
//!
//! Backup file: the `stream` format (kind 3) over JSON lines: a header line
//! `{"format":1,"epoch":..,"created":..}` then one `{"dataset":..,"client":..,"key":HEX}` per key.
//! Epoch record format 2 (adds `dir` and `same_filesystem`; format 1 is still read).
//!
//! Writing a backup, pruning and rotating hold `<staging>/locks/backup.lock`, so a backup in
//! progress cannot copy a key a withdrawal is destroying without the rotation seeing its epoch.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use serde::{Deserialize, Serialize};
use time::Duration;

use crate::audit::AuditEvent;
use crate::custody::Custody;
use crate::dataset::{parse_rfc3339, rfc3339};
use crate::error::{DataError, io};
use crate::keystore::{mkdir_private, shred, write_private};
use crate::stream::{EncryptWriter, Key, StreamKind};
use crate::withdraw::add_working_days;

/// Version of the epoch record written by this version.
pub const EPOCH_FORMAT: u32 = 2;

/// A key-backup epoch (its key lives until it expires).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Epoch {
    /// Format version ([`EPOCH_FORMAT`]; 1 is still read).
    pub format: u32,
    /// Epoch id.
    pub epoch: String,
    /// Created (RFC 3339).
    pub created: String,
    /// Expires (RFC 3339).
    pub expires: String,
    /// Datasets whose keys the backup holds.
    pub datasets: Vec<String>,
    /// The backup directory (absolute), where a rotation writes the replacement. Format 1
    /// epochs have none.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The directory was allowed on the depot's own filesystem.
    #[serde(default)]
    pub same_filesystem: bool,
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
    /// The directory is on the depot's own filesystem (explicitly allowed).
    pub same_filesystem: bool,
}

/// Options of [`Custody::backup_keys`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BackupOptions {
    /// Allow a backup directory on the same filesystem as the depot's keys or staging.
    pub same_filesystem: bool,
}

/// What [`Custody::rotate_backups`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rotation {
    /// Old epochs destroyed before their expiry.
    pub destroyed: Vec<String>,
    /// New epochs holding the other live keys.
    pub new_epochs: Vec<KeyBackup>,
    /// Epochs that could not be rotated: (epoch, expires, why).
    pub kept: Vec<(String, String, String)>,
}

/// A depot-wide lock `<staging>/locks/<name>.lock`, held exclusively (blocking: the holders
/// take seconds). `backup`: writing, pruning or rotating key backups. `cases`: reading and
/// writing deletion cases. Order: `cases` before `backup`, never the other way round.
pub(crate) struct DepotLock(#[allow(dead_code)] Flock<File>);

impl DepotLock {
    pub(crate) fn take(staging: &Path, name: &str) -> Result<DepotLock, DataError> {
        let (f, path) = crate::dataset::open_lock_file(staging, name)?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map(DepotLock)
            .map_err(|(_, e)| DataError::Io {
                action: "locking",
                path,
                source: e.into(),
            })
    }
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
                let e: Epoch = serde_json::from_str(&t).map_err(|e| DataError::Corrupt {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                if e.format == 0 || e.format > EPOCH_FORMAT {
                    return Err(DataError::Corrupt {
                        path: p,
                        reason: format!("unknown format {}", e.format),
                    });
                }
                out.push(e);
            }
        }
        out.sort_by(|a: &Epoch, b: &Epoch| a.created.cmp(&b.created));
        Ok(out)
    }

    /// Checks that `dir` can take a key backup: it exists, is a directory, and (unless
    /// `same_filesystem`) is on another filesystem than the depot's keys and staging. Returns
    /// its absolute path.
    pub fn check_backup_dir(
        &self,
        dir: &Path,
        same_filesystem: bool,
    ) -> Result<PathBuf, DataError> {
        let bad = |reason: String| DataError::BackupTarget {
            path: dir.to_path_buf(),
            reason,
        };
        let m = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(
                    "does not exist (is the backup volume mounted?); tek does not create it".into(),
                ));
            }
            Err(e) => return Err(io("reading backup directory", dir)(e)),
        };
        if !m.is_dir() {
            return Err(bad("is not a directory".into()));
        }
        if !same_filesystem {
            for own in [&self.paths.keys, &self.paths.staging] {
                let o = std::fs::metadata(own).map_err(io("reading", own.as_path()))?;
                if o.dev() == m.dev() {
                    return Err(bad(format!(
                        "is on the same filesystem as the depot's {} (a backup there is lost \
                         with that disk): mount the backup volume there, or pass \
                         --same-filesystem",
                        own.display()
                    )));
                }
            }
        }
        std::fs::canonicalize(dir).map_err(io("resolving backup directory", dir))
    }

    /// Writes a key backup of every live dataset key into `dir` (which must pass
    /// [`Custody::check_backup_dir`]) under a new epoch key.
    pub fn backup_keys(&self, dir: &Path, opts: BackupOptions) -> Result<KeyBackup, DataError> {
        let dir = self.check_backup_dir(dir, opts.same_filesystem)?;
        let _lock = DepotLock::take(&self.paths.staging, "backup")?;
        self.write_backup(&dir, opts.same_filesystem)
    }

    /// Writes the backup; the caller holds the backup lock and checked `dir`.
    fn write_backup(&self, dir: &Path, same_filesystem: bool) -> Result<KeyBackup, DataError> {
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
        let file = dir.join(format!("tek-keys-{epoch_id}.enc"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .map_err(io("creating", &file))?;
        let written = (|| -> Result<Vec<String>, DataError> {
            let mut w = EncryptWriter::new(f, &epoch_key, StreamKind::KeyBackup)
                .map_err(io("writing", &file))?;
            let head = serde_json::json!({"format": 1, "epoch": epoch_id, "created": rfc3339(now)});
            writeln!(w, "{head}").map_err(io("writing", &file))?;
            let mut ids = Vec::new();
            for d in &live {
                let kek = kek.as_ref().expect("kek loaded");
                let k = match self.keys.load(kek, d.id.as_str()) {
                    Ok(k) => k,
                    // A wipe or withdrawal may be destroying the key right now (it overwrites,
                    // then unlinks, holding the dataset's lock): wait for it, then look again.
                    Err(first) => match self.settled_key(&d.id, kek, first)? {
                        Some(k) => k,
                        None => continue,
                    },
                };
                let line = serde_json::json!({"dataset": d.id.as_str(), "client": d.client, "key": hex::encode(k.0)});
                writeln!(w, "{line}").map_err(io("writing", &file))?;
                ids.push(d.id.to_string());
            }
            let (f, _) = w.finish().map_err(io("writing", &file))?;
            f.sync_all().map_err(io("syncing", &file))?;
            crate::keystore::sync_dir(dir)?;
            Ok(ids)
        })();
        // A backup file without its epoch record is noise: do not leave it behind.
        let ids = match written {
            Ok(ids) => ids,
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                return Err(e);
            }
        };
        let epoch = Epoch {
            format: EPOCH_FORMAT,
            epoch: epoch_id.clone(),
            created: rfc3339(now),
            expires: rfc3339(expires),
            datasets: ids,
            dir: Some(dir.to_path_buf()),
            same_filesystem,
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
            same_filesystem,
        })
    }

    /// After a failed key load: waits (up to 30 s) until no wipe holds dataset `id`, then
    /// `None` if its key is gone, else the key loaded again (or the original error).
    fn settled_key(
        &self,
        id: &crate::DatasetId,
        kek: &Key,
        first: DataError,
    ) -> Result<Option<Key>, DataError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let _lock = loop {
            match self.lock(id) {
                Ok(l) => break l,
                Err(DataError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(_) => return Err(first),
            }
        };
        if !self.keys.has(id.as_str()) {
            return Ok(None);
        }
        self.keys.load(kek, id.as_str()).map(Some)
    }

    /// Destroys expired epochs (their keys) and brings deletion cases up to date. Returns the
    /// epochs destroyed.
    pub fn prune(&self) -> Result<Vec<String>, DataError> {
        let now = self.now();
        let mut gone = Vec::new();
        let lock = DepotLock::take(&self.paths.staging, "backup")?;
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
        drop(lock);
        self.deletions()?;
        Ok(gone)
    }

    /// Rotates every unpruned epoch holding a key of one of `datasets` (see the module docs):
    /// per backup directory, a new epoch with the live keys that remain, then the old epoch
    /// keys (and, best effort, their now useless backup files) destroyed. Epochs that cannot be
    /// rewritten are kept, with the reason. Audited for `case`.
    pub fn rotate_backups(&self, case: &str, datasets: &[String]) -> Result<Rotation, DataError> {
        let _lock = DepotLock::take(&self.paths.staging, "backup")?;
        let mut rot = Rotation::default();
        let holding: Vec<Epoch> = self
            .live_epochs()?
            .into_iter()
            .filter(|e| e.datasets.iter().any(|d| datasets.contains(d)))
            .collect();
        let mut groups: Vec<(Option<PathBuf>, bool, Vec<Epoch>)> = Vec::new();
        for e in holding {
            match groups
                .iter_mut()
                .find(|(d, s, _)| *d == e.dir && *s == e.same_filesystem)
            {
                Some(g) => g.2.push(e),
                None => groups.push((e.dir.clone(), e.same_filesystem, vec![e])),
            }
        }
        for (dir, same_fs, epochs) in groups {
            let ready = match &dir {
                None => Err(
                    "it was made before tek recorded backup directories (epoch format \
                             1), so no replacement can be written"
                        .to_string(),
                ),
                Some(d) => self
                    .check_backup_dir(d, same_fs)
                    .map_err(|e| format!("no replacement can be written: {e}")),
            };
            let ready = ready.and_then(|d| {
                let live_left = self
                    .list()
                    .map_err(|e| e.to_string())?
                    .iter()
                    .any(|i| i.state.is_live() && self.keys.has(i.id.as_str()));
                if !live_left {
                    return Ok(None);
                }
                self.write_backup(&d, same_fs)
                    .map(Some)
                    .map_err(|e| format!("writing the replacement failed: {e}"))
            });
            match ready {
                Ok(new) => {
                    for e in &epochs {
                        shred(
                            &self.keys.epochs_dir().join(format!("{}.json", e.epoch)),
                            false,
                        )?;
                        if let Some(d) = &e.dir {
                            let _ =
                                std::fs::remove_file(d.join(format!("tek-keys-{}.enc", e.epoch)));
                        }
                        rot.destroyed.push(e.epoch.clone());
                    }
                    rot.new_epochs.extend(new);
                }
                Err(why) => {
                    for e in epochs {
                        rot.kept.push((e.epoch, e.expires, why.clone()));
                    }
                }
            }
        }
        if !rot.destroyed.is_empty() {
            self.audit.append(AuditEvent::BackupRotated {
                case: case.to_string(),
                destroyed: rot.destroyed.clone(),
                replaced_by: rot.new_epochs.iter().map(|b| b.epoch.clone()).collect(),
            })?;
        }
        Ok(rot)
    }
}
