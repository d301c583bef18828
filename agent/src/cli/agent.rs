//! `tek agent`, `tek bays`, `tek job`, `tek status`, `tek report`, `tek demo`: the daemon and
//! the commands that talk to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use agent::Depot;
use agent::config::Config;
use agent::job::{Job, JobState};
use agent::server::client::Client;
use agent::server::protocol::{Op, Status};

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

/// Daemon-related top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the bench agent daemon (normally started by systemd).
    Agent {
        /// Configuration file.
        #[arg(long, env = "TEK_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show the configured bays; with --discover, the disks present now and their port paths.
    Bays {
        /// List the disks present now (no agent needed), to write the bay config.
        #[arg(long)]
        discover: bool,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// Register, inspect, cancel and retry jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Every bay at a glance.
    Status {
        /// Follow events live.
        #[arg(long)]
        watch: bool,
        /// Machine-readable output.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// The bench's live board: a tile per bay, cancel/retry/report keys (full screen).
    Board {
        #[command(flatten)]
        conn: AgentConn,
    },
    /// A job's service report (read from the depot; no agent needed).
    Report {
        /// Job id.
        job: String,
        /// JSON output.
        #[arg(long, conflicts_with = "html")]
        json: bool,
        /// Printable HTML page.
        #[arg(long)]
        html: bool,
    },
    /// Run the whole journey on a built-in sample, in a temporary depot.
    Demo {
        /// A Windows-layout sample (NTFS, Recovery after C: moved to the disk's end, C: grown;
        /// needs mkntfs, and ntfs-3g for the client data).
        #[arg(long)]
        windows: bool,
    },
}

/// `tek job` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Queue a job for a bay or for a disk's serial number.
    Add {
        /// Service ticket (an id: 1-64 of A-Z a-z 0-9 . _ -, no names or addresses).
        #[arg(long, value_parser = crate::cli::data::ident("ticket"))]
        ticket: String,
        /// Image NAME@VERSION.
        #[arg(long)]
        image: String,
        /// Staged client dataset to migrate onto the new disk.
        #[arg(long, value_name = "DATASET")]
        data: Option<String>,
        /// Bay whose next disk gets the job.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        bay: Option<String>,
        /// Serial number of the expected disk (only ever matched in a bay).
        #[arg(long)]
        serial: Option<String>,
        /// Migrate a dataset that was ingested for another ticket, for this reason (audited;
        /// without it the dataset's ticket must be the job's).
        #[arg(long, value_name = "REASON", requires = "data")]
        dataset_of_other_ticket: Option<String>,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// List jobs.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// Show one job's record.
    Show {
        /// Job id.
        id: String,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// Cancel a job (staged client data is kept).
    Cancel {
        /// Job id.
        id: String,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// Retry a failed, cancelled or interrupted job: from the step where it stopped (on the
    /// same disk) once its image was verified, else from the start on any disk in its bay.
    Retry {
        /// Job id.
        id: String,
        #[command(flatten)]
        conn: AgentConn,
    },
}

/// Runs a daemon-related subcommand.
pub fn run(depot: &Depot, cmd: AgentCommand) -> Result<()> {
    match cmd {
        AgentCommand::Agent { config } => run_agent(depot, config.as_deref()),
        AgentCommand::Bays { discover, conn } => bays(discover, &conn),
        AgentCommand::Job(j) => job(j),
        AgentCommand::Status { watch, json, conn } => {
            if watch {
                return crate::cli::status::watch(&conn.socket()?);
            }
            let st: Status = conn.client()?.call(Op::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", crate::cli::status::render(&st));
            }
            Ok(())
        }
        AgentCommand::Board { conn } => crate::cli::board::run(&conn.socket()?),
        AgentCommand::Report { job, json, html } => {
            let journal = agent::job::journal::Journal::open(&depot.jobs())?;
            let j = journal
                .load(&job)
                .with_context(|| format!("loading job {job}"))?;
            // What happened to the client data comes from the custody records, read now.
            let custody = crate::cli::data::open_custody(depot);
            let mut r = agent::job::report::Report::with_custody(&j, custody.as_ref().ok());
            // The audit checkpoint exists only in the report the agent wrote.
            r.audit = agent::job::report::AuditAnchor::saved(&depot.reports(), &j.id);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if html {
                print!("{}", r.to_html());
            } else {
                print!("{}", r.to_text());
            }
            Ok(())
        }
        AgentCommand::Demo { windows } => crate::cli::demo::run(windows),
    }
}

/// The depot the agent uses: the config's `state` and `trusted_keys` override the defaults.
pub fn agent_depot(depot: &Depot, cfg: &Config) -> Depot {
    let mut d = match &cfg.state {
        Some(s) => Depot::at(s),
        None => depot.clone(),
    };
    if let Some(k) = &cfg.trusted_keys {
        d = d.with_trusted_keys(k.clone());
    }
    d
}

fn run_agent(depot: &Depot, config: Option<&Path>) -> Result<()> {
    agent::memory::limit_malloc_arenas();
    // Before anything else, above all before the socket is bound: an agent without its
    // configuration would take the socket and serve no bays.
    let cfg = load_agent_config(config)?;
    if cfg.bays.is_empty() {
        tracing::warn!(
            "no [[bay]] configured: only jobs matched by serial can run (see `tek bays --discover`)"
        );
    }
    let depot = agent_depot(depot, &cfg);
    std::fs::create_dir_all(depot.root())
        .with_context(|| format!("creating state directory {}", depot.root().display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Before the socket exists and READY is sent: a SIGTERM from then on is a clean stop,
        // never the default action (a supervisor or test may stop us right after READY).
        let shutdown = shutdown_signal();
        let journal = agent::job::journal::Journal::open(&depot.jobs())?;
        // Held until the agent exits, taken before the socket exists: a second agent on this
        // state stops here, and commands that change job records themselves (`tek image rm
        // --force`) go through the socket while it is held.
        let _owner = journal
            .own()
            .context("taking ownership of the job journal")?;
        let listener = agent::server::bind_socket(&cfg.socket, &cfg.socket_group)?;
        let steps = agent::job::steps::RealSteps::open(&depot, &cfg)?;
        let agent = agent::daemon::Agent::new(cfg.clone(), journal, Arc::new(steps))?;
        let devices = agent::server::hotplug_events(PathBuf::from("/sys"))?;
        tracing::info!(socket = %cfg.socket.display(), state = %depot.root().display(), "agent starting");
        let res = agent::server::run(listener, agent, devices, shutdown).await;
        let _ = std::fs::remove_file(&cfg.socket);
        res
    })
}

/// The daemon's configuration: `--config FILE` (or `TEK_CONFIG`), else
/// [`agent::config::DEFAULT_CONFIG`], which must then exist. Unlike the commands, the daemon
/// never falls back to built-in defaults.
pub fn load_agent_config(config: Option<&Path>) -> Result<Config> {
    let path = config.unwrap_or(Path::new(agent::config::DEFAULT_CONFIG));
    if config.is_none() && !path.exists() {
        anyhow::bail!(
            "not starting: no configuration at {} (write it from the annotated \
             agent.toml.example, or give --config FILE)",
            path.display()
        );
    }
    Config::load(path)
}

/// Installs the SIGTERM and SIGINT handlers now (an `async fn` would install them only when
/// first polled, leaving a window after READY where SIGTERM kills outright) and returns a
/// future completing on either. Must be called inside the tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("installing signal handlers failed; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}

fn bays(discover: bool, conn: &AgentConn) -> Result<()> {
    let cfg = conn.config()?;
    if discover {
        let disks = blockdev::sysfs::scan_disks(Path::new("/sys"))
            .context("scanning /sys/class/block for disks")?;
        if disks.is_empty() {
            println!("no disks found");
        }
        for d in &disks {
            let ours = agent::daemon::matching::Disk::from(d);
            let bay = agent::daemon::matching::bay_of(&cfg, &ours)
                .map(|b| format!("  [bay {}]", b.name))
                .unwrap_or_default();
            println!("{}{bay}", blockdev::sysfs::describe(d));
        }
        println!(
            "\nPlug a disk into each bay in turn and copy its port path into a [[bay]] port_path."
        );
        return Ok(());
    }
    if cfg.bays.is_empty() {
        println!("no bays configured (see `tek bays --discover`)");
    }
    let live: Option<Status> = conn.client().and_then(|mut c| c.call(Op::Status)).ok();
    for b in &cfg.bays {
        let matcher = match (&b.port_path, &b.loop_backing) {
            (Some(p), _) => format!("port {p}"),
            (_, Some(g)) => format!("loop backing {g}"),
            _ => String::new(),
        };
        let state = live
            .as_ref()
            .and_then(|s| s.bays.iter().find(|v| v.name == b.name))
            .map(|v| v.state.clone())
            .unwrap_or_else(|| "(agent not reachable)".into());
        let prov = b
            .default_image
            .as_ref()
            .map(|i| format!("  provisioning {i}"))
            .unwrap_or_default();
        println!("{}  {matcher}{prov}  {state}", b.name);
    }
    Ok(())
}

fn job(cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Add {
            ticket,
            image,
            data,
            bay,
            serial,
            dataset_of_other_ticket,
            json,
            conn,
        } => {
            let j: Job = conn.client()?.call(Op::JobAdd {
                ticket,
                image,
                data,
                bay,
                serial,
                dataset_of_other_ticket,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!("{}", j.id);
            }
        }
        JobCommand::List { json, conn } => {
            let jobs: Vec<Job> = conn.client()?.call(Op::JobList)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no jobs");
            } else {
                for j in &jobs {
                    println!("{}", crate::cli::status::job_line(j));
                }
            }
        }
        JobCommand::Show { id, conn } => {
            let j: Job = conn.client()?.call(Op::JobShow { id })?;
            println!("{}", serde_json::to_string_pretty(&j)?);
        }
        JobCommand::Cancel { id, conn } => {
            let j: Job = conn.client()?.call(Op::JobCancel { id })?;
            // A running job is only asked to stop; it says what happened when it has.
            match (j.state, &j.dataset) {
                (JobState::Cancelled, Some(ds)) => {
                    println!("{}: cancelled; dataset {ds} stays in staging", j.id)
                }
                (JobState::Cancelled, None) => println!("{}: cancelled", j.id),
                (s, _) => println!(
                    "{}: cancel requested while {s}; it stops at the next safe point \
                     (see `tek job show {}`)",
                    j.id, j.id
                ),
            }
        }
        JobCommand::Retry { id, conn } => {
            let j: Job = conn.client()?.call(Op::JobRetry { id })?;
            println!("{}: {}", j.id, j.state);
        }
    }
    Ok(())
}
