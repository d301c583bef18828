//! `tek write IMAGE TARGET...`: the hands-on imaging command.

use clap::Args;

use crate::Depot;

/// Arguments of `tek write`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// NAME@VERSION from the store, or a path to a raw or zstd image.
    pub image: String,
}

/// Runs `tek write`.
pub fn run(_depot: &Depot, _args: WriteArgs) -> anyhow::Result<()> {
    anyhow::bail!("tek write: not built yet")
}
