//! `tek backup ...`: key backups for the depot's backup tool (encrypted under epoch keys that
//! expire), a thin layer over [`client_data::Custody`] opened as `tek data` opens it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use agent::Depot;

use super::data::open_custody;
use super::render;

/// `tek backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write a key backup (encrypted under a new epoch key) into DIR.
    Keys {
        /// Backup directory: must exist, and be another filesystem than the state directory.
        dir: PathBuf,
        /// Allow DIR on the same filesystem as the state directory (the backup is then lost
        /// with that disk).
        #[arg(long)]
        same_filesystem: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Destroy expired key-backup epochs.
    Prune {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `tek backup` subcommand.
pub fn run(depot: &Depot, cmd: BackupCommand) -> Result<()> {
    let c = open_custody(depot)?;
    match cmd {
        BackupCommand::Keys {
            dir,
            same_filesystem,
            json,
        } => {
            let b = c
                .backup_keys(&dir, client_data::BackupOptions { same_filesystem })
                .with_context(|| format!("writing key backup to {}", dir.display()))?;
            if json {
                render::print_json(&b)?;
            } else {
                println!(
                    "{}: {}, epoch {} expires {}",
                    b.file.display(),
                    render::count(b.datasets, "key"),
                    b.epoch,
                    render::when(&b.expires)
                );
                if b.same_filesystem {
                    println!(
                        "note: --same-filesystem given: this backup is not checked to be on \
                         another filesystem than the depot state and may be lost with that disk"
                    );
                }
            }
        }
        BackupCommand::Prune { json } => {
            let gone = c.prune().context("pruning key-backup epochs")?;
            if json {
                let rows: Vec<_> = gone
                    .iter()
                    .map(|e| serde_json::json!({ "epoch": e, "destroyed": true }))
                    .collect();
                render::print_json(&rows)?;
            } else {
                match gone.len() {
                    0 => println!("no expired epochs"),
                    n => println!(
                        "destroyed {}: {}",
                        render::count(n as u64, "expired epoch"),
                        gone.join(" ")
                    ),
                }
            }
        }
    }
    Ok(())
}
