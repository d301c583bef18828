//! The job journal: one JSON file per job under `<state>/jobs/`, rewritten atomically at every
//! state change.
//!
//! Each save writes `<id>.json.tmp`, fsyncs it, renames it over `<id>.json` and fsyncs the
//! directory. rename(2) is atomic, so after a crash or power cut the file holds either the
//! previous record or the new one, never a torn mix; the directory fsync makes the rename itself
//! durable (ext4 and xfs otherwise may forget it). `.tmp` files are ignored when loading, and
//! removed only by the journal's owner when it takes ownership ([`Journal::own`]): one a reader
//! sees may be another process's save in flight (the agent's, while `tek image rm --force`
//! lists the journal), and deleting it made that save fail after its record was half done.
//!
//! A new job's record is created exclusively ([`Journal::create`]): written to a temporary
//! file, then hard-linked to `<id>.json`, which fails if that name exists. So a new job can
//! never overwrite another one's record, whatever its id.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::job::{JOB_FORMAT, Job};

/// A new job's id is already taken by a record in the journal; nothing was written over it.
#[derive(Debug, thiserror::Error)]
#[error("job id {id} is already taken in {dir}")]
pub struct JobIdTaken {
    /// The id.
    pub id: String,
    /// The journal directory.
    pub dir: String,
}

/// Another process, a running `tek agent`, owns the journal ([`Journal::own`]): records must
/// be changed through it, or it would write its own copy over them.
#[derive(Debug, thiserror::Error)]
#[error("a running tek agent owns the job journal {dir}")]
pub struct JournalBusy {
    /// The journal directory.
    pub dir: String,
}

/// Ownership of the journal, held by the agent for its whole life (an exclusive `flock` on
/// `<dir>/agent.lock`, released by the kernel when the process ends, also on `kill -9`).
#[derive(Debug)]
pub struct JournalOwner {
    _lock: nix::fcntl::Flock<File>,
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating, private: [`crate::depot::PRIVATE_DIR_MODE`]) the journal directory.
    pub fn open(dir: &Path) -> Result<Journal> {
        crate::depot::private_dir(dir)
            .with_context(|| format!("creating job journal directory {}", dir.display()))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
        })
    }

    /// The journal in `dir` for reading only (`tek report`, and `tek job list`/`show` while
    /// the agent is stopped): creates nothing, takes no lock, removes nothing; a directory that
    /// does not exist is an empty journal.
    pub fn read_only(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
        }
    }

    /// Takes ownership of the journal: the agent holds it while it runs, and a command that
    /// changes records itself (`tek image rm --force`) holds it meanwhile; fails with
    /// [`JournalBusy`] while another process holds it.
    pub fn own(&self) -> Result<JournalOwner> {
        let path = self.dir.join("agent.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // No other process saves while we hold the lock: a temp file now is a leftover
                // of a crash before its rename (the record beside it is intact).
                for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                    if e.file_name().to_string_lossy().ends_with(".json.tmp") {
                        let _ = fs::remove_file(e.path());
                    }
                }
                Ok(JournalOwner { _lock: lock })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(JournalBusy {
                dir: self.dir.display().to_string(),
            }
            .into()),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `job` to `<id>.json.tmp` and syncs it; returns the temporary path.
    fn write_temp(&self, job: &Job) -> Result<PathBuf> {
        let tmp = self.dir.join(format!("{}.json.tmp", job.id));
        let mut bytes = serde_json::to_vec_pretty(job).context("serializing job record")?;
        bytes.push(b'\n');
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        Ok(tmp)
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", self.dir.display()))
    }

    /// Durably saves a job record (temp file, fsync, rename, directory fsync).
    pub fn save(&self, job: &Job) -> Result<()> {
        let path = self.path_of(&job.id);
        let tmp = self.write_temp(job)?;
        fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        self.sync_dir()
    }

    /// Durably records a new job, failing with [`JobIdTaken`] (and writing nothing over it)
    /// when a record with its id exists: the complete, synced temporary file (a name of its
    /// own, so two creators never share one) is moved to `<id>.json` without replacing an
    /// existing name (`renameat2(RENAME_NOREPLACE)`, else link + unlink, through `tempfile`):
    /// exclusive like `O_EXCL`, and never a torn record.
    pub fn create(&self, job: &Job) -> Result<()> {
        let path = self.path_of(&job.id);
        let mut bytes = serde_json::to_vec_pretty(job).context("serializing job record")?;
        bytes.push(b'\n');
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{}.", job.id))
            .suffix(".json.tmp")
            .tempfile_in(&self.dir)
            .with_context(|| format!("creating a temporary file in {}", self.dir.display()))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => self.sync_dir(),
            // The temporary file is removed when the error (holding it) is dropped.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Err(JobIdTaken {
                id: job.id.to_string(),
                dir: self.dir.display().to_string(),
            }
            .into()),
            Err(e) => {
                Err(e.error).with_context(|| format!("creating job record {}", path.display()))
            }
        }
    }

    /// Loads one job by id.
    pub fn load(&self, id: &str) -> Result<Job> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("job id \"{}\" is not valid", id.escape_debug());
        }
        let path = self.path_of(id);
        if !path.exists() {
            bail!("no job {id} in {}", self.dir.display());
        }
        read_job(&path)
    }

    /// Loads every job, oldest first (by the time it was queued). Unreadable records are
    /// reported as errors rather than skipped: a lost job could mean lost client data.
    pub fn load_all(&self) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            // Only a reader (`read_only`) can see no directory: no job was ever added.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(jobs),
            r => r.with_context(|| format!("listing job journal {}", self.dir.display()))?,
        };
        for entry in rd {
            let entry =
                entry.with_context(|| format!("listing job journal {}", self.dir.display()))?;
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json.tmp") {
                // A save in flight (another process's) or interrupted before its rename: the
                // record beside it is intact. Never removed here (see the module docs).
                continue;
            }
            if name.ends_with(".json") {
                jobs.push(read_job(&p)?);
            }
        }
        jobs.sort_by(|a, b| {
            let ta = a.history.first().map(|t| t.at.as_str()).unwrap_or("");
            let tb = b.history.first().map(|t| t.at.as_str()).unwrap_or("");
            ta.cmp(tb).then_with(|| a.id.cmp(&b.id))
        });
        Ok(jobs)
    }
}

fn read_job(path: &Path) -> Result<Job> {
    let text = fs::read(path).with_context(|| format!("reading job record {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("parsing job record {}", path.display()))?;
    let format = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format != u64::from(JOB_FORMAT) {
        bail!(
            "job record {} has format {format}, this tek reads format {JOB_FORMAT}",
            path.display()
        );
    }
    serde_json::from_value(v).with_context(|| format!("parsing job record {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobState, JobTarget};

    #[test]
    fn save_load_round_trip_and_no_temp_left() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(&d.path().join("jobs")).unwrap();
        let mut job = Job::new("T", "i@1", Some("ds".into()), JobTarget::Bay("b".into()));
        j.save(&job).unwrap();
        job.set_state(JobState::Claimed, None);
        j.save(&job).unwrap();
        assert_eq!(j.load(&job.id).unwrap(), job);
        let names: Vec<_> = fs::read_dir(j.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn create_never_overwrites_an_existing_record() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let first = Job::new(
            "T-A",
            "i@1",
            Some("ds-a".into()),
            JobTarget::Bay("b".into()),
        );
        j.create(&first).unwrap();
        let mut second = Job::new("T-B", "i@2", None, JobTarget::Bay("b".into()));
        second.id = first.id.clone();
        let e = j.create(&second).unwrap_err();
        assert!(e.is::<JobIdTaken>(), "{e:#}");
        assert_eq!(
            j.load(&first.id).unwrap(),
            first,
            "the first job's record is intact"
        );
        let names: Vec<_> = fs::read_dir(j.dir()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary left");
    }

    #[test]
    fn racing_creates_of_one_id_leave_exactly_one_intact_record() {
        let d = tempfile::tempdir().unwrap();
        let base = Job::new("T-0", "i@1", None, JobTarget::Bay("b".into()));
        let results: Vec<(String, bool)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let mut job = base.clone();
                    job.ticket = format!("T-{i}");
                    // Each thread its own handle, as two processes would have.
                    let j = Journal::open(d.path()).unwrap();
                    s.spawn(move || {
                        let ok = match j.create(&job) {
                            Ok(()) => true,
                            Err(e) if e.is::<JobIdTaken>() => false,
                            Err(e) => panic!("{e:#}"),
                        };
                        (job.ticket, ok)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<_> = results.iter().filter(|(_, ok)| *ok).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        let j = Journal::open(d.path()).unwrap();
        assert_eq!(j.load(&base.id).unwrap().ticket, winners[0].0);
    }

    #[test]
    fn one_owner_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let owner = j.own().unwrap();
        let e = Journal::open(d.path()).unwrap().own().unwrap_err();
        assert!(e.is::<JournalBusy>(), "{e:#}");
        drop(owner);
        j.own().unwrap();
        assert!(
            j.load_all().unwrap().is_empty(),
            "the lock file is not a record"
        );
    }

    #[test]
    fn records_with_old_short_ids_still_load() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let mut old = Job::new("T", "i@1", None, JobTarget::Bay("b".into()));
        old.id = "j-0a1b2c3d".parse().unwrap();
        j.save(&old).unwrap();
        assert_eq!(j.load("j-0a1b2c3d").unwrap(), old);
        assert_eq!(j.load_all().unwrap(), vec![old]);
    }

    #[test]
    fn stale_temp_file_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let job = Job::new("T", "i@1", None, JobTarget::Bay("b".into()));
        j.save(&job).unwrap();
        let tmp = d.path().join(format!("{}.json.tmp", job.id));
        fs::write(&tmp, b"{torn").unwrap();
        let all = j.load_all().unwrap();
        assert_eq!(all, vec![job]);
        // A reader leaves it: it may be another process's save in flight.
        assert!(tmp.exists(), "load_all removed a temp file it does not own");
        // The owner removes leftovers when it takes the journal.
        let _owner = j.own().unwrap();
        assert!(!tmp.exists(), "own() kept a crash leftover");
    }

    #[test]
    fn corrupt_record_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        fs::write(d.path().join("j-00000000.json"), b"{not json").unwrap();
        let e = format!("{:#}", j.load_all().unwrap_err());
        assert!(e.contains("j-00000000.json"), "{e}");
    }

    #[test]
    fn unknown_format_refused() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        fs::write(d.path().join("j-00000001.json"), br#"{"format": 99}"#).unwrap();
        let e = format!("{:#}", j.load("j-00000001").unwrap_err());
        assert!(e.contains("format 99"), "{e}");
    }

    #[test]
    fn bad_and_missing_ids() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        assert!(format!("{:#}", j.load("../x").unwrap_err()).contains("not valid"));
        assert!(format!("{:#}", j.load("j-1").unwrap_err()).contains("no job j-1"));
    }
}
