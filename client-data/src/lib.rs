//! Client data custody: ingest into encrypted staging, restore onto a mounted filesystem with
//! verification, secure wipe, withdrawals and deletion deadlines, the hash-chained audit log and
//! breach reports. Also home of the loop-device helper used to reach partitions.
//!
//! Data flow: a source (directory or tar) streams through [`ingest`](Custody::ingest) into two
//! encrypted streams (`stream`, `manifest`) under a per-dataset key wrapped by the depot KEK
//! (`keystore`). [`Custody::restore`] authenticates everything, writes beneath a target with
//! `openat2`, syncs and reads back. [`Custody::wipe`] destroys key and ciphertext and writes a
//! [`SanitizationRecord`]. Withdrawals (`withdraw`) and key-backup epochs (`backup`) bound how long
//! any copy stays readable; every step lands in the [`AuditLog`], from which `breach` answers
//! "what was affected".

pub mod audit;
pub mod backup;
pub mod batch;
pub mod breach;
pub mod cases;
pub mod custody;
pub mod dataset;
pub mod document;
pub mod error;
pub mod ingest;
pub mod keystore;
pub use blockdev::loopdev;
pub mod manifest;
pub mod mount;
pub mod ntfs;
mod ntfs_mount;
mod ownership;
pub mod proof;
mod readback;
mod records;
pub mod restore;
pub mod sparse;
pub mod stream;
mod sys;
pub mod target;
pub mod winnames;
pub mod wipe;
pub mod withdraw;
pub mod xattrs;

pub use audit::{
    AuditEvent, AuditFilter, AuditHead, AuditLog, AuditPublicKey, AuditRecord, Checkpoint,
    DeviceIdentity, EVENT_KINDS, WipeReason,
};
pub use backup::{BackupOptions, Epoch, KeyBackup, Rotation};
pub use breach::{BreachReport, KeyBackupBreach};
pub use cases::{DatasetFate, DeletionCase};
pub use custody::{Custody, CustodyConfig, CustodyPaths, DatasetListing};
pub use dataset::{DatasetId, DatasetInfo, DatasetState, Destination};
pub use document::Letterhead;
pub use error::{Cleanup, Conflicts, DataError};
pub use mount::{MountRefusal, PartitionMount};
pub use ntfs_mount::{FuseDriver, NTFS_3G_OPTIONS};
pub use proof::VerifiedRestore;
pub use records::CustodyRecords;
pub use restore::{NotRestored, RestoreOptions, RestoreResult};
pub use target::{RestoreTarget, TargetFs};
pub use winnames::NameMapping;
pub use wipe::{SanitizationRecord, WipeOptions};
pub use withdraw::{WithdrawReason, Withdrawal};
