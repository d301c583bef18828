//! The restore journal, `<staging>/<dataset>/restore-journal.json`: which entries of the
//! dataset a restore into a given target may already have created, so that a re-run (the
//! agent resumes a job at its restore step after a crash, a kill or an unplug) can replace
//! tek's own partial files without `--replace-existing`, while anything else already in the
//! target still refuses the restore.
//!
//! Format 1 (JSON; no file names, only entry numbers and the target's identity):
//! ```json
//! {"format": 1, "targets": [{"identity": "fsid 3f1c... dir inode 12 born 1764693600.123456789",
//!   "label": "/tmp/tek-mnt-Ab12/Users/Public/Documents/Recovered",
//!   "entries_below": 4096, "merged_dirs": [0, 3]}]}
//! ```
//! - `identity`: the target directory as the filesystem knows it, stable across mounts: the
//!   filesystem id (`statvfs` `f_fsid`, from the UUID on ext4/xfs/btrfs; 0 on FUSE), the
//!   directory's inode number (the MFT record on NTFS) and its birth time (statx, or ntfs-3g's
//!   `system.ntfs_crtime_be`). `label` is the path it was opened as, for people only.
//! - `entries_below` (K): entries `0..K` may have been created by restores of this dataset into
//!   this target. It is written and fsync'd *before* entry K-4096.. is created (one fsync per
//!   4096 entries), so a crash never leaves an entry of ours beyond K.
//! - `merged_dirs`: directories of the dataset (entry numbers below K) that existed in the target
//!   before the first restore: a cleanup never removes them.
//!
//! A target's record is removed once a failed restore into it was cleaned up completely. A
//! verified restore keeps it (K = every entry) until the dataset is wiped: the agent journals
//! the verification only after the restore returns, and a crash in between redoes the restore,
//! which must take its own verified copy as its own, not as conflicts. The wipe removes the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, io};
use crate::target::RestoreTarget;

/// The file's name in the dataset's directory.
pub(crate) const JOURNAL: &str = "restore-journal.json";
/// `entries_below` advances in steps of this many entries.
pub(super) const STEP: u64 = 4096;
const FORMAT: u32 = 1;

/// One target's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TargetRecord {
    pub identity: String,
    pub label: String,
    pub entries_below: u64,
    pub merged_dirs: Vec<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    format: u32,
    targets: Vec<TargetRecord>,
}

/// The journal of one dataset, loaded.
#[derive(Debug)]
pub(super) struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Loads `<dir>/restore-journal.json` (none yet: empty).
    pub(super) fn load(dir: &Path) -> Result<Journal, DataError> {
        let path = dir.join(JOURNAL);
        let file = match std::fs::read(&path) {
            Ok(b) => {
                let f: File = serde_json::from_slice(&b).map_err(|e| DataError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if f.format != FORMAT {
                    return Err(DataError::Corrupt {
                        path,
                        reason: format!("unknown format {}", f.format),
                    });
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File {
                format: FORMAT,
                targets: Vec::new(),
            },
            Err(e) => return Err(io("reading", &path)(e)),
        };
        Ok(Journal { path, file })
    }

    /// The record of the target with this identity.
    pub(super) fn get(&self, identity: &str) -> Option<&TargetRecord> {
        self.file.targets.iter().find(|t| t.identity == identity)
    }

    /// Stores `rec` (replacing the record of its target) durably.
    pub(super) fn put(&mut self, rec: &TargetRecord) -> Result<(), DataError> {
        match self
            .file
            .targets
            .iter_mut()
            .find(|t| t.identity == rec.identity)
        {
            Some(t) => *t = rec.clone(),
            None => self.file.targets.push(rec.clone()),
        }
        self.save()
    }

    /// Drops the record of the target `identity` (the file with its last record).
    pub(super) fn remove(&mut self, identity: &str) -> Result<(), DataError> {
        let before = self.file.targets.len();
        self.file.targets.retain(|t| t.identity != identity);
        if self.file.targets.len() == before {
            return Ok(());
        }
        if self.file.targets.is_empty() {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &self.path)(e)),
            }
            return crate::keystore::sync_dir(self.path.parent().expect("in a directory"));
        }
        self.save()
    }

    fn save(&self) -> Result<(), DataError> {
        let text = serde_json::to_vec_pretty(&self.file).expect("serialize journal");
        crate::keystore::write_private(&self.path, &text)
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
    fn records_are_kept_per_target_and_the_file_goes_with_the_last() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::load(d.path()).unwrap();
        assert!(j.get("a").is_none());
        let mut a = TargetRecord {
            identity: "a".into(),
            label: "/x".into(),
            entries_below: 4096,
            merged_dirs: vec![0],
        };
        j.put(&a).unwrap();
        a.entries_below = 8192;
        j.put(&a).unwrap();
        j.put(&TargetRecord {
            identity: "b".into(),
            ..a.clone()
        })
        .unwrap();
        let j2 = Journal::load(d.path()).unwrap();
        assert_eq!(j2.get("a"), Some(&a));
        assert!(j2.get("b").is_some());
        j.remove("a").unwrap();
        j.remove("b").unwrap();
        assert!(!d.path().join(JOURNAL).exists());
        std::fs::write(d.path().join(JOURNAL), b"{\"format\": 9, \"targets\": []}").unwrap();
        assert!(matches!(
            Journal::load(d.path()),
            Err(DataError::Corrupt { .. })
        ));
    }
}
