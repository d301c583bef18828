//! The agent's integration tests: the `tek` binary and the daemon library, on real loop devices.
//!
//! One test binary per crate (one link, one process that runs every test in parallel).

mod agent_daemon;
mod audit_cli;
mod bench_cmds;
mod common;
mod data_cli;
mod hotplug;
mod image_audit_cli;
mod image_cli;
mod json_shape;
mod pipes;
mod report_cli;
mod restore_config;
mod socket_limits;
mod state_root;
mod write_cli;
mod write_signals;
mod write_truth;
