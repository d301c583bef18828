//! Withdrawal and termination: destroy a client's live data now, refuse its later ingests, and
//! follow a deletion case (see `cases`) until its backups are unreadable too.
//!
//! Files (format 1, no personal data): `<staging>/clients/<client>.json` (known clients and
//! whether they withdrew). Deletion cases are in `cases`.
//!
//! Ingest and withdrawal meet on `<staging>/locks/client-<client>.lock`: an ingest holds it
//! shared from before its first check to after its final rename; a withdrawal first marks the
//! client withdrawn, then takes it exclusively (waiting up to `withdraw_wait`). An ingest in
//! flight notices the mark within a quarter of a second of its next read and at the latest
//! just before its final rename, and discards its partial dataset itself. So when the
//! withdrawal holds the lock, every dataset of the client is either finished (and destroyed
//! now) or never will be. If the wait runs out (an ingest blocked on a slow source), the
//! partial's key is destroyed at once and the case stays open with that dataset pending; every
//! later `deletions()` destroys whatever of the client it still finds.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::backup::Rotation;
pub use crate::cases::{DeletionCase, add_working_days, format_date, parse_date};
use crate::custody::Custody;
use crate::dataset::{DatasetId, DatasetState, check_ident, rfc3339};
use crate::error::{DataError, io};
use crate::keystore::{mkdir_private, write_private};
use crate::wipe::WipeOptions;

/// Name of the file in `<id>.partial/` that says whose ingest it is (kept after the rename, so
/// a partial never exists without it once it holds a key).
pub(crate) const PARTIAL_OWNER: &str = "client";

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

/// What one `withdraw` call did. Printed, recorded and audited from these values alone.
#[derive(Debug, Clone, Serialize)]
pub struct Withdrawal {
    /// The case (one per client and received date), as it stands after this call.
    pub case: DeletionCase,
    /// False when this call opened the case, true when it was already open (or complete).
    pub existing_case: bool,
    /// Datasets whose staging copy and key this call destroyed.
    pub destroyed_now: Vec<String>,
    /// Partial datasets of unfinished ingests this call discarded.
    pub discarded_now: Vec<String>,
    /// Key-backup epochs rotated for this call.
    pub rotation: Rotation,
}

/// The per-client lock shared by ingests and taken exclusively by a withdrawal.
pub(crate) struct ClientLock(#[allow(dead_code)] Flock<File>);

impl ClientLock {
    fn open(staging: &Path, client: &str) -> Result<(File, PathBuf), DataError> {
        crate::dataset::open_lock_file(staging, &format!("client-{client}"))
    }

    /// Shared, waiting while a withdrawal holds it.
    pub(crate) fn shared(staging: &Path, client: &str) -> Result<ClientLock, DataError> {
        let (f, path) = Self::open(staging, client)?;
        Flock::lock(f, FlockArg::LockShared)
            .map(ClientLock)
            .map_err(|(_, e)| DataError::Io {
                action: "locking",
                path,
                source: e.into(),
            })
    }

    /// Exclusive, trying until `deadline`; `None` when ingests still hold it then.
    fn exclusive_until(
        staging: &Path,
        client: &str,
        deadline: Instant,
    ) -> Result<Option<ClientLock>, DataError> {
        let (mut f, path) = Self::open(staging, client)?;
        loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(Some(ClientLock(l))),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    f = back;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, e)) => {
                    return Err(DataError::Io {
                        action: "locking",
                        path,
                        source: e.into(),
                    });
                }
            }
        }
    }
}

/// What a sweep of a withdrawn client's data found and did.
pub(crate) struct Sweep {
    pub(crate) destroyed: Vec<String>,
    pub(crate) discarded: Vec<String>,
    pub(crate) pending: Vec<String>,
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

    /// Records `client` as known (not withdrawn) unless a record exists. Exclusive: a record
    /// written meanwhile by anyone (a withdrawal included) is never replaced.
    pub(crate) fn register_client(&self, client: &str) -> Result<(), DataError> {
        if self.client_record(client)?.is_some() {
            return Ok(());
        }
        let p = self.client_path(client);
        let dir = p.parent().expect("parent");
        mkdir_private(dir)?;
        let mut r = [0u8; 4];
        getrandom::getrandom(&mut r).expect("getrandom failed");
        // Unique per call: threads of one process may register the same client at once.
        let tmp = dir.join(format!(
            ".{client}.new{}-{}",
            std::process::id(),
            hex::encode(r)
        ));
        let rec = ClientRecord {
            format: 1,
            client: client.into(),
            withdrawn: false,
            case: None,
        };
        write_private(
            &tmp,
            serde_json::to_string_pretty(&rec)
                .expect("serialize")
                .as_bytes(),
        )?;
        let linked = std::fs::hard_link(&tmp, &p);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => crate::keystore::sync_dir(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io("creating client record", &p)(e)),
        }
    }

    /// Partial datasets (`<id>.partial/`) of ingests for `client`, running or crashed.
    pub(crate) fn partials_of(&self, client: &str) -> Result<Vec<(DatasetId, PathBuf)>, DataError> {
        let st = &self.paths.staging;
        let mut out = Vec::new();
        for e in std::fs::read_dir(st).map_err(io("listing staging", st))? {
            let e = e.map_err(io("listing staging", st))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".partial") else {
                continue;
            };
            let Ok(id) = id.parse::<DatasetId>() else {
                continue;
            };
            let owner = std::fs::read_to_string(e.path().join(PARTIAL_OWNER)).unwrap_or_default();
            if owner.trim() == client {
                out.push((id, e.path()));
            }
        }
        Ok(out)
    }

    /// Destroys what is left of a withdrawn `client`: partial datasets of crashed ingests are
    /// discarded, those of running ingests lose their key now (the ingest discards the rest),
    /// live datasets are wiped (a dataset busy in a restore is retried until `deadline`, else
    /// left pending). Partials are listed before datasets, so an ingest finishing in between is
    /// seen as one or the other.
    pub(crate) fn sweep_client(
        &self,
        client: &str,
        reason: WithdrawReason,
        operator: &str,
        deadline: Option<Instant>,
    ) -> Result<Sweep, DataError> {
        let mut sweep = Sweep {
            destroyed: Vec::new(),
            discarded: Vec::new(),
            pending: Vec::new(),
        };
        for (id, dir) in self.partials_of(client)? {
            match self.lock(&id) {
                Ok(_lock) => {
                    self.discard_partial(&id, &dir);
                    sweep.discarded.push(id.to_string());
                }
                Err(DataError::Locked(_)) => {
                    self.keys.destroy(id.as_str())?;
                    sweep.pending.push(id.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        let opts = WipeOptions {
            note: None,
            operator: operator.into(),
        };
        for info in self.list()? {
            if info.client != client || !info.state.is_live() {
                continue;
            }
            loop {
                match self.wipe_as(
                    &info.id,
                    Some(reason.into()),
                    &opts,
                    DatasetState::Withdrawn,
                ) {
                    Ok(_) => {
                        sweep.destroyed.push(info.id.to_string());
                        break;
                    }
                    Err(DataError::Locked(_)) if deadline.is_some_and(|d| Instant::now() < d) => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(DataError::Locked(_)) => {
                        sweep.pending.push(info.id.to_string());
                        break;
                    }
                    // Destroyed meanwhile by another sweep.
                    Err(DataError::BadState { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(sweep)
    }

    /// True when `client` withdrew and was not reactivated.
    pub fn client_withdrawn(&self, client: &str) -> Result<bool, DataError> {
        Ok(self.client_record(client)?.is_some_and(|r| r.withdrawn))
    }

    /// Destroys every key and ciphertext of `client` now (waiting up to `withdraw_wait` for
    /// ingests and restores in flight), refuses its later ingests until
    /// [`Custody::reactivate`], rotates the key backups holding its keys, and opens the deletion
    /// case for `received` (YYYY-MM-DD, not in the future), due five working days later. A
    /// second call for the same client and date reuses that case.
    pub fn withdraw(
        &self,
        client: &str,
        received: &str,
        reason: WithdrawReason,
        operator: &str,
    ) -> Result<Withdrawal, DataError> {
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
        // Refuse new ingests before destroying anything; running ones see this and stop. The
        // client record is read-modify-written under the cases lock (as `reactivate` does).
        {
            let _l = crate::backup::DepotLock::take(&self.paths.staging, "cases")?;
            let mut rec = self
                .client_record(client)?
                .ok_or_else(|| DataError::UnknownClient(client.into()))?;
            if !rec.withdrawn {
                rec.withdrawn = true;
                self.save_client(&rec)?;
            }
        }
        let deadline = Instant::now() + self.config.withdraw_wait;
        let client_lock = ClientLock::exclusive_until(&self.paths.staging, client, deadline)?;
        let sweep = self.sweep_client(client, reason, operator, Some(deadline))?;
        let received = format_date(received_date);
        // One case per client and date, also against a concurrent withdrawal or deletions().
        let cases_lock = crate::backup::DepotLock::take(&self.paths.staging, "cases")?;
        let existing = self
            .load_cases()?
            .into_iter()
            .find(|c| c.client == client && c.received == received);
        let existing_case = existing.is_some();
        let mut case = existing.unwrap_or_else(|| {
            let mut r = [0u8; 3];
            getrandom::getrandom(&mut r).expect("getrandom failed");
            let due = add_working_days(
                received_date,
                self.config.deletion_deadline_days,
                &self.config.holidays,
            );
            DeletionCase {
                format: crate::cases::CASE_FORMAT,
                case: format!(
                    "case-{}-{}",
                    format_date(now.date()).replace('-', ""),
                    hex::encode(r)
                ),
                client: client.into(),
                reason,
                received: received.clone(),
                due: format_date(due),
                datasets: Vec::new(),
                live_destroyed_at: rfc3339(now),
                backup_unreadable_at: None,
                backup_unreadable_expected: rfc3339(now),
                backup_late: None,
                pending: Vec::new(),
                state: "open".into(),
                confirmation: None,
            }
        });
        // Datasets wiped earlier may still have keys in unexpired backup epochs: they count too.
        let mut ids: Vec<String> = sweep.destroyed.clone();
        ids.extend(sweep.discarded.iter().cloned());
        ids.extend(sweep.pending.iter().cloned());
        ids.extend(
            self.list()?
                .into_iter()
                .filter(|i| i.client == client)
                .map(|i| i.id.to_string()),
        );
        for id in ids {
            if !case.datasets.contains(&id) {
                case.datasets.push(id);
            }
        }
        if !sweep.destroyed.is_empty() {
            case.live_destroyed_at = rfc3339(now);
        }
        case.pending = sweep.pending.clone();
        if case.state == "complete" && !(sweep.destroyed.is_empty() && sweep.pending.is_empty()) {
            case.state = "open".into();
            case.backup_unreadable_at = None;
            case.confirmation = None;
        }
        case.format = crate::cases::CASE_FORMAT;
        self.save_case(&case)?;
        let mut rec = self
            .client_record(client)?
            .ok_or_else(|| DataError::UnknownClient(client.into()))?;
        rec.case = Some(case.case.clone());
        self.save_client(&rec)?;
        self.audit.append(AuditEvent::Withdraw {
            client: client.into(),
            case: case.case.clone(),
            reason: reason.to_string(),
            received: case.received.clone(),
            due: case.due.clone(),
            datasets: sweep.destroyed.len() as u64,
        })?;
        drop(cases_lock);
        let rotation = self.rotate_backups(&case.case, &case.datasets)?;
        drop(client_lock);
        let case_id = case.case.clone();
        let case = self
            .deletions()?
            .into_iter()
            .find(|c| c.case == case_id)
            .ok_or(DataError::NotFound(case_id))?;
        Ok(Withdrawal {
            case,
            existing_case,
            destroyed_now: sweep.destroyed,
            discarded_now: sweep.discarded,
            rotation,
        })
    }

    /// Lets a withdrawn client's data be ingested again.
    pub fn reactivate(&self, client: &str) -> Result<(), DataError> {
        check_ident("client id", client)?;
        let _l = crate::backup::DepotLock::take(&self.paths.staging, "cases")?;
        let mut rec = self
            .client_record(client)?
            .ok_or_else(|| DataError::UnknownClient(client.into()))?;
        rec.withdrawn = false;
        self.save_client(&rec)?;
        self.audit.append(AuditEvent::Reactivate {
            client: client.into(),
        })
    }
}
