//! The one error type of the crate: every variant says what was being done, to what.

use std::path::PathBuf;

mod restore;
pub use restore::{Cleanup, Conflicts};

/// Errors of client data custody.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing ciphertext of", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The dataset does not exist (or was never ingested here).
    #[error("dataset {0} not found")]
    NotFound(String),
    /// The dataset is being worked on by another process or thread.
    #[error("dataset {0} is locked by another operation (restore, wipe or withdrawal in progress)")]
    Locked(String),
    /// A wipe was asked for a dataset with no verified migration, without `--force --reason`.
    #[error(
        "refusing to wipe dataset {0}: it has no verified migration (use --force --reason TEXT)"
    )]
    NotMigrated(String),
    /// The dataset is not in a state that allows the operation.
    #[error("dataset {id} is {state}: cannot {action}")]
    BadState {
        /// The dataset.
        id: String,
        /// Its state.
        state: String,
        /// What was asked.
        action: &'static str,
    },
    /// The key-encryption key file is missing although wrapped keys exist.
    #[error(
        "key-encryption key {0} is missing but wrapped dataset keys exist: restore it from its \
         safe place (nothing was deleted)"
    )]
    KekMissing(PathBuf),
    /// The key-encryption key is malformed or does not unwrap a dataset key.
    #[error("key-encryption key {path}: {reason} (nothing was deleted)")]
    KekInvalid {
        /// The KEK file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key-encryption key file may be read or written by group or others.
    #[error(
        "key-encryption key {path} has mode {mode:04o}: group or others may read or write it; \
         refusing to use it (chmod 600 it, and find out who could read it)"
    )]
    KekExposed {
        /// The KEK file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A new dataset's id is already in use (its directory or wrapped key exists); nothing of
    /// the existing dataset was touched.
    #[error("dataset id {0} is already taken; nothing was changed (try again)")]
    IdTaken(String),
    /// Ciphertext or manifest failed authentication.
    #[error("dataset {id}: {what} failed authentication ({detail}); refusing to use it")]
    Tampered {
        /// The dataset.
        id: String,
        /// "ciphertext", "manifest", "wrapped key", ...
        what: &'static str,
        /// Where, e.g. "segment 12" or "MAC mismatch".
        detail: String,
    },
    /// The source (directory or tar archive) is unusable or hostile.
    #[error("reading source {source_path}: entry {entry}: {reason}")]
    BadSource {
        /// The source path.
        source_path: PathBuf,
        /// Entry number (0-based) in the source.
        entry: u64,
        /// What is wrong.
        reason: String,
    },
    /// An archive's declared content would not fit in staging: refused before that entry was
    /// written, and the partial dataset and its key removed.
    #[error(
        "reading source {source_path}: entry {entry} brings the declared content to {needed} \
         bytes (with encryption overhead), but staging {staging} has {available} bytes free; \
         nothing was kept"
    )]
    StagingFull {
        /// The source path.
        source_path: PathBuf,
        /// Entry number (0-based) in the source.
        entry: u64,
        /// Bytes staging would need for the entries so far.
        needed: u64,
        /// Bytes free in staging when the ingest started.
        available: u64,
        /// The staging directory.
        staging: PathBuf,
    },
    /// A manifest path would escape the target or traverse a symlink.
    #[error("restoring entry {entry}: unsafe path ({reason})")]
    UnsafePath {
        /// Entry number in the manifest.
        entry: u64,
        /// What is wrong.
        reason: String,
    },
    /// The restore target cannot be used safely (a symlink or mount point on its path, not a
    /// directory, a bad `data_path`); nothing was written.
    #[error("restore target {target}: {reason}; nothing was written")]
    UnsafeTarget {
        /// The target as it was asked for.
        target: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An entry's name cannot be held by the target filesystem even after mapping (see
    /// `winnames`); nothing was written.
    #[error(
        "restoring entry {entry}: its name mapped for Windows ({mapped}) is longer than the 255 \
         UTF-16 units NTFS allows; nothing was written"
    )]
    NameTooLong {
        /// Entry number in the manifest.
        entry: u64,
        /// The mapped name.
        mapped: String,
    },
    /// The target already holds entries where the dataset puts its own (and the caller did not
    /// ask to replace them, or they are directories, which are never replaced), or folders the
    /// dataset writes into are reached through a symlink or a mount point.
    #[error("{0}")]
    TargetNotEmpty(Box<Conflicts>),
    /// Writing an entry failed mid-restore; what this restore had written was removed (or
    /// what could not be is named).
    #[error("restoring {at}{} into {target}: {cause}; {cleanup}", entry.map_or(String::new(), |n| format!(" (entry {n})")))]
    RestoreAborted {
        /// The target.
        target: PathBuf,
        /// The entry being written, if the failure was at one.
        entry: Option<u64>,
        /// Its path in the dataset, with the name it was restored as when mapped (or what was
        /// being done after the last entry).
        at: String,
        /// What failed.
        cause: Box<DataError>,
        /// What the cleanup did.
        cleanup: Box<Cleanup>,
    },
    /// The target's filesystem stopped answering during a restore and the restore gave up.
    #[error(
        "{driver} did not answer for {secs} s while tek was {doing}: gave up ({action}); the \
         device or its driver hangs"
    )]
    Stalled {
        /// "ntfs-3g (pid 123)", "the FUSE daemon of /mnt (connection 45)", "the kernel".
        driver: String,
        /// Seconds without progress.
        secs: u64,
        /// "writing Docs/a.txt", ...
        doing: String,
        /// What tek did about it ("killed it", "aborted its FUSE connection").
        action: String,
    },
    /// A client is unknown.
    #[error("unknown client {0}: no dataset was ever ingested for it")]
    UnknownClient(String),
    /// A client has withdrawn; ingest refused until reactivated.
    #[error(
        "client {0} has withdrawn (or was terminated): ingest refused until `tek data reactivate --client {0}`"
    )]
    ClientWithdrawn(String),
    /// The client withdrew while an ingest for it was running; its partial dataset was
    /// discarded (ciphertext removed, key destroyed).
    #[error(
        "client {client} withdrew while this ingest ran: the partial dataset {dataset} {}",
        if *left_behind {
            "could not be removed completely (the next `tek data` command or the withdrawal's \
             sweep removes it)"
        } else {
            "was discarded (its ciphertext and key are gone)"
        }
    )]
    WithdrawnDuringIngest {
        /// The client.
        client: String,
        /// The discarded dataset id.
        dataset: String,
        /// Something of the partial dataset was still there after discarding it.
        left_behind: bool,
    },
    /// A key-backup directory is unusable.
    #[error("backup directory {path} {reason}")]
    BackupTarget {
        /// The directory given.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// An argument is invalid (ids, dates, ...).
    #[error("invalid {what} \"{}\": {reason}", value.escape_debug())]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// A stored file (metadata, case, epoch, audit line) is malformed.
    #[error("parsing {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The audit log chain is broken.
    #[error("audit log {path}: entry {line} (seq {seq}) is bad: {reason}")]
    AuditBroken {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Sequence number expected at that line.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A signed checkpoint (or the signed head) of the audit log is bad or missing.
    #[error("audit checkpoint {path} line {line} (seq {seq}): {reason}")]
    AuditCheckpoint {
        /// The checkpoints or head file.
        path: PathBuf,
        /// 1-based line in that file.
        line: u64,
        /// The entry it covers.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The audit log is shorter than what was signed: its last entries were removed.
    #[error(
        "audit log {path} was truncated: it has {entries} entries, but {what} signed at {time} \
         covers {signed}"
    )]
    AuditTruncated {
        /// The log file.
        path: PathBuf,
        /// Entries in the log.
        entries: u64,
        /// Entries covered by the signature.
        signed: u64,
        /// "the last checkpoint" or "the head".
        what: &'static str,
        /// When that was signed.
        time: String,
    },
    /// The audit log's signing key (or its public half) is missing or unusable.
    #[error("audit key {path}: {reason}")]
    AuditKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Mounting or finding a partition failed.
    #[error("{action} {device}: {reason}")]
    Mount {
        /// What was being done.
        action: &'static str,
        /// The device or image.
        device: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The image's data-partition selector matches no partition, or more than one, on the disk.
    #[error("choosing the data partition of {device}: {source}")]
    NoPartition {
        /// The disk or image.
        device: PathBuf,
        /// Which selector, and the candidates.
        source: blockdev::selector::SelectError,
    },
    /// The partition's filesystem must not be mounted read-write (BitLocker, hibernated, dirty,
    /// unknown): nothing was mounted and nothing was changed on it.
    #[error("refusing to mount {device}: {reason}")]
    MountRefused {
        /// The partition's device node.
        device: PathBuf,
        /// Why, typed so callers can branch on it.
        reason: crate::mount::MountRefusal,
    },
    /// A loop device could not be attached or detached.
    #[error(transparent)]
    Loop(#[from] crate::loopdev::LoopError),
}

/// Shorthand for building [`DataError::Io`] in `map_err`.
pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io {
        action,
        path,
        source,
    }
}

impl DataError {
    /// True when the error is ENOSPC (disk full) somewhere underneath.
    pub fn is_disk_full(&self) -> bool {
        match self {
            DataError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            DataError::RestoreAborted { cause, .. } => cause.is_disk_full(),
            _ => false,
        }
    }

    /// True when a restore was refused (or stopped) because something stands where the
    /// dataset puts its own entries ([`DataError::TargetNotEmpty`], also found while writing).
    pub fn is_conflict(&self) -> bool {
        match self {
            DataError::TargetNotEmpty(_) => true,
            DataError::RestoreAborted { cause, .. } => cause.is_conflict(),
            _ => false,
        }
    }
}
