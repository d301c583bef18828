//! The imager's integration tests: writes onto real loop devices, faults, claims, eligibility.
//!
//! One test binary per crate (one link, one process that runs every test in parallel).

mod claim;
mod decoded_files;
mod eligibility;
mod layout;
mod loop_faults;
mod mounted_grow;
