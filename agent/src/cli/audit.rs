//! `tek audit ...`: the tamper-evident audit log.

use clap::Subcommand;

use crate::Depot;

/// `tek audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain.
    Verify,
}

/// Runs a `tek audit` subcommand.
pub fn run(_depot: &Depot, _cmd: AuditCommand) -> anyhow::Result<()> {
    anyhow::bail!("tek audit: not built yet")
}
