//! `tek report`: a job's service report, rebuilt from the depot's journal and custody records
//! (no agent needed), as text, JSON or a printable HTML page.

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
    /// Printable HTML page.
    #[arg(long)]
    pub html: bool,
}

/// Runs `tek report`.
pub fn run(depot: &Depot, args: ReportArgs) -> Result<()> {
    let ReportArgs { job, json, html } = args;
    let journal = Journal::open(&depot.jobs())?;
    let j = journal
        .load(&job)
        .with_context(|| format!("loading job {job}"))?;
    // What happened to the client data comes from the custody records, read now.
    let custody = super::data::open_custody(depot);
    let mut r = Report::with_custody(&j, custody.as_ref().ok());
    // The audit checkpoint exists only in the report the agent wrote.
    r.audit = AuditAnchor::saved(&depot.reports(), &j.id);
    render::emit(json, &r, |r| if html { r.to_html() } else { r.to_text() })
}
