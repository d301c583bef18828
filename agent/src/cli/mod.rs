//! The `tek` command line: one module per subcommand, each with its clap arguments and a `run`
//! function. `main.rs` only parses and dispatches.

mod agent;
mod audit;
mod backup;
mod bays;
mod board;
mod clock;
mod data;
mod data_withdrawal;
mod demo;
mod disk_contents;
mod docs;
pub mod failure;
mod image;
mod image_audit;
mod image_parts;
mod image_remote;
mod image_rm;
mod image_show;
mod image_transfer;
mod image_verify;
mod interrupt;
mod job;
mod render;
mod report;
mod size;
mod status;
mod table;
mod write;
mod write_progress;

use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgMatches, Args, Parser, Subcommand};

use ::agent::config::Config;
use ::agent::server::client::Client;

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
    Backup(backup::BackupCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run the bench agent daemon (normally started by systemd).
    Agent {
        /// Configuration file.
        #[arg(long, env = "TEK_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show the configured bays; with --discover, the disks present now and their port paths.
    Bays(bays::BaysArgs),
    /// Register, inspect, cancel and retry jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Every bay at a glance.
    Status(status::StatusArgs),
    /// The bench's live board: a tile per bay, cancel/retry/report keys (full screen).
    Board {
        #[command(flatten)]
        conn: AgentConn,
    },
    /// A job's service report (read from the depot; no agent needed).
    Report(report::ReportArgs),
    /// Run the whole journey on a built-in sample, in a temporary depot.
    Demo {
        /// A Windows-layout sample (NTFS, Recovery after C: moved to the disk's end, C: grown;
        /// needs mkntfs, and ntfs-3g for the client data).
        #[arg(long)]
        windows: bool,
    },
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
    /// `image verify` is not one: it moves corrupt chunks aside; `image export -` is.
    pub fn only_reads(&self) -> bool {
        use audit::AuditCommand as Au;
        use data::DataCommand as D;
        use image::ImageCommand as I;
        use job::JobCommand as J;
        match self {
            Command::Image(c) => match c {
                I::List { .. } | I::Show { .. } | I::Stats { .. } => true,
                // To stdout it only reads the store: `tek image export a@1 - | head -c 512`.
                I::Export { out, .. } => image_transfer::is_stdout(out),
                _ => false,
            },
            Command::Audit(c) => matches!(
                c,
                Au::Verify { .. } | Au::Show { .. } | Au::Head { .. } | Au::BreachReport { .. }
            ),
            Command::Data(c) => matches!(c, D::List { .. } | D::Show { .. } | D::Deletions { .. }),
            Command::Job(c) => matches!(c, J::List { .. } | J::Show { .. }),
            Command::Bays(_) | Command::Status(_) | Command::Report(_) => true,
            Command::Completions(_) | Command::Man(_) => true,
            Command::Agent { .. }
            | Command::Board { .. }
            | Command::Demo { .. }
            | Command::Write(_)
            | Command::Backup(_) => false,
        }
    }
}

/// What a command needs of the state root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateUse {
    /// Nothing: it talks to the agent, reads the machine, or makes its own depot (the demo).
    None,
    /// Where it is, and nothing else until the command needs the store (`tek write FILE` and
    /// `tek image audit FILE` need none; with NAME@VERSION they refuse a missing root then),
    /// or the agent, whose configuration may name another root.
    Locates,
    /// It reads (or changes) what is there: a missing root is refused, never created.
    Reads,
    /// It stores the first things of a depot (an image, a dataset, a key pair, the agent's
    /// journal): it creates a missing root, says so once, and makes it private.
    Creates,
}

impl Command {
    /// What this command needs of the state root (see [`StateUse`]).
    pub fn state_use(&self) -> StateUse {
        use data::DataCommand as D;
        use image::ImageCommand as I;
        match self {
            Command::Image(I::Import(_) | I::Keygen { dir: None, .. }) => StateUse::Creates,
            Command::Image(I::Keygen { dir: Some(_), .. } | I::Audit { .. }) => StateUse::Locates,
            Command::Data(D::Ingest { .. }) => StateUse::Creates,
            // The agent creates its root itself: its configuration may name another one.
            // `bays --discover` marks the disk the root is on, wherever it is configured.
            Command::Agent { .. } | Command::Write(_) | Command::Bays(_) | Command::Job(_) => {
                StateUse::Locates
            }
            Command::Image(_)
            | Command::Data(_)
            | Command::Backup(_)
            | Command::Audit(_)
            | Command::Report(_) => StateUse::Reads,
            Command::Status(_)
            | Command::Board { .. }
            | Command::Demo { .. }
            | Command::Completions(_)
            | Command::Man(_) => StateUse::None,
        }
    }
}

/// Whether the parsed command line asks for JSON output (`--json` on the command, wherever
/// it sits), so that a failure is reported as the JSON error object too.
pub fn wants_json(matches: &ArgMatches) -> bool {
    let mut m = matches;
    loop {
        if matches!(m.try_get_one::<bool>("json"), Ok(Some(true))) {
            return true;
        }
        match m.subcommand() {
            Some((_, sub)) => m = sub,
            None => return false,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let Cli {
        state,
        store,
        trusted_keys,
        command,
    } = cli;
    let mut depot = match command.state_use() {
        StateUse::Reads => ::agent::Depot::open(state, store)?,
        StateUse::Creates => {
            let (depot, created) = ::agent::Depot::create(state, store)?;
            if created {
                eprintln!("tek: created state root {}", depot.root().display());
            }
            depot
        }
        StateUse::Locates => ::agent::Depot::locate(state, store)?,
        StateUse::None => return run_without_depot(command),
    };
    if let Some(dir) = trusted_keys {
        depot = depot.with_trusted_keys(dir);
    }
    match command {
        Command::Image(c) => image::run(&depot, c),
        Command::Write(a) => write::run(&depot, a),
        Command::Data(c) => data::run(&depot, c),
        Command::Backup(c) => backup::run(&depot, c),
        Command::Audit(c) => audit::run(&depot, c),
        Command::Report(a) => report::run(&depot, a),
        Command::Job(c) => job::run(&depot, c),
        Command::Agent { config } => agent::run(&depot, config.as_deref()),
        Command::Bays(a) => bays::run(&depot, a),
        command => run_without_depot(command),
    }
}

/// The commands that need no state root: they talk to the agent or read the machine.
fn run_without_depot(command: Command) -> Result<()> {
    match command {
        Command::Status(a) => status::run(a),
        Command::Board { conn } => board::run(&conn.socket()?),
        Command::Demo { windows } => demo::run(windows),
        Command::Completions(a) => docs::completions(&a),
        Command::Man(a) => docs::man(&a),
        other => unreachable!("{other:?} needs a state root"),
    }
}

/// Where to find the agent: its config file (for the socket path) or the socket itself.
#[derive(Debug, Clone, Args)]
pub struct AgentConn {
    /// Agent configuration file (default /etc/tek/agent.toml, if it exists).
    #[arg(long, env = "TEK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket (default: the config's `socket`, else /run/tek/agent.sock).
    #[arg(long, env = "TEK_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl AgentConn {
    pub(crate) fn config(&self) -> Result<Config> {
        Config::load_or_default(self.config.as_deref())
    }
    pub(crate) fn socket(&self) -> Result<PathBuf> {
        match &self.socket {
            Some(s) => Ok(s.clone()),
            None => Ok(self.config()?.socket),
        }
    }
    pub(crate) fn client(&self) -> Result<Client> {
        Client::connect(&self.socket()?)
    }
}
