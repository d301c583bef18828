//! `tek image rm IMAGE [--force]`: retiring an image that unfinished jobs may still need.
//!
//! An image a queued, interrupted or running job uses is not removed: such a job could only
//! fail once a disk arrives. `--force` removes it anyway and first fails those jobs (not a
//! running one: it is cancelled by a technician, or finishes) with the reason, so each says
//! why in `tek job list` and its report. Job records are changed by their owner: through the
//! agent's socket while an agent owns the journal ([`Journal::own`]), else directly, holding
//! the journal's ownership until the image is gone (no agent can start and take a job for it
//! meanwhile).

use anyhow::{Context, Result, bail};
use image_store::ImageRef;

use super::AgentConn;
use agent::Depot;
use agent::job::journal::{Journal, JournalBusy};
use agent::job::runner::JobSteps;
use agent::job::{Job, JobState};
use agent::server::protocol::Op;

/// Unfinished jobs in the journal that use `image`.
fn users(journal: &Journal, image: &ImageRef) -> Result<Vec<Job>> {
    let want = image.to_string();
    Ok(journal
        .load_all()
        .context("reading the job journal")?
        .into_iter()
        .filter(|j| !j.state.is_terminal() && j.image == want)
        .collect())
}

fn describe(jobs: &[Job]) -> String {
    jobs.iter()
        .map(|j| format!("{} (ticket {}, {})", j.id, j.ticket, j.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fails `jobs` with `reason`: directly when this process `owns` the journal, else through
/// the agent that owns it. Returns a line per job saying what became of it.
fn fail_jobs(
    depot: &Depot,
    owns: bool,
    journal: &Journal,
    conn: &AgentConn,
    jobs: &[Job],
    reason: &str,
) -> Result<Vec<String>> {
    let mut said = Vec::new();
    if jobs.is_empty() {
        return Ok(said);
    }
    match owns {
        true => {
            let cfg = conn.config().unwrap_or_default();
            let steps = agent::job::steps::RealSteps::open(depot, &cfg)?;
            for j in jobs {
                let mut j = j.clone();
                j.error = Some(reason.to_string());
                j.set_state(
                    JobState::Failed,
                    Some(format!("{reason}; staged client data kept")),
                );
                journal
                    .save(&j)
                    .with_context(|| format!("failing job {}", j.id))?;
                steps
                    .finish(&j)
                    .with_context(|| format!("writing the report of job {}", j.id))?;
                said.push(format!(
                    "failed job {} (ticket {}): {reason}",
                    j.id, j.ticket
                ));
            }
            Ok(said)
        }
        false => {
            let sock = conn.socket()?;
            let mut client = conn.client().with_context(|| {
                format!(
                    "a running tek agent owns the job journal {}, but it does not answer on \
                     {}: the jobs using the image cannot be failed, so it was not removed",
                    journal.dir().display(),
                    sock.display()
                )
            })?;
            for j in jobs {
                let r: Result<Job> = client.call(Op::JobFail {
                    id: j.id.to_string(),
                    reason: reason.to_string(),
                });
                match r {
                    Ok(_) => said.push(format!(
                        "failed job {} (ticket {}): {reason}",
                        j.id, j.ticket
                    )),
                    // The agent failed it itself meanwhile (added while the image went).
                    Err(_) if journal.load(&j.id).is_ok_and(|now| now.state.is_terminal()) => {
                        let now = journal.load(&j.id)?;
                        said.push(format!(
                            "job {} (ticket {}) is already {}",
                            j.id, j.ticket, now.state
                        ));
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("failing job {} through the agent", j.id));
                    }
                }
            }
            Ok(said)
        }
    }
}

/// Runs `tek image rm`: the lines it says, or with `json` one object (`image`, `removed`,
/// `jobs`: what became of each job that used it).
pub fn run(
    depot: &Depot,
    image: &ImageRef,
    force: bool,
    json: bool,
    conn: &AgentConn,
) -> Result<()> {
    let store = super::image::open_store(depot)?;
    if !store.exists(image) {
        bail!(
            "removing {image}: no such image in {}",
            store.root().display()
        );
    }
    let journal = Journal::open(&depot.jobs())?;
    // Held while no agent runs, until the image is gone: no agent starts and takes a job for
    // it meanwhile.
    let owner = match journal.own() {
        Ok(o) => Some(o),
        Err(e) if e.is::<JournalBusy>() => None,
        Err(e) => return Err(e),
    };
    let using = users(&journal, image)?;
    let reason = format!("image {image} was removed (tek image rm --force)");
    if !using.is_empty() {
        if !force {
            bail!(
                "refusing to remove {image}: unfinished jobs use it: {}; cancel them first, \
                 or give --force to fail them with the reason",
                describe(&using)
            );
        }
        // With the agent running, a job in a running state really runs (without it, it is
        // one a crashed agent left: it fails like a queued one).
        let running: Vec<Job> = using
            .iter()
            .filter(|j| owner.is_none() && j.state.is_active())
            .cloned()
            .collect();
        if !running.is_empty() {
            bail!(
                "refusing to remove {image}: jobs are writing or migrating with it now: {}; \
                 cancel them, or wait until they end",
                describe(&running)
            );
        }
    }
    let mut jobs = fail_jobs(depot, owner.is_some(), &journal, conn, &using, &reason)?;
    store
        .remove(image)
        .with_context(|| format!("removing {image}"))?;
    if owner.is_none() {
        // A job added through the agent between the check and the removal cannot succeed:
        // fail it too, saying so (the agent would otherwise refuse it only when a disk
        // arrives).
        let late: Vec<Job> = users(&journal, image)?
            .into_iter()
            .filter(|j| !using.iter().any(|u| u.id == j.id) && !j.state.is_active())
            .collect();
        if !late.is_empty() {
            eprintln!(
                "jobs added meanwhile use the removed image: {}",
                describe(&late)
            );
            jobs.extend(fail_jobs(depot, false, &journal, conn, &late, &reason)?);
        }
    }
    if json {
        return super::render::print_json(&serde_json::json!({
            "image": image.to_string(),
            "removed": true,
            "jobs": jobs,
        }));
    }
    jobs.push(format!(
        "removed {image} (run `tek image gc` to free its chunks)"
    ));
    super::render::print(&(jobs.join("\n") + "\n"))
}
