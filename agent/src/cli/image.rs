//! `tek image ...`: the image library.

use clap::Subcommand;

use crate::Depot;

/// `tek image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List stored images.
    List,
}

/// Runs a `tek image` subcommand.
pub fn run(_depot: &Depot, _cmd: ImageCommand) -> anyhow::Result<()> {
    anyhow::bail!("tek image: not built yet")
}
