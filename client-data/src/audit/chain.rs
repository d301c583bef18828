//! `verify`: every line's own hash, the chain links, the format versions, every signed checkpoint
//! and the signed head, against the depot audit key (or a public key kept elsewhere).
//!
//! What each check catches: an edited line fails its own hash; a deleted, inserted or reordered
//! line fails `seq` or `prev`; an edited line whose chain was recomputed after it (`b3sum`)
//! fails at the first signed checkpoint or head at or after it, since its hash changed and the
//! signature cannot be remade without the key; lines cut off the end fail against the last
//! checkpoint and the head file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use super::checkpoint::{self, AuditPublicKey, Checkpoint};
use super::{AUDIT_VERSION, AUDIT_VERSION_MIN, AuditHead, AuditLog, GENESIS, split_line};
use crate::error::{DataError, io};

impl AuditLog {
    /// Checks everything against the depot audit key (`<keys>/audit.pub`). Returns the head, or
    /// names the first bad entry, checkpoint or truncation.
    pub fn verify(&self) -> Result<AuditHead, DataError> {
        self.verify_with(None)
    }

    /// [`verify`](Self::verify) against `key` (a copy kept off the machine) when given.
    pub fn verify_with(&self, key: Option<&AuditPublicKey>) -> Result<AuditHead, DataError> {
        let f = File::open(&self.path).map_err(io("opening audit log", &self.path))?;
        // Shared: appends (exclusive) wait, so log, head and checkpoints are read consistently.
        let f = Flock::lock(f, FlockArg::LockShared).map_err(|(_, e)| DataError::Io {
            action: "locking audit log",
            path: self.path.clone(),
            source: e.into(),
        })?;
        let cps = checkpoint::read_checkpoints(&self.checkpoints_path)?;
        let head = checkpoint::read_head(&self.head_path)?;
        let local;
        let key = match key {
            Some(k) => Some(k),
            None if self.public_key_path().exists() => {
                local = AuditPublicKey::load(&self.public_key_path())?;
                Some(&local)
            }
            None => None,
        };
        // seq -> (what, file, line, checkpoint) of every signed statement.
        let mut signed: BTreeMap<u64, Vec<(&'static str, u64, &Checkpoint)>> = BTreeMap::new();
        if !cps.is_empty() || head.is_some() {
            let key = key.ok_or_else(|| DataError::AuditKey {
                path: self.public_key_path(),
                reason: "missing, but the log has signed checkpoints: restore it or give \
                         --public-key"
                    .into(),
            })?;
            let mut last = None;
            for (i, cp) in cps.iter().enumerate() {
                let line = i as u64 + 1;
                let bad = |reason: String| DataError::AuditCheckpoint {
                    path: self.checkpoints_path.clone(),
                    line,
                    seq: cp.seq,
                    reason,
                };
                cp.check(key).map_err(bad)?;
                if last.is_some_and(|l| cp.seq < l) {
                    return Err(bad("seq goes backwards (checkpoints reordered)".into()));
                }
                last = Some(cp.seq);
                signed
                    .entry(cp.seq)
                    .or_default()
                    .push(("checkpoint", line, cp));
            }
            if let Some(h) = &head {
                h.check(key).map_err(|reason| DataError::AuditCheckpoint {
                    path: self.head_path.clone(),
                    line: 1,
                    seq: h.seq,
                    reason,
                })?;
                signed.entry(h.seq).or_default().push(("head", 1, h));
            }
        }

        #[derive(Deserialize)]
        struct Link {
            v: u32,
            seq: u64,
            prev: String,
            time: String,
        }
        let mut prev = GENESIS.to_string();
        let mut n = 0u64;
        let mut last_time = None;
        let mut version = AUDIT_VERSION_MIN;
        let mut last_good_cp: Option<u64> = None;
        for line in BufReader::with_capacity(1 << 20, &*f).lines() {
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
            if !(AUDIT_VERSION_MIN..=AUDIT_VERSION).contains(&link.v) {
                return Err(bad(format!("unknown version {}", link.v)));
            }
            if link.v < version {
                return Err(bad(format!(
                    "format {} after a line of format {version} (a log only moves forward)",
                    link.v
                )));
            }
            version = link.v;
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
            for (what, _, cp) in signed.get(&n).into_iter().flatten() {
                if cp.hash != hash {
                    let since = last_good_cp
                        .map(|s| format!("after seq {s}, the last signature that matched"))
                        .unwrap_or_else(|| "no earlier signature narrows it down".into());
                    return Err(bad(format!(
                        "its hash differs from the {what} signed at {}: the log was edited at or \
                         before this entry ({since}) and its chain recomputed",
                        cp.time
                    )));
                }
                last_good_cp = Some(n);
            }
            prev = hash.to_string();
            last_time = Some(link.time);
            n += 1;
        }
        if let Some((&seq, list)) = signed.iter().next_back()
            && seq >= n
        {
            let (what, _, cp) = list[0];
            return Err(DataError::AuditTruncated {
                path: self.path.clone(),
                entries: n,
                signed: seq + 1,
                what: if what == "head" {
                    "the head"
                } else {
                    "the last checkpoint"
                },
                time: cp.time.clone(),
            });
        }
        if head.is_none() && version >= 2 {
            return Err(DataError::AuditCheckpoint {
                path: self.head_path.clone(),
                line: 0,
                seq: n.saturating_sub(1),
                reason: "missing, but the log has entries of format 2, which are always signed: \
                         deleted, or a crash right after the log's first append (the next append \
                         then names the unsigned entries)"
                    .into(),
            });
        }
        let covered = head.as_ref().map_or(0, |h| h.seq + 1);
        Ok(AuditHead {
            entries: n,
            hash: prev,
            time: last_time,
            signed_head: head,
            checkpoints: cps.len() as u64,
            checkpoint: cps.last().cloned(),
            unsigned_entries: n.saturating_sub(covered),
        })
    }
}
