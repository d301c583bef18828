//! The append-only, hash-chained audit log: `<audit>/audit.log`, one JSON object per line.
//!
//! Line format, version 1: `{"v":1,"seq":N,"time":RFC3339,"prev":HEX,"event":KIND,...fields...,
//! "hash":HEX}`. `hash` is BLAKE3 of the line's bytes up to (not including) `,"hash":`, with the
//! closing `}` appended, i.e. of the line as it would be without its `hash` member. `prev` is the
//! previous line's `hash` (64 zeros for the first line); `seq` counts from 0. Every append takes an
//! exclusive flock on the file (the agent daemon and `tek` commands append concurrently), reads the
//! tail to chain onto, writes one line and fdatasyncs before returning.
//!
//! No personal data goes in: ids, counts, sizes, hashes, never file names.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::dataset::rfc3339;
use crate::error::{DataError, io};

/// Format version of audit lines.
pub const AUDIT_VERSION: u32 = 1;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_KEY: &str = ",\"hash\":\"";

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
        /// Device (or directory) written.
        device: String,
        /// Device serial, if known.
        device_serial: Option<String>,
        /// Entries restored.
        entries: u64,
        /// Bytes restored.
        bytes: u64,
        /// Entries skipped (device nodes, FIFOs, sockets).
        skipped: u64,
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
        /// Reason given with `--force`, or "withdrawal"/"termination".
        reason: Option<String>,
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
        /// Manifest hash.
        manifest_hash: String,
        /// Device written.
        device: String,
        /// Its serial.
        device_serial: Option<String>,
        /// Bytes written.
        bytes: u64,
        /// Outcome.
        result: String,
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
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Format version.
    pub v: u32,
    /// Sequence number from 0.
    pub seq: u64,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Hash of the previous line.
    pub prev: String,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// This line's hash (absent while hashing).
    #[serde(default, skip_serializing)]
    pub hash: String,
}

/// The chain head: what to keep off the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditHead {
    /// Entries in the log.
    pub entries: u64,
    /// Hash of the last line (64 zeros when empty).
    pub hash: String,
    /// Time of the last line.
    pub time: Option<String>,
}

/// The audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

/// Splits a line into (body to hash, stated hash).
fn split_line(line: &str) -> Option<(String, &str)> {
    let pos = line.rfind(HASH_KEY)?;
    let rest = &line[pos + HASH_KEY.len()..];
    let hash = rest.strip_suffix("\"}")?;
    if hash.len() != 64 {
        return None;
    }
    let mut body = line[..pos].to_string();
    body.push('}');
    Some((body, hash))
}

impl AuditLog {
    /// Opens (creating) the log in `dir`.
    pub fn open(dir: &Path) -> Result<AuditLog, DataError> {
        crate::keystore::mkdir_private(dir)?;
        let path = dir.join("audit.log");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("creating audit log", &path))?;
        Ok(AuditLog { path })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event, hash-chained, fsync'd.
    pub fn append(&self, event: AuditEvent) -> Result<(), DataError> {
        self.append_many(std::iter::once(event))
    }

    /// Appends several events under one lock with one fsync at the end (imports, tests).
    pub fn append_many(
        &self,
        events: impl IntoIterator<Item = AuditEvent>,
    ) -> Result<(), DataError> {
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io("opening audit log", &self.path))?;
        let mut f = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| DataError::Io {
            action: "locking audit log",
            path: self.path.clone(),
            source: e.into(),
        })?;
        let (mut seq, mut prev) = match self.tail(&mut f)? {
            Some((seq, hash)) => (seq + 1, hash),
            None => (0, GENESIS.to_string()),
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &*f);
        // A last line without its newline (a write torn at its last byte) must not have the
        // next entry glued onto it: that would break the chain at an entry that was fine.
        if !ends_with_newline(&f).map_err(io("reading", &self.path))? {
            out.write_all(b"\n")
                .map_err(io("appending to audit log", &self.path))?;
        }
        for event in events {
            let rec = AuditRecord {
                v: AUDIT_VERSION,
                seq,
                time: rfc3339(time::OffsetDateTime::now_utc()),
                prev: prev.clone(),
                event,
                hash: String::new(),
            };
            let body = serde_json::to_string(&rec).expect("serialize audit record");
            let hash = blake3::hash(body.as_bytes()).to_hex().to_string();
            let line = format!("{}{HASH_KEY}{hash}\"}}\n", &body[..body.len() - 1]);
            out.write_all(line.as_bytes())
                .map_err(io("appending to audit log", &self.path))?;
            prev = hash;
            seq += 1;
        }
        out.flush()
            .map_err(io("appending to audit log", &self.path))?;
        drop(out);
        f.sync_data().map_err(io("syncing audit log", &self.path))
    }

    /// (seq, hash) of the last line, reading only the end of the file.
    fn tail(&self, f: &mut File) -> Result<Option<(u64, String)>, DataError> {
        let len = f
            .metadata()
            .map_err(io("reading size of", &self.path))?
            .len();
        if len == 0 {
            return Ok(None);
        }
        let mut window = 64 * 1024u64;
        loop {
            let start = len.saturating_sub(window);
            f.seek(SeekFrom::Start(start))
                .map_err(io("seeking in", &self.path))?;
            let mut buf = Vec::new();
            f.take(len - start)
                .read_to_end(&mut buf)
                .map_err(io("reading", &self.path))?;
            let trimmed = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if let Some(nl) = trimmed
                .iter()
                .rposition(|&b| b == b'\n')
                .or((start == 0).then_some(usize::MAX))
            {
                let last = if nl == usize::MAX {
                    trimmed
                } else {
                    &trimmed[nl + 1..]
                };
                let line = String::from_utf8_lossy(last);
                let broken = |reason: &str| DataError::AuditBroken {
                    path: self.path.clone(),
                    line: 0,
                    seq: 0,
                    reason: format!("last line: {reason}; run `tek audit verify`"),
                };
                let (_, hash) = split_line(&line).ok_or_else(|| broken("no hash"))?;
                #[derive(Deserialize)]
                struct Seq {
                    seq: u64,
                }
                let s: Seq = serde_json::from_str(&line).map_err(|e| broken(&e.to_string()))?;
                if s.seq == u64::MAX {
                    // Nothing can follow it, and "seq + 1 entries" would wrap to 0.
                    return Err(broken("seq is out of range"));
                }
                return Ok(Some((s.seq, hash.to_string())));
            }
            window *= 4;
        }
    }

    /// Iterates over all records (each checked for its own hash; chain links are `verify`'s job).
    pub fn records(
        &self,
    ) -> Result<impl Iterator<Item = Result<AuditRecord, DataError>> + '_, DataError> {
        let f = File::open(&self.path).map_err(io("opening audit log", &self.path))?;
        let mut n = 0u64;
        Ok(BufReader::with_capacity(1 << 20, f)
            .lines()
            .map(move |line| {
                n += 1;
                let line = line.map_err(io("reading audit log", &self.path))?;
                parse_line(&self.path, n, &line)
            }))
    }

    /// Checks every line and the chain. Returns the head, or names the first bad entry.
    pub fn verify(&self) -> Result<AuditHead, DataError> {
        let f = File::open(&self.path).map_err(io("opening audit log", &self.path))?;
        let mut prev = GENESIS.to_string();
        let mut n = 0u64;
        let mut last_time = None;
        #[derive(Deserialize)]
        struct Link {
            v: u32,
            seq: u64,
            prev: String,
            time: String,
        }
        for line in BufReader::with_capacity(1 << 20, f).lines() {
            let line = line.map_err(io("reading audit log", &self.path))?;
            let bad = |reason: String| DataError::AuditBroken {
                path: self.path.clone(),
                line: n + 1,
                seq: n,
                reason,
            };
            let (body, hash) = split_line(&line).ok_or_else(|| bad("no hash member".into()))?;
            if blake3::hash(body.as_bytes()).to_hex().as_str() != hash {
                return Err(bad("content does not match its hash (edited)".into()));
            }
            let link: Link =
                serde_json::from_str(&line).map_err(|e| bad(format!("not a valid entry: {e}")))?;
            if link.v != AUDIT_VERSION {
                return Err(bad(format!("unknown version {}", link.v)));
            }
            if link.seq != n {
                return Err(bad(format!(
                    "has seq {} (entries deleted, inserted or reordered before it)",
                    link.seq
                )));
            }
            if link.prev != prev {
                return Err(bad(
                    "does not chain onto the previous entry (deleted, inserted or reordered)"
                        .into(),
                ));
            }
            prev = hash.to_string();
            last_time = Some(link.time);
            n += 1;
        }
        Ok(AuditHead {
            entries: n,
            hash: prev,
            time: last_time,
        })
    }

    /// The current head without verifying the whole chain.
    pub fn head(&self) -> Result<AuditHead, DataError> {
        let mut f = File::open(&self.path).map_err(io("opening audit log", &self.path))?;
        match self.tail(&mut f)? {
            None => Ok(AuditHead {
                entries: 0,
                hash: GENESIS.to_string(),
                time: None,
            }),
            Some((seq, hash)) => {
                let time = self.records()?.last().and_then(|r| r.ok()).map(|r| r.time);
                Ok(AuditHead {
                    entries: seq + 1,
                    hash,
                    time,
                })
            }
        }
    }
}

/// True for an empty file or one whose last byte is a newline.
fn ends_with_newline(f: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1)?;
    }
    Ok(last[0] == b'\n')
}

fn parse_line(path: &Path, n: u64, line: &str) -> Result<AuditRecord, DataError> {
    let bad = |reason: String| DataError::AuditBroken {
        path: path.to_path_buf(),
        line: n,
        seq: n - 1,
        reason,
    };
    let (_, hash) = split_line(line).ok_or_else(|| bad("no hash member".into()))?;
    let mut rec: AuditRecord =
        serde_json::from_str(line).map_err(|e| bad(format!("not a valid entry: {e}")))?;
    rec.hash = hash.to_string();
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> AuditEvent {
        AuditEvent::Verify {
            dataset: format!("ds-{i}"),
            entries: i,
            bytes: i * 10,
            mismatches: 0,
            result: "passed".into(),
        }
    }

    fn log_with(n: u64) -> (tempfile::TempDir, AuditLog) {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path()).unwrap();
        for i in 0..n {
            log.append(ev(i)).unwrap();
        }
        (d, log)
    }

    fn lines(log: &AuditLog) -> Vec<String> {
        std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write_lines(log: &AuditLog, l: &[String]) {
        std::fs::write(log.path(), l.join("\n") + "\n").unwrap();
    }

    fn bad_line(log: &AuditLog) -> u64 {
        match log.verify() {
            Err(DataError::AuditBroken { line, .. }) => line,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn chain_verifies_and_roundtrips() {
        let (_d, log) = log_with(5);
        let head = log.verify().unwrap();
        assert_eq!(head.entries, 5);
        assert_eq!(log.head().unwrap().hash, head.hash);
        let recs: Vec<_> = log.records().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(recs[3].event, ev(3));
        assert_eq!(recs[3].prev, recs[2].hash);
    }

    #[test]
    fn edited_entry_is_named() {
        let (_d, log) = log_with(5);
        let mut l = lines(&log);
        l[2] = l[2].replace("\"bytes\":20", "\"bytes\":21");
        write_lines(&log, &l);
        assert_eq!(bad_line(&log), 3);
    }

    #[test]
    fn deleted_reordered_inserted_are_named() {
        let (_d, log) = log_with(5);
        let orig = lines(&log);
        let mut l = orig.clone();
        l.remove(1);
        write_lines(&log, &l);
        assert_eq!(bad_line(&log), 2);
        let mut l = orig.clone();
        l.swap(2, 3);
        write_lines(&log, &l);
        assert_eq!(bad_line(&log), 3);
        let mut l = orig.clone();
        l.insert(4, orig[1].clone());
        write_lines(&log, &l);
        assert_eq!(bad_line(&log), 5);
        // Deleting the last line is only visible against a head kept elsewhere.
        write_lines(&log, &orig[..4]);
        assert_ne!(
            log.verify().unwrap().hash,
            orig[4][orig[4].len() - 66..orig[4].len() - 2]
        );
    }

    #[test]
    fn batch_append_chains() {
        let (_d, log) = log_with(2);
        log.append_many((2..100).map(ev)).unwrap();
        log.append(ev(100)).unwrap();
        assert_eq!(log.verify().unwrap().entries, 101);
    }
}
