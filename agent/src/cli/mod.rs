//! The `tek` command line: one module per subcommand, each with its clap arguments and a `run`
//! function. `main.rs` only parses and dispatches.

pub mod agent;
pub mod audit;
mod board;
pub mod data;
pub mod demo;
mod docs;
pub mod image;
mod image_audit;
mod image_parts;
pub mod image_rm;
mod image_verify;
pub mod interrupt;
mod size;
pub mod status;
pub mod write;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Image, migrate and wipe on the depot bench, and prove it.
#[derive(Debug, Parser)]
#[command(
    name = "tek",
    version,
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// State root (store, staging, keys, jobs, reports, audit). Default: /var/lib/tek as root,
    /// else $XDG_DATA_HOME/tek.
    #[arg(
        long,
        global = true,
        env = "TEK_STATE",
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub state: Option<PathBuf>,
    /// Image store location (default: <state>/store).
    #[arg(
        long,
        global = true,
        env = "TEK_STORE",
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub store: Option<PathBuf>,
    /// Trusted public keys directory (default: /etc/tek/trusted-keys as root, else
    /// <state>/trusted-keys).
    #[arg(
        long,
        global = true,
        env = "TEK_TRUSTED_KEYS",
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub trusted_keys: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  tek demo                                      the whole journey on a built-in sample
  tek image import win11-pro@2024.06 win11.img.zst --sign-key maint.key --data-partition label:Windows
  tek write win11-pro@2024.06 /dev/sdb          write and verify an image onto a disk
  tek data ingest --client C-1042 --ticket T-4711 /mnt/old-disk/Users
  tek job add --ticket T-4711 --image win11-pro@2024.06 --data ds-... --bay left-dock
  tek board                                     the live bench board

Each command has its own --help; `tek man` prints the manual.";

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
    /// Print the shell completion script (e.g. `tek completions bash > /usr/share/bash-completion/completions/tek`).
    Completions(docs::CompletionsArgs),
    /// Print the man page `tek.1` (or write every page with `--dir DIR`).
    Man(docs::ManArgs),
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
            Command::Completions(_) | Command::Man(_) => true,
            Command::Write(_) | Command::Backup(_) => false,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Generated documentation needs no depot.
    match &cli.command {
        Command::Completions(a) => return docs::completions(a),
        Command::Man(a) => return docs::man(a),
        _ => {}
    }
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
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
    }
}
