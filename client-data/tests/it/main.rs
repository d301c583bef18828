//! client-data's integration tests: custody, restore, wipe, withdrawal and the audit log, on real files and loop devices.
//!
//! One test binary per crate (one link, one process that runs every test in parallel).

mod audit;
mod common;
mod custody;
mod metadata;
mod mount;
mod ntfs;
mod ntfs_mount;
mod privilege;
mod restore_resume;
mod restore_safe;
mod restore_stall;
mod restore_target;
mod restore_unlisted;
mod tar;
mod withdraw;
