//! `tek job`: register, inspect, cancel and retry the agent's jobs, through its socket.
//! `list` and `show` only read: they ask the agent when it runs, else read the journal
//! (read-only, see [`from_agent_or_journal`]), so they work with the agent stopped.

use anyhow::Result;
use clap::Subcommand;

use agent::Depot;
use agent::job::journal::Journal;
use agent::job::{Job, JobState};
use agent::server::protocol::Op;

use super::table::Table;
use super::{AgentConn, render};

/// `tek job` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Queue a job for a bay or for a disk's serial number.
    Add {
        /// Service ticket (an id: 1-64 of A-Z a-z 0-9 . _ -, no names or addresses).
        #[arg(long, value_parser = super::data::ident("ticket"))]
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
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// Cancel a job (staged client data is kept).
    Cancel {
        /// Job id.
        id: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: AgentConn,
    },
    /// Retry a failed, cancelled or interrupted job: from the step where it stopped (on the
    /// same disk) once its image was verified, else from the start on any disk in its bay.
    Retry {
        /// Job id.
        id: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: AgentConn,
    },
}

/// What a read-only command shows: the agent's answer to `op` when an agent listens on the
/// socket (it owns the journal and knows what it is doing now), else `read` of the depot's
/// journal (the agent's: `state` of its configuration wins), opened read-only, when no agent runs (no socket, or nobody listening on it). Any
/// other failure to connect (permission denied) is an error: the journal may not be the one
/// the agent would have answered from.
fn from_agent_or_journal<T: serde::de::DeserializeOwned>(
    depot: &Depot,
    conn: &AgentConn,
    op: Op,
    read: impl FnOnce(&Journal) -> Result<T>,
) -> Result<T> {
    match conn.client() {
        Ok(mut c) => c.call(op),
        Err(e) if agent_not_running(&e) => {
            // The journal the agent keeps: its configuration's state root, when it names one.
            let depot = depot.for_agent(&conn.config()?);
            // A misspelt --state is no empty journal.
            if !depot.root().is_dir() {
                return Err(e.context(agent::depot::StateRootMissing {
                    path: depot.root().to_path_buf(),
                }));
            }
            read(&Journal::read_only(&depot.jobs()))
        }
        Err(e) => Err(e),
    }
}

/// True when connecting failed because no agent runs: the socket does not exist, or nothing
/// listens on it (a stale socket file after the agent stopped).
fn agent_not_running(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            )
        })
}

/// Runs a `tek job` subcommand.
pub fn run(depot: &Depot, cmd: JobCommand) -> Result<()> {
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
            render::emit(json, &j, |j| format!("{}\n", j.id))?;
        }
        JobCommand::List { json, conn } => {
            let jobs: Vec<Job> =
                from_agent_or_journal(depot, &conn, Op::JobList, |j| j.load_all())?;
            render::emit(json, &jobs, |jobs| {
                if jobs.is_empty() {
                    return "no jobs\n".into();
                }
                job_table(jobs)
            })?;
        }
        JobCommand::Show { id, json, conn } => {
            let j: Job =
                from_agent_or_journal(depot, &conn, Op::JobShow { id: id.clone() }, |j| {
                    j.load(&id)
                })?;
            render::emit(json, &j, job_text)?;
        }
        JobCommand::Cancel { id, json, conn } => {
            let j: Job = conn.client()?.call(Op::JobCancel { id })?;
            // A running job is only asked to stop; it says what happened when it has.
            render::emit(json, &j, |j| match (j.state, &j.dataset) {
                (JobState::Cancelled, Some(ds)) => {
                    format!("{}: cancelled; dataset {ds} stays in staging\n", j.id)
                }
                (JobState::Cancelled, None) => format!("{}: cancelled\n", j.id),
                (s, _) => format!(
                    "{}: cancel requested while {s}; it stops at the next safe point \
                     (see `tek job show {}`)\n",
                    j.id, j.id
                ),
            })?;
        }
        JobCommand::Retry { id, json, conn } => {
            let j: Job = conn.client()?.call(Op::JobRetry { id })?;
            render::emit(json, &j, |j| format!("{}: {}\n", j.id, j.state))?;
        }
    }
    Ok(())
}

/// `tek job list` as a table: one row per job, its last change to the second, and why it
/// stopped (or where it resumes) in the last column.
pub fn job_table(jobs: &[Job]) -> String {
    let mut t = Table::new(&[
        "JOB", "STATE", "SINCE", "TICKET", "IMAGE", "TARGET", "DATA", "NOTE",
    ]);
    for j in jobs {
        let since = j.history.last().map(|h| render::when(&h.at));
        let note = match (&j.error, j.resume_from, image_source(j)) {
            (Some(e), _, _) => e.clone(),
            (None, Some(r), _) => format!("resumes at {r}"),
            (None, None, Some(src)) => src.to_string(),
            (None, None, None) => String::new(),
        };
        t.row([
            j.id.to_string(),
            j.state.to_string(),
            since.unwrap_or_default(),
            j.ticket.clone(),
            j.image.clone(),
            j.target.to_string(),
            j.dataset.clone().unwrap_or_else(|| "-".into()),
            note,
        ]);
    }
    t.render()
}

/// Where the job's written image came from, when the library was involved (a fetch, or the
/// cached copy used because the library was unreachable): the record's line.
fn image_source(j: &Job) -> Option<&str> {
    j.results.image.as_ref()?.get("source")?.as_str()
}

/// `tek job show` as text: what the job is, the disk it claimed, why it stopped, and its
/// history to the second.
pub fn job_text(j: &Job) -> String {
    let mut out = String::new();
    let mut field = |label: &str, value: &str| {
        out.push_str(&format!("{:<10}{value}\n", format!("{label}:")));
    };
    field("job", j.id.as_ref());
    field("state", &j.state.to_string());
    field("ticket", &j.ticket);
    field("image", &j.image);
    if let Some(src) = image_source(j) {
        field("source", src);
    }
    field("target", &j.target.to_string());
    field("data", j.dataset.as_deref().unwrap_or("none"));
    if let Some(d) = &j.device {
        let serial = d
            .serial
            .as_deref()
            .map(|s| format!(", serial {s}"))
            .unwrap_or_default();
        field(
            "disk",
            &format!(
                "{} ({}{serial}, {})",
                d.name,
                d.model,
                render::size(d.size_bytes)
            ),
        );
    }
    if let Some(r) = j.resume_from {
        field("resumes", &format!("at {r}"));
    }
    if let Some(e) = &j.error {
        field("error", e);
    }
    out.push_str("history:\n");
    let mut t = Table::new(&["TIME", "STATE", "NOTE"]);
    for h in &j.history {
        t.row([
            render::when(&h.at),
            h.state.to_string(),
            h.note.clone().unwrap_or_default(),
        ]);
    }
    for line in t.render().lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}
