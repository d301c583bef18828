//! End-to-end tests: the real `tek` binary, `tek agent` as a process, real loop devices on
//! virtual bays bound to each test's own scratch files, and independent checks of the result.
//!
//! One test binary per crate (one link, one process that runs every test in parallel).

mod bench_cli;
mod board;
mod custody;
mod custody_settings;
mod demo;
mod documents;
mod e2e;
mod image_audit_policy;
mod jobs;
mod library_signal;
mod ondemand;
mod support;
mod udev;
mod units;
mod withdraw_jobs;
mod write_truth;
