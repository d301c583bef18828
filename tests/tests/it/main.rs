//! The crate's one integration-test binary: every test file is a module here, so the
//! crate's tests link once.

mod custody;
mod custody_settings;
mod e2e;
mod jobs;
mod support;
mod udev;
mod units;
mod withdraw_jobs;
mod write_truth;
