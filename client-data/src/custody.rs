//! [`Custody`]: the entry point the agent and `tek data` use. Owns the staging, keys, audit and
//! reports directories of one depot and the policy knobs (KEK path, holidays, retention).

use std::path::{Path, PathBuf};

use time::{Date, OffsetDateTime};

use crate::audit::AuditLog;
use crate::dataset::{DatasetId, DatasetInfo, DatasetLock, Meta};
use crate::error::{DataError, io};
use crate::keystore::{Keystore, mkdir_private};

/// The depot directories custody works in (all under the state root, given by the agent).
#[derive(Debug, Clone)]
pub struct CustodyPaths {
    /// `<state>/staging`: encrypted datasets, client records, deletion cases, locks.
    pub staging: PathBuf,
    /// `<state>/keys`: KEK, wrapped dataset keys, backup epochs, the audit signing key.
    pub keys: PathBuf,
    /// `<state>/audit`: `audit.log`, `audit.head`, `audit.checkpoints`.
    pub audit: PathBuf,
    /// `<state>/reports`: sanitization records, deletion confirmations.
    pub reports: PathBuf,
}

impl CustodyPaths {
    /// The standard layout under one state root: `staging/`, `keys/`, `audit/`, `reports/`.
    pub fn under(root: &std::path::Path) -> CustodyPaths {
        CustodyPaths {
            staging: root.join("staging"),
            keys: root.join("keys"),
            audit: root.join("audit"),
            reports: root.join("reports"),
        }
    }
}

/// Policy settings; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct CustodyConfig {
    /// KEK file (default `<keys>/kek`).
    pub kek: Option<PathBuf>,
    /// Public holidays skipped when counting working days.
    pub holidays: Vec<Date>,
    /// Datasets staged longer than this many days are flagged by `list` (default 14).
    pub max_staging_age_days: u32,
    /// Working days a key-backup epoch lives (default 3).
    pub backup_retention_days: u32,
    /// Working days from receipt of a withdrawal to its deadline (default 5).
    pub deletion_deadline_days: u32,
    /// Fixed "now" (tests and demos); `None` = the real clock.
    pub now: Option<OffsetDateTime>,
    /// How long a withdrawal waits for the client's ingests and restores in flight to stop
    /// before it destroys their keys and leaves them pending in the case (default 30 s).
    pub withdraw_wait: std::time::Duration,
    /// The depot as the printed records name it (`[depot]` of `agent.toml`).
    pub letterhead: crate::Letterhead,
}

impl Default for CustodyConfig {
    fn default() -> Self {
        CustodyConfig {
            kek: None,
            holidays: Vec::new(),
            max_staging_age_days: 14,
            backup_retention_days: 3,
            deletion_deadline_days: 5,
            now: None,
            withdraw_wait: std::time::Duration::from_secs(30),
            letterhead: crate::Letterhead::default(),
        }
    }
}

/// Client data custody for one depot.
#[derive(Debug)]
pub struct Custody {
    pub(crate) paths: CustodyPaths,
    pub(crate) config: CustodyConfig,
    pub(crate) keys: Keystore,
    pub(crate) audit: AuditLog,
}

/// A dataset as `list` shows it: clear metadata plus age.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetListing {
    /// The clear metadata.
    #[serde(flatten)]
    pub info: DatasetInfo,
    /// Days since ingest.
    pub age_days: i64,
    /// Live and older than the maximum staging age.
    pub overdue: bool,
}

impl Custody {
    /// Opens custody with default settings.
    pub fn open(paths: CustodyPaths) -> Result<Custody, DataError> {
        Self::open_with(paths, CustodyConfig::default())
    }

    /// Opens custody with explicit settings; creates the directories (0700) and removes debris of
    /// ingests that crashed (their ciphertext and keys).
    pub fn open_with(paths: CustodyPaths, config: CustodyConfig) -> Result<Custody, DataError> {
        for d in [&paths.staging, &paths.keys, &paths.reports] {
            mkdir_private(d)?;
        }
        let audit = AuditLog::open(&paths.audit, &paths.keys)?;
        let keys = Keystore::new(&paths.keys, config.kek.as_deref());
        let c = Custody {
            paths,
            config,
            keys,
            audit,
        };
        c.clean_partials()?;
        Ok(c)
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The directories.
    pub fn paths(&self) -> &CustodyPaths {
        &self.paths
    }

    /// The settings.
    pub fn config(&self) -> &CustodyConfig {
        &self.config
    }

    /// Now (the configured clock).
    pub fn now(&self) -> OffsetDateTime {
        self.config.now.unwrap_or_else(OffsetDateTime::now_utc)
    }

    pub(crate) fn dataset_dir(&self, id: &DatasetId) -> PathBuf {
        self.paths.staging.join(id.as_str())
    }

    /// Takes dataset `id`'s lock (what restore, wipe and withdrawal hold); `Locked` if busy.
    pub fn lock(&self, id: &DatasetId) -> Result<DatasetLock, DataError> {
        DatasetLock::try_take(&self.paths.staging, id.as_str())
    }

    /// Takes dataset `id`'s lock and loads its metadata, refusing a dataset that is no longer
    /// live (wiped or withdrawn) for `action`. Restore and wipe both start here.
    pub(crate) fn lock_live(
        &self,
        id: &DatasetId,
        action: &'static str,
    ) -> Result<(DatasetLock, Meta), DataError> {
        let lock = self.lock(id)?;
        let meta = self.meta(id)?;
        if !meta.info.state.is_live() {
            return Err(DataError::BadState {
                id: id.to_string(),
                state: meta.info.state.to_string(),
                action,
            });
        }
        Ok((lock, meta))
    }

    pub(crate) fn meta(&self, id: &DatasetId) -> Result<Meta, DataError> {
        crate::records::load_meta(&self.paths.staging, id)
    }

    /// The clear metadata of one dataset.
    pub fn dataset(&self, id: &DatasetId) -> Result<DatasetInfo, DataError> {
        Ok(self.meta(id)?.info)
    }

    /// All datasets (live and wiped), oldest first.
    pub fn list(&self) -> Result<Vec<DatasetInfo>, DataError> {
        let mut out = Vec::new();
        for id in self.dataset_ids()? {
            out.push(self.meta(&id)?.info);
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// `list` with ages and the overdue flag.
    pub fn listing(&self) -> Result<Vec<DatasetListing>, DataError> {
        let now = self.now();
        Ok(self
            .list()?
            .into_iter()
            .map(|info| {
                let age_days = crate::dataset::parse_rfc3339(&info.created)
                    .map(|t| (now - t).whole_days())
                    .unwrap_or(0);
                let overdue =
                    info.state.is_live() && age_days > i64::from(self.config.max_staging_age_days);
                DatasetListing {
                    info,
                    age_days,
                    overdue,
                }
            })
            .collect())
    }

    pub(crate) fn dataset_ids(&self) -> Result<Vec<DatasetId>, DataError> {
        let st = &self.paths.staging;
        let mut ids = Vec::new();
        for e in std::fs::read_dir(st).map_err(io("listing staging", st))? {
            let e = e.map_err(io("listing staging", st))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(id) = name.parse::<DatasetId>() {
                if e.path().join("meta.json").exists() {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes `<id>.partial` directories left by a crashed ingest, and their keys.
    fn clean_partials(&self) -> Result<(), DataError> {
        let st = &self.paths.staging;
        for e in std::fs::read_dir(st).map_err(io("listing staging", st))? {
            let e = e.map_err(io("listing staging", st))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".partial") else {
                continue;
            };
            let Ok(id) = id.parse::<DatasetId>() else {
                continue;
            };
            // An ingest in progress holds the lock: leave it alone.
            let Ok(_lock) = self.lock(&id) else { continue };
            self.discard_partial(&id, &e.path());
        }
        Ok(())
    }

    /// Deletes a failed ingest's ciphertext and key (best effort: the caller reports the cause).
    pub(crate) fn discard_partial(&self, id: &DatasetId, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = self.keys.destroy(id.as_str());
        let _ = crate::keystore::sync_dir(&self.paths.staging);
    }
}
