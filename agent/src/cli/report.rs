//! `tek report`: a job's service report, rebuilt from the depot's journal and custody records,
//! read only (no agent needed, nothing created or changed), as text, JSON or a printable HTML
//! page under the depot's letterhead (`[depot]` of the configuration).

use anyhow::{Context, Result};
use clap::Args;

use agent::Depot;
use agent::job::journal::Journal;
use agent::job::report::{AuditAnchor, Report};

use super::render;

/// `tek report` arguments.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Job id.
    pub job: String,
    /// JSON output.
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Printable HTML page (one A4 sheet).
    #[arg(long)]
    pub html: bool,
}

/// Runs `tek report`.
pub fn run(depot: &Depot, args: ReportArgs) -> Result<()> {
    let ReportArgs { job, json, html } = args;
    let cfg = agent::settings::command_config()?;
    let letterhead = cfg.depot.letterhead()?;
    let j = Journal::read_only(&depot.jobs())
        .load(&job)
        .with_context(|| format!("loading job {job}"))?;
    // What happened to the client data comes from the custody records, read now.
    let kek = agent::settings::custody_config(&cfg.custody)?.kek;
    let records = client_data::CustodyRecords::open(
        client_data::CustodyPaths::under(depot.root()),
        kek.as_deref(),
    );
    let mut r = Report::with_records(&j, &records);
    // The audit checkpoint exists only in the report the agent wrote.
    r.audit = AuditAnchor::saved(&depot.reports(), &j.id);
    render::emit(json, &r, |r| {
        if html {
            r.to_html(&letterhead)
        } else {
            r.to_text(&letterhead)
        }
    })
}
