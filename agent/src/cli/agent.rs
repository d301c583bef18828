//! `tek agent`, `tek bays`, `tek job`, `tek status`, `tek report`, `tek demo`: the daemon and
//! the commands that talk to it.

use clap::Subcommand;

use crate::Depot;

/// Daemon-related top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the whole journey on a built-in sample, in a temporary depot.
    Demo,
}

/// Runs a daemon-related subcommand.
pub fn run(_depot: &Depot, _cmd: AgentCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
