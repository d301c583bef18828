//! The crate's one integration-test binary: every test file is a module here, so the
//! crate's tests link once.

mod agent_daemon;
mod audit_cli;
mod common;
mod data_cli;
mod hotplug;
mod image_cli;
mod socket_limits;
mod write_cli;
mod write_signals;
mod write_truth;
