//! `tek job`: register, inspect, cancel and retry the agent's jobs, through its socket.
//! `list` and `show` only read: they ask the agent when it runs, else read the journal
//! (read-only, see [`from_agent_or_journal`]), so they work with the agent stopped.

use anyhow::Result;
use clap::Subcommand;

use agent::Depot;
use agent::job::journal::Journal;
use agent::job::{Job, JobState};
use agent::server::protocol::Op;

use super::{AgentConn, render, status};

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
                jobs.iter()
                    .map(|j| format!("{}\n", status::job_line(j)))
                    .collect()
            })?;
        }
        JobCommand::Show { id, conn } => {
            let j: Job =
                from_agent_or_journal(depot, &conn, Op::JobShow { id: id.clone() }, |j| {
                    j.load(&id)
                })?;
            render::print_json(&j)?;
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
