//! The `tek` command line: one module per subcommand, each with its clap arguments and a `run`
//! function. `main.rs` only parses and dispatches.

pub mod agent;
pub mod audit;
pub mod data;
pub mod demo;
pub mod image;
mod image_audit;
pub mod image_rm;
mod image_verify;
pub mod interrupt;
mod size;
pub mod status;
pub mod write;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// tek: image, migrate and wipe on the depot bench, and prove it.
#[derive(Debug, Parser)]
#[command(name = "tek", version, about, propagate_version = true)]
pub struct Cli {
    /// State root (store, staging, keys, jobs, reports, audit). Default: /var/lib/tek as root,
    /// else $XDG_DATA_HOME/tek.
    #[arg(long, global = true, env = "TEK_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Image store location (default: <state>/store).
    #[arg(long, global = true, env = "TEK_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Trusted public keys directory (default: /etc/tek/trusted-keys as root, else
    /// <state>/trusted-keys).
    #[arg(long, global = true, env = "TEK_TRUSTED_KEYS", value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the image library: import, sign, list, show, verify, export, retire.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Write an image onto one or more disks or files, verified.
    Write(write::WriteArgs),
    /// Client data custody: ingest, restore, wipe, withdraw, deletions.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Key backups for the depot's backup tool.
    #[command(subcommand)]
    Backup(data::BackupCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run the bench agent daemon, and talk to it.
    #[command(flatten)]
    Agent(agent::AgentCommand),
}

impl Command {
    /// Whether the command only reads and prints (lists, shows, reports, the audit log): such a
    /// command may be killed by SIGPIPE when its reader goes away (`tek image list | head -1`),
    /// quietly, as coreutils are. Every other command keeps Rust's default (SIGPIPE ignored), so
    /// a closed pipe never kills one in the middle of changing a disk, the store or custody.
    /// `image verify` is not one: it moves corrupt chunks aside.
    pub fn only_reads(&self) -> bool {
        use agent::{AgentCommand as A, JobCommand as J};
        use audit::AuditCommand as Au;
        use data::DataCommand as D;
        use image::ImageCommand as I;
        match self {
            Command::Image(c) => matches!(c, I::List { .. } | I::Show { .. } | I::Stats { .. }),
            Command::Audit(c) => matches!(
                c,
                Au::Verify { .. } | Au::Show { .. } | Au::Head { .. } | Au::BreachReport { .. }
            ),
            Command::Data(c) => matches!(c, D::List { .. } | D::Show { .. } | D::Deletions { .. }),
            Command::Agent(c) => matches!(
                c,
                A::Bays { .. }
                    | A::Status { .. }
                    | A::Report { .. }
                    | A::Job(J::List { .. } | J::Show { .. })
            ),
            Command::Write(_) | Command::Backup(_) => false,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut depot = ::agent::Depot::resolve(cli.state, cli.store)?;
    if let Some(dir) = cli.trusted_keys {
        depot = depot.with_trusted_keys(dir);
    }
    match cli.command {
        Command::Image(c) => image::run(&depot, c),
        Command::Write(a) => write::run(&depot, a),
        Command::Data(c) => data::run(&depot, c),
        Command::Backup(c) => data::run_backup(&depot, c),
        Command::Audit(c) => audit::run(&depot, c),
        Command::Agent(c) => agent::run(&depot, c),
    }
}
