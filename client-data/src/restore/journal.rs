//! The restore journal, `<staging>/<dataset>/restore-journal.json` and one identity log per
//! target: which entries of the dataset a restore into a given target created, so that a
//! re-run (the agent resumes a job at its restore step after a crash, a kill or an unplug)
//! can replace tek's own partial files without `--replace-existing`, while anything else in
//! the target, including a file someone put at a path tek was about to use, still refuses it.
//!
//! Format 2 (JSON; no file names, only entry numbers and the target's identity):
//! ```json
//! {"format": 2, "targets": [{"identity": "fsid 3f1c... dir inode 12 born 1764693600.123456789",
//!   "label": "/tmp/tek-mnt-Ab12/Users/Public/Documents/Recovered",
//!   "intents_below": 4096, "log": "restore-journal-9c1f0e7a2b3d4c5e.log"}]}
//! ```
//! - `identity`: the target directory as the filesystem knows it, stable across mounts: the
//!   filesystem id (`statvfs` `f_fsid`, from the UUID on ext4/xfs/btrfs; 0 on FUSE), the
//!   directory's inode number (the MFT record on NTFS) and its birth time (statx, or ntfs-3g's
//!   `system.ntfs_crtime_be`). `label` is the path it was opened as, for people only.
//! - `intents_below` (K): the intent. Entries `0..K` may have been created by restores of this
//!   dataset into this target. Written and fsync'd (with the log) *before* entry K-4096.. is
//!   created, so no entry of ours is ever beyond K.
//! - `log`: the identity log (`log` below), in the same directory.
//!
//! The identity log is text, one line per entry created, appended right after the entry was
//! made: at its create where its identity holds from then on (a birth time; on ntfs-3g the
//! NTFS creation time, which tek sets to its final value right after the create, before any
//! data, and which nothing later changes), else once tek has set everything it sets on it (a
//! directory again after its metadata, a hard link's inode with the link). The format of a
//! line (unchanged since format 2): `<entry> <inode> b <sec>.<nsec>` where the
//! filesystem reports a birth time (statx), else `<entry> <inode> c <sec>.<nsec> <size>` (status
//! change time and size: ext4 with 128-byte inodes), or on ntfs-3g (no birth time through
//! FUSE, and a status change time that is not stable) `<entry> <inode> n <crtime>` (its NTFS
//! creation time, `system.ntfs_crtime_be`, 100 ns units). One `write(2)` per
//! line, so a SIGKILL loses none; fsync'd with each K step and at the end, so a power loss
//! loses at most the lines of one step. A line without its newline (torn) is ignored.
//!
//! An entry is tek's own on a re-run only when it is below K, the log lists it, and what
//! stands at its path now has the identity the log recorded last for that inode. An entry
//! below K after the entry of the log's last line, unproven (a run appends its lines in entry
//! order: a kill loses at most the line of the entry being made, a power loss the lines since
//! the last fsync, always a suffix; a line of such an entry is an earlier run's), is replaced as tek's interrupted work only when
//! what stands there loses nothing of anyone's ("loses nothing" rule, `unlisted`): a file with
//! one link whose bytes are a prefix of (or equal to) the staged file's, an empty one included,
//! with no `user.*` attribute (alternate data stream) the staged entry lacks or holds with
//! another value; a symlink with the staged text; a hard link to the inode the log last
//! recorded, standing at the link's target too. Anything else is a conflict. A format-1
//! journal (K only) proves nothing: its target's entries count as conflicts, and the message
//! says so.
//!
//! A target's record (and its log) is removed once a failed restore into it was cleaned up
//! completely. A verified restore keeps it (K = every entry) until the dataset is wiped: the
//! agent journals the verification only after the restore returns, and a crash in between
//! redoes the restore, which must take its own verified copy as its own, not as conflicts.
//! The wipe removes the files ([`remove_all`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, io};
use crate::target::RestoreTarget;

/// The file's name in the dataset's directory.
pub(crate) const JOURNAL: &str = "restore-journal.json";
/// Identity logs are `restore-journal-<16 hex digits>.log`.
const LOG_PREFIX: &str = "restore-journal-";
/// `intents_below` advances in steps of this many entries.
pub(super) const STEP: u64 = 4096;
const FORMAT: u32 = 2;

mod ident;
pub(super) use ident::Ident;

/// One target's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetRecord {
    pub identity: String,
    pub label: String,
    pub intents_below: u64,
    pub log: String,
    /// Loaded from a format-1 journal: no identities, so nothing of it is provably tek's.
    #[serde(skip)]
    pub format1: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV2 {
    format: u32,
    targets: Vec<TargetRecord>,
}

/// A format-1 record: K and the directories merged before the first run.
#[derive(Deserialize)]
struct RecordV1 {
    identity: String,
    label: String,
    entries_below: u64,
    #[allow(dead_code)]
    merged_dirs: Vec<u64>,
}

#[derive(Deserialize)]
struct FileV1 {
    targets: Vec<RecordV1>,
}

#[derive(Deserialize)]
struct Head {
    format: u32,
}

/// The journal of one dataset, loaded.
#[derive(Debug)]
pub(super) struct Journal {
    path: PathBuf,
    file: FileV2,
}

fn corrupt(path: &Path, reason: impl ToString) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Journal {
    /// Loads `<dir>/restore-journal.json` (none yet: empty; format 1: its records marked).
    pub(super) fn load(dir: &Path) -> Result<Journal, DataError> {
        let path = dir.join(JOURNAL);
        let b = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Journal {
                    path,
                    file: FileV2 {
                        format: FORMAT,
                        targets: Vec::new(),
                    },
                });
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let head: Head = serde_json::from_slice(&b).map_err(|e| corrupt(&path, e))?;
        let file = match head.format {
            FORMAT => serde_json::from_slice(&b).map_err(|e| corrupt(&path, e))?,
            1 => {
                let v1: FileV1 = serde_json::from_slice(&b).map_err(|e| corrupt(&path, e))?;
                FileV2 {
                    format: FORMAT,
                    targets: v1
                        .targets
                        .into_iter()
                        .map(|t| TargetRecord {
                            identity: t.identity,
                            label: t.label,
                            intents_below: t.entries_below,
                            log: String::new(),
                            format1: true,
                        })
                        .collect(),
                }
            }
            f => return Err(corrupt(&path, format!("unknown format {f}"))),
        };
        // A log is named after its target (`fresh`): any other name (a path elsewhere, another
        // target's log) is not one this journal wrote, and tek would append to it, trust its
        // lines and delete it.
        for t in &file.targets {
            if !t.log.is_empty() && t.log != Journal::fresh(&t.identity).log {
                return Err(corrupt(
                    &path,
                    format!(
                        "the record of target {:?} names the identity log {:?}, not the one named                          after its target",
                        t.label, t.log
                    ),
                ));
            }
        }
        Ok(Journal { path, file })
    }

    fn dir(&self) -> &Path {
        self.path.parent().expect("in a directory")
    }

    /// The record of the target with this identity.
    pub(super) fn get(&self, identity: &str) -> Option<&TargetRecord> {
        self.file.targets.iter().find(|t| t.identity == identity)
    }

    /// A new record for the target `identity` (its log named after it).
    pub(super) fn fresh(identity: &str) -> TargetRecord {
        let h = blake3::hash(identity.as_bytes());
        TargetRecord {
            identity: identity.to_string(),
            log: format!("{LOG_PREFIX}{}.log", hex::encode(&h.as_bytes()[..8])),
            ..Default::default()
        }
    }

    /// What the log of `rec` proves tek made (nothing for a format-1 record or a log missing).
    pub(super) fn made(&self, rec: &TargetRecord) -> Result<Made, DataError> {
        if rec.format1 || rec.log.is_empty() {
            return Ok(Made::default());
        }
        let path = self.dir().join(&rec.log);
        let read = || -> std::io::Result<Vec<u8>> {
            let mut b = Vec::new();
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?
                .read_to_end(&mut b)?;
            Ok(b)
        };
        match read() {
            Ok(b) => Ok(Made::parse(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Made::default()),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    /// Opens the log of `rec` to append to (`fresh`: emptied first, a record just made must
    /// not inherit lines of an older one).
    pub(super) fn open_log(&self, rec: &TargetRecord, fresh: bool) -> Result<Log, DataError> {
        let path = self.dir().join(&rec.log);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("opening", &path))?;
        if fresh {
            file.set_len(0).map_err(io("emptying", &path))?;
        }
        Ok(Log {
            file,
            path,
            line: Vec::with_capacity(64),
        })
    }

    /// Stores `rec` (replacing the record of its target) durably.
    pub(super) fn put(&mut self, rec: &TargetRecord) -> Result<(), DataError> {
        let mut rec = rec.clone();
        rec.format1 = false;
        match self
            .file
            .targets
            .iter_mut()
            .find(|t| t.identity == rec.identity)
        {
            Some(t) => *t = rec,
            None => self.file.targets.push(rec),
        }
        self.save()
    }

    /// Drops the record of the target `identity` and its log (the file with its last record).
    pub(super) fn remove(&mut self, identity: &str) -> Result<(), DataError> {
        let Some(i) = self
            .file
            .targets
            .iter()
            .position(|t| t.identity == identity)
        else {
            return Ok(());
        };
        let rec = self.file.targets.remove(i);
        if self.file.targets.is_empty() {
            remove_file(&self.path)?;
        } else {
            self.save()?;
        }
        if !rec.log.is_empty() {
            remove_file(&self.dir().join(&rec.log))?;
        }
        crate::keystore::sync_dir(self.dir())
    }

    fn save(&self) -> Result<(), DataError> {
        let text = serde_json::to_vec_pretty(&self.file).expect("serialize journal");
        crate::keystore::write_private(&self.path, &text)
    }
}

fn remove_file(p: &Path) -> Result<(), DataError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", p)(e)),
    }
}

/// Removes the journal and every identity log in the dataset directory `dir` (the wipe: they
/// have no use once the data is gone). Best effort.
pub(crate) fn remove_all(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(JOURNAL));
    if let Ok(rd) = std::fs::read_dir(dir) {
        for de in rd.flatten() {
            let name = de.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(LOG_PREFIX) && name.ends_with(".log") {
                let _ = std::fs::remove_file(de.path());
            }
        }
    }
}

/// The identity log being appended to.
#[derive(Debug)]
pub(super) struct Log {
    file: File,
    path: PathBuf,
    line: Vec<u8>,
}

impl Log {
    /// Records that entry `n` is `id` (one write, no fsync: see the module doc).
    pub(super) fn record(&mut self, n: u64, id: &Ident) -> Result<(), DataError> {
        self.line.clear();
        let _ = match id {
            Ident::Born { ino, at } => writeln!(self.line, "{n} {ino} b {}.{:09}", at.0, at.1),
            Ident::Created { ino, at } => writeln!(self.line, "{n} {ino} n {at}"),
            Ident::Changed { ino, at, size } => {
                writeln!(self.line, "{n} {ino} c {}.{:09} {size}", at.0, at.1)
            }
        };
        self.file
            .write_all(&self.line)
            .map_err(io("appending to", &self.path))
    }

    /// Makes every line recorded so far durable.
    pub(super) fn sync(&self) -> Result<(), DataError> {
        self.file.sync_data().map_err(io("syncing", &self.path))
    }
}

/// What an identity log proves tek made.
#[derive(Debug, Default)]
pub(super) struct Made {
    /// Entry -> the inode it was made as.
    by_entry: HashMap<u64, u64>,
    /// Inode -> its last recorded identity.
    by_ino: HashMap<u64, Ident>,
    /// The entry of the log's last complete line: where the latest run stopped journaling
    /// (a run appends its lines in entry order, from entry 0 again after an earlier one).
    last: Option<u64>,
}

impl Made {
    fn parse(b: &[u8]) -> Made {
        let mut m = Made::default();
        // Complete lines only: a torn last line proves nothing.
        let end = b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        for line in b[..end].split(|&c| c == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(n), Some(id)) = (
                fields.first().and_then(|n| n.parse::<u64>().ok()),
                fields.get(1..).and_then(Ident::parse),
            ) else {
                continue;
            };
            m.by_entry.insert(n, id.ino());
            m.last = Some(n);
            m.by_ino.insert(id.ino(), id);
        }
        m
    }

    /// True when `n` is the entry after the last one listed: the one a killed run was most
    /// likely writing.
    pub(super) fn in_flight(&self, n: u64) -> bool {
        self.last.is_some_and(|l| n == l + 1)
    }

    /// True when `n` is in the lost suffix: after the entry of the log's last line (lines
    /// are appended in entry order, so a kill or a power loss loses only lines of these;
    /// a line of `n` there is an earlier run's, of an inode the latest run replaced).
    pub(super) fn unlisted_tail(&self, n: u64) -> bool {
        self.last.is_none_or(|l| n > l)
    }

    /// True when `now` is the identity the log recorded last for its inode.
    pub(super) fn knows(&self, now: &Ident) -> bool {
        self.by_ino.get(&now.ino()) == Some(now)
    }

    /// True when the log lists entry `n` and `now` is the identity it recorded last for
    /// that entry's inode: what stands there is what tek made.
    pub(super) fn proves(&self, n: u64, now: &Ident) -> bool {
        self.by_entry.get(&n) == Some(&now.ino()) && self.by_ino.get(&now.ino()) == Some(now)
    }
}

/// The identity of the target directory (see the module doc).
pub(super) fn identity(target: &RestoreTarget) -> String {
    use std::os::unix::fs::MetadataExt;
    use xattr::FileExt;
    let dir = target.dir();
    #[allow(clippy::unnecessary_cast)] // c_ulong
    let fsid = nix::sys::statvfs::fstatvfs(dir).map_or(0, |s| s.filesystem_id() as u64);
    let Ok(m) = dir.metadata() else {
        return format!("fsid {fsid:016x} path {}", target.label().display());
    };
    let born = match m.created() {
        Ok(t) => t.duration_since(std::time::UNIX_EPOCH).map_or_else(
            |_| "?".into(),
            |d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        ),
        Err(_) => match dir.get_xattr(crate::xattrs::NTFS_CRTIME) {
            Ok(Some(v)) => hex::encode(v),
            _ => "unknown".into(),
        },
    };
    format!("fsid {fsid:016x} dir inode {} born {born}", m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_per_target_and_the_files_go_with_the_last() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::load(d.path()).unwrap();
        assert!(j.get("a").is_none());
        let mut a = Journal::fresh("a");
        a.label = "/x".into();
        a.intents_below = 4096;
        j.put(&a).unwrap();
        let mut log = j.open_log(&a, true).unwrap();
        log.record(3, &Ident::Born { ino: 7, at: (5, 6) }).unwrap();
        log.sync().unwrap();
        a.intents_below = 8192;
        j.put(&a).unwrap();
        j.put(&Journal::fresh("b")).unwrap();
        let j2 = Journal::load(d.path()).unwrap();
        assert_eq!(j2.get("a"), Some(&a));
        assert!(j2.get("b").is_some());
        let made = j2.made(&a).unwrap();
        assert!(made.proves(3, &Ident::Born { ino: 7, at: (5, 6) }));
        assert!(!made.proves(3, &Ident::Born { ino: 7, at: (5, 7) }));
        assert!(!made.proves(4, &Ident::Born { ino: 7, at: (5, 6) }));
        j.remove("a").unwrap();
        assert!(!d.path().join(&a.log).exists());
        j.remove("b").unwrap();
        assert!(!d.path().join(JOURNAL).exists());
        std::fs::write(d.path().join(JOURNAL), b"{\"format\": 9, \"targets\": []}").unwrap();
        assert!(matches!(
            Journal::load(d.path()),
            Err(DataError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_record_naming_another_log_is_refused_and_a_symlinked_log_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim.log");
        std::fs::write(&victim, b"precious\n").unwrap();
        let mut j = Journal::load(d.path()).unwrap();
        let a = Journal::fresh("a");
        j.put(&a).unwrap();
        // A log named elsewhere (an absolute path, a name of another target's): refused as
        // corrupt at load, before anything is read, appended or removed.
        for log in [
            victim.to_str().unwrap().to_string(),
            Journal::fresh("b").log,
        ] {
            let mut forged = a.clone();
            forged.log = log;
            let text = serde_json::to_vec(&FileV2 {
                format: FORMAT,
                targets: vec![forged],
            })
            .unwrap();
            std::fs::write(d.path().join(JOURNAL), text).unwrap();
            let e = Journal::load(d.path()).unwrap_err();
            assert!(
                matches!(&e, DataError::Corrupt { reason, .. } if reason.contains("identity log")),
                "{e}"
            );
        }
        // The right name, but a symlink to somewhere else: neither read nor appended to.
        j.put(&a).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join(&a.log)).unwrap();
        let j = Journal::load(d.path()).unwrap();
        assert!(j.made(&a).is_err());
        assert!(j.open_log(&a, false).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    }

    #[test]
    fn a_format_1_journal_proves_nothing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(JOURNAL),
            br#"{"format": 1, "targets": [{"identity": "a", "label": "/x",
                "entries_below": 4096, "merged_dirs": [0]}]}"#,
        )
        .unwrap();
        let j = Journal::load(d.path()).unwrap();
        let rec = j.get("a").unwrap();
        assert!(rec.format1);
        assert_eq!(rec.intents_below, 4096);
        assert!(j.made(rec).unwrap().by_entry.is_empty());
    }

    #[test]
    fn the_last_identity_of_an_inode_counts_and_torn_lines_are_ignored() {
        let m = Made::parse(b"0 5 c 10.000000001 0\n1 6 c 11.5 3\n0 5 c 12.000000000 0\n2 9 b 1");
        let now = Ident::Changed {
            ino: 5,
            at: (12, 0),
            size: 0,
        };
        assert!(m.proves(0, &now));
        // An earlier identity of the same inode (a hard link changed its ctime since).
        let old = Ident::Changed {
            ino: 5,
            at: (10, 1),
            size: 0,
        };
        assert!(!m.proves(0, &old));
        assert!(m.proves(
            1,
            &Ident::Changed {
                ino: 6,
                at: (11, 5),
                size: 3
            }
        ));
        assert!(!m.proves(2, &Ident::Born { ino: 9, at: (1, 0) }));
    }

    #[test]
    fn the_lost_suffix_starts_after_the_latest_runs_last_line() {
        // Run 1 journaled 0..=5; run 2 started over and journaled 0..=2 (new inodes).
        let m = Made::parse(
            b"0 1 b 1.0\n1 2 b 1.0\n2 3 b 1.0\n3 4 b 1.0\n4 5 b 1.0\n5 6 b 1.0\n\
                              0 11 b 2.0\n1 12 b 2.0\n2 13 b 2.0\n",
        );
        assert!(!m.unlisted_tail(2));
        // Entry 3 has run 1's line, but run 2 was writing it: in the lost suffix.
        assert!(m.unlisted_tail(3));
        assert!(m.in_flight(3));
        // Run 1's entry 4 is still proved by its line.
        assert!(m.proves(4, &Ident::Born { ino: 5, at: (1, 0) }));
        assert!(Made::default().unlisted_tail(0));
    }
}
