//! `tek data ...` and `tek backup ...`: client data custody.

use clap::Subcommand;

use crate::Depot;

/// `tek data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// List staged datasets.
    List,
}

/// `tek backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Destroy expired key-backup epochs.
    Prune,
}

/// Runs a `tek data` subcommand.
pub fn run(_depot: &Depot, _cmd: DataCommand) -> anyhow::Result<()> {
    anyhow::bail!("tek data: not built yet")
}

/// Runs a `tek backup` subcommand.
pub fn run_backup(_depot: &Depot, _cmd: BackupCommand) -> anyhow::Result<()> {
    anyhow::bail!("tek backup: not built yet")
}
