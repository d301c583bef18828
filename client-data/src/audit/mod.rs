//! The append-only, hash-chained, signed audit log: `<audit>/audit.log`, one JSON object per line.
//!
//! Line format, version 2 (version 1 lines are still read and verified; a log started in format 1
//! continues in format 2, never the other way round): `{"v":2,"seq":N,"time":RFC3339,"prev":HEX,
//! "event":KIND,...fields...,"hash":HEX}`. `hash` is BLAKE3 of the line's bytes up to (not
//! including) `,"hash":`, with the closing `}` appended, i.e. of the line as it would be without
//! its `hash` member. `prev` is the previous line's `hash` (64 zeros for the first line); `seq`
//! counts from 0. Format 2 differs from 1 in its fields only: devices are a [`DeviceIdentity`]
//! (serial, WWN, model, size, kernel name; format 1 had a free `device` path and
//! `device_serial`), a wipe's `reason` is a [`WipeReason`] code (format 1: free text), and
//! `image_written` carries `image` and `version` apart (format 1: `NAME@VERSION`).
//!
//! Every append takes an exclusive flock on the file (the agent daemon and `tek` commands append
//! concurrently), reads the tail to chain onto, writes its lines and fdatasyncs, then, still
//! under the lock, signs the new head with the depot audit key (`checkpoint`), appends a signed
//! checkpoint whenever a multiple of [`CHECKPOINT_EVERY`] entries was crossed, rewrites
//! `audit.head`, and forwards every line and checkpoint to the journal (`journal`). `chain`
//! verifies all of it.
//!
//! No personal data goes in: ids, counts, sizes, hashes, codes, never file names or free text.
//! [`AuditEvent::check`] refuses an entry whose ids break the id rule before anything is written.

mod chain;
mod checkpoint;
mod event;
mod fields;
mod filter;
pub mod journal;

pub use checkpoint::{
    AuditPublicKey, CHECKPOINT_EVERY, CHECKPOINT_FORMAT, Checkpoint, public_path, secret_path,
};
pub use event::AuditEvent;
pub use fields::{DeviceIdentity, WipeReason};
pub use filter::{AuditFilter, EVENT_KINDS};

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::dataset::rfc3339;
use crate::error::{DataError, io};

/// Format version of the audit lines this version writes.
pub const AUDIT_VERSION: u32 = 2;
/// Oldest format version still read and verified.
pub const AUDIT_VERSION_MIN: u32 = 1;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_KEY: &str = ",\"hash\":\"";

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
    /// The signed head (`audit.head`), if any.
    pub signed_head: Option<Checkpoint>,
    /// The last signed checkpoint (`audit.checkpoints`), if any.
    pub checkpoint: Option<Checkpoint>,
    /// Signed checkpoints in `audit.checkpoints`.
    pub checkpoints: u64,
    /// Entries after the signed head, covered by no signature (0 normally; more after a crash
    /// between an append and its head update, or after lines appended without the key).
    pub unsigned_entries: u64,
}

/// The audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    head_path: PathBuf,
    checkpoints_path: PathBuf,
    keys: PathBuf,
    journal: journal::JournalSink,
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

/// The last line's link fields.
struct Tail {
    seq: u64,
    hash: String,
    time: String,
}

impl AuditLog {
    /// Opens (creating) the log in `dir`; the depot audit key lives in `keys` (created there on
    /// first use).
    pub fn open(dir: &Path, keys: &Path) -> Result<AuditLog, DataError> {
        crate::keystore::mkdir_private(dir)?;
        let path = dir.join("audit.log");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("creating audit log", &path))?;
        Ok(AuditLog {
            path,
            head_path: dir.join("audit.head"),
            checkpoints_path: dir.join("audit.checkpoints"),
            keys: keys.to_path_buf(),
            journal: journal::JournalSink::default(),
        })
    }

    /// Forwards entries to this journal socket instead of journald's (`None`: nowhere).
    pub fn with_journal_socket(mut self, socket: Option<PathBuf>) -> AuditLog {
        self.journal = journal::JournalSink(socket);
        self
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The signed head file.
    pub fn head_path(&self) -> &Path {
        &self.head_path
    }

    /// The signed checkpoints file.
    pub fn checkpoints_path(&self) -> &Path {
        &self.checkpoints_path
    }

    /// The depot audit public key file.
    pub fn public_key_path(&self) -> PathBuf {
        public_path(&self.keys)
    }

    /// Appends one event, hash-chained, fsync'd, signed.
    pub fn append(&self, event: AuditEvent) -> Result<(), DataError> {
        self.append_many(std::iter::once(event))
    }

    /// Appends several events under one lock with one fsync at the end (imports, tests).
    pub fn append_many(
        &self,
        events: impl IntoIterator<Item = AuditEvent>,
    ) -> Result<(), DataError> {
        self.append_signed(events.into_iter().collect(), false)
            .map(|_| ())
    }

    /// Appends one event and keeps a signed checkpoint of it, under one lock (the agent does at
    /// every service report, and prints the checkpoint there).
    pub fn append_checkpointed(&self, event: AuditEvent) -> Result<Checkpoint, DataError> {
        self.append_signed(vec![event], true)
            .map(|cp| cp.expect("one entry was appended"))
    }

    /// Appends `events`; returns the signed head (`None` when there was nothing to append).
    /// `keep` keeps it in the checkpoints file whatever the count.
    fn append_signed(
        &self,
        events: Vec<AuditEvent>,
        keep: bool,
    ) -> Result<Option<Checkpoint>, DataError> {
        for e in &events {
            e.check()?;
        }
        if events.is_empty() {
            return Ok(None);
        }
        self.locked(false, |log, f| {
            // The key first: a missing key refuses the append before anything is written.
            let key = log.key()?;
            let tail = log.tail(f)?;
            let gap = log.check_head(&key, tail.as_ref())?;
            let (first, mut prev) = match tail {
                Some(t) => (t.seq + 1, t.hash),
                None => (0, GENESIS.to_string()),
            };
            let mut seq = first;
            // Kept for the journal only when there is one to forward to.
            let forward = log.journal.0.is_some();
            let mut lines = Vec::new();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &**f);
            // A last line without its newline (a write torn at its last byte) must not have the
            // next entry glued onto it: that would break the chain at an entry that was fine.
            if !ends_with_newline(f).map_err(io("reading", &log.path))? {
                out.write_all(b"\n")
                    .map_err(io("appending to audit log", &log.path))?;
            }
            for event in gap.into_iter().chain(events) {
                let kind = if forward { event.kind() } else { String::new() };
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
                let line = format!("{}{HASH_KEY}{hash}\"}}", &body[..body.len() - 1]);
                out.write_all(line.as_bytes())
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(io("appending to audit log", &log.path))?;
                if forward {
                    lines.push((seq, kind, hash.clone(), line));
                }
                prev = hash;
                seq += 1;
            }
            out.flush()
                .map_err(io("appending to audit log", &log.path))?;
            drop(out);
            f.sync_data().map_err(io("syncing audit log", &log.path))?;
            for (seq, kind, hash, line) in &lines {
                // A journal that is not keeping up gets no more of this batch (see `journal`).
                if !log.journal.entry(*seq, kind, hash, line) {
                    break;
                }
            }
            let last = seq - 1;
            // Entries went from `first` to `last + 1`: did that pass a multiple of N?
            let crossed = (last + 1) / CHECKPOINT_EVERY > first / CHECKPOINT_EVERY;
            log.sign(&key, last, &prev, crossed || keep).map(Some)
        })
    }

    /// Signs a checkpoint of the current last entry now and returns it; `None` for an empty
    /// log.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, DataError> {
        self.locked(false, |log, f| match log.tail(f)? {
            Some(t) => log.sign(&log.key()?, t.seq, &t.hash, true).map(Some),
            None => Ok(None),
        })
    }

    /// Under the lock, before an append: the signed head must be ours and match the log's tail.
    /// A log shorter than its head, or a last entry that differs from it, is refused (appending
    /// would overwrite the evidence); entries after the head are named by an
    /// [`AuditEvent::UnsignedEntries`] entry written first, before the next signature covers them.
    fn check_head(
        &self,
        key: &checkpoint::AuditKey,
        tail: Option<&Tail>,
    ) -> Result<Option<AuditEvent>, DataError> {
        let refuse = |seq: u64, reason: String| DataError::AuditCheckpoint {
            path: self.head_path.clone(),
            line: 1,
            seq,
            reason: format!("{reason}; refusing to append (run `tek audit verify`)"),
        };
        let Some(head) = checkpoint::read_head(&self.head_path)? else {
            let signed_before =
                std::fs::metadata(&self.checkpoints_path).is_ok_and(|m| m.len() > 0);
            return match tail {
                _ if signed_before => Err(refuse(0, "missing, but checkpoints exist".into())),
                // A format 1 log (or a crash before the first head was written).
                Some(t) => Ok(Some(AuditEvent::UnsignedEntries { from: 0, to: t.seq })),
                None => Ok(None),
            };
        };
        head.check(&key.public()).map_err(|r| refuse(head.seq, r))?;
        match tail {
            Some(t) if t.seq == head.seq && t.hash == head.hash => Ok(None),
            Some(t) if t.seq > head.seq => Ok(Some(AuditEvent::UnsignedEntries {
                from: head.seq + 1,
                to: t.seq,
            })),
            Some(t) if t.seq == head.seq => Err(refuse(
                t.seq,
                "the log's last entry differs from the signed head (edited)".into(),
            )),
            _ => Err(DataError::AuditTruncated {
                path: self.path.clone(),
                entries: tail.map_or(0, |t| t.seq + 1),
                signed: head.seq + 1,
                what: "the head",
                time: head.time.clone(),
            }),
        }
    }

    /// Under the lock: the depot audit key, created only for a chain nothing was signed for yet.
    fn key(&self) -> Result<checkpoint::AuditKey, DataError> {
        let fresh = !self.head_path.exists()
            && std::fs::metadata(&self.checkpoints_path).map_or(true, |m| m.len() == 0);
        checkpoint::AuditKey::load_or_create(&self.keys, fresh)
    }

    /// Under the lock: signs entry `seq`/`hash`, appends it as a checkpoint when `keep`, and
    /// rewrites the head file.
    fn sign(
        &self,
        key: &checkpoint::AuditKey,
        seq: u64,
        hash: &str,
        keep: bool,
    ) -> Result<Checkpoint, DataError> {
        let cp = key.sign(seq, hash, rfc3339(time::OffsetDateTime::now_utc()));
        if keep {
            checkpoint::append_checkpoint(&self.checkpoints_path, &cp)?;
            self.journal.checkpoint(&cp);
        }
        checkpoint::write_head(&self.head_path, &cp)?;
        Ok(cp)
    }

    /// Runs `f` with the log open under a flock: exclusive and for appending, or shared and
    /// read-only.
    fn locked<T>(
        &self,
        shared: bool,
        f: impl FnOnce(&AuditLog, &mut Flock<File>) -> Result<T, DataError>,
    ) -> Result<T, DataError> {
        // Readers (`head`) need no write permission on the log.
        let file = OpenOptions::new()
            .read(true)
            .append(!shared)
            .open(&self.path)
            .map_err(io("opening audit log", &self.path))?;
        let how = if shared {
            FlockArg::LockShared
        } else {
            FlockArg::LockExclusive
        };
        let mut file = Flock::lock(file, how).map_err(|(_, e)| DataError::Io {
            action: "locking audit log",
            path: self.path.clone(),
            source: e.into(),
        })?;
        f(self, &mut file)
    }

    /// Link fields of the last line, reading only the end of the file.
    fn tail(&self, f: &mut File) -> Result<Option<Tail>, DataError> {
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
                struct Link {
                    seq: u64,
                    time: String,
                }
                let s: Link = serde_json::from_str(&line).map_err(|e| broken(&e.to_string()))?;
                if s.seq == u64::MAX {
                    // Nothing can follow it, and "seq + 1 entries" would wrap to 0.
                    return Err(broken("seq is out of range"));
                }
                return Ok(Some(Tail {
                    seq: s.seq,
                    hash: hash.to_string(),
                    time: s.time,
                }));
            }
            window *= 4;
        }
    }

    /// Iterates over all records (each checked for its own hash; chain links are `verify`'s job).
    /// Format 1 lines are read into today's events.
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

    /// The current head without verifying the whole chain: the log's last line, the signed head
    /// file and the last checkpoint, as found.
    pub fn head(&self) -> Result<AuditHead, DataError> {
        // All three under one shared lock, so they agree with each other.
        let (tail, signed_head, cps) = self.locked(true, |log, f| {
            Ok((
                log.tail(f)?,
                checkpoint::read_head(&log.head_path)?,
                checkpoint::read_checkpoints(&log.checkpoints_path)?,
            ))
        })?;
        let (entries, hash, time) = match tail {
            None => (0, GENESIS.to_string(), None),
            Some(t) => (t.seq + 1, t.hash, Some(t.time)),
        };
        let signed = signed_head.as_ref().map_or(0, |h| h.seq + 1);
        Ok(AuditHead {
            entries,
            hash,
            time,
            unsigned_entries: entries.saturating_sub(signed),
            signed_head,
            checkpoints: cps.len() as u64,
            checkpoint: cps.into_iter().last(),
        })
    }
}

fn parse_line(path: &Path, n: u64, line: &str) -> Result<AuditRecord, DataError> {
    let bad = |reason: String| DataError::AuditBroken {
        path: path.to_path_buf(),
        line: n,
        seq: n - 1,
        reason,
    };
    let (_, hash) = split_line(line).ok_or_else(|| bad("no hash member".into()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(format!("not a valid entry: {e}")))?;
    match v["v"].as_u64() {
        Some(1) => event::upgrade_v1(&mut v),
        Some(2) => {}
        _ => return Err(bad(format!("unknown version {}", v["v"]))),
    }
    let mut rec: AuditRecord =
        serde_json::from_value(v).map_err(|e| bad(format!("not a valid entry: {e}")))?;
    rec.hash = hash.to_string();
    Ok(rec)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_line_takes_the_last_hash_member() {
        let h = "ab".repeat(32);
        let line = format!("{{\"v\":2,\"x\":\"{HASH_KEY}\"{HASH_KEY}{h}\"}}");
        let (body, hash) = split_line(&line).unwrap();
        assert_eq!(hash, h);
        assert_eq!(body, format!("{{\"v\":2,\"x\":\"{HASH_KEY}\"}}"));
        assert!(split_line("{\"v\":2,\"hash\":\"abc\"}").is_none());
    }
}
