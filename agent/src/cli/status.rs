//! `tek status`: every bay at a glance, the reason for every refused or waiting disk, and with
//! `--watch` a live view following the agent's events (an indicatif bar per running job).

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Result;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use agent::job::{Job, JobState};
use agent::server::client::Client;
use agent::server::protocol::{Event, Op, Status};

use super::{AgentConn, render};

/// `tek status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Follow events live.
    #[arg(long)]
    pub watch: bool,
    /// Machine-readable output.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    #[command(flatten)]
    pub conn: AgentConn,
}

/// Runs `tek status`.
pub fn run(args: StatusArgs) -> Result<()> {
    if args.watch {
        return watch(&args.conn.socket()?);
    }
    let st: Status = args.conn.client()?.call(Op::Status)?;
    render::emit(args.json, &st, render_status)
}

/// The status as text, one line per bay, then disks outside bays, then open jobs.
pub fn render_status(st: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", st.summary);
    let w = st
        .bays
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(3)
        .max(3);
    if st.bays.is_empty() {
        let _ = writeln!(out, "no bays configured");
    }
    for b in &st.bays {
        let disk = b.disk.as_deref().unwrap_or("-");
        let mut line = format!("{:<w$}  {:<8}  {}", b.name, disk, b.state);
        if let Some(p) = &b.progress
            && p.bytes_total > 0
        {
            let pct = p.bytes_done as f64 * 100.0 / p.bytes_total as f64;
            let _ = write!(
                line,
                "  [{} {pct:.0}% of {}]",
                p.phase,
                render::size(p.bytes_total)
            );
        }
        let _ = writeln!(out, "{line}");
    }
    let outside: Vec<_> = st.disks.iter().filter(|d| d.bay.is_none()).collect();
    if !outside.is_empty() {
        let _ = writeln!(out, "\nother disks:");
        for d in outside {
            let _ = writeln!(out, "  {:<8}  {}", d.disk.name, d.status.line());
        }
    }
    let open: Vec<&Job> = st.jobs.iter().filter(|j| !j.state.is_terminal()).collect();
    if !open.is_empty() {
        let _ = writeln!(out, "\nopen jobs:");
        for j in open {
            let _ = writeln!(out, "  {}", job_line(j));
        }
    }
    out
}

/// One line per job for `tek job list`.
pub fn job_line(j: &Job) -> String {
    let mut s = format!(
        "{}  {:<14}  ticket {}  {}  {}",
        j.id,
        j.state.as_str(),
        j.ticket,
        j.image,
        j.target
    );
    if let Some(d) = &j.dataset {
        let _ = write!(s, "  data {d}");
    }
    if let Some(r) = j.resume_from {
        let _ = write!(s, "  (resumes at {r})");
    }
    if let Some(e) = &j.error {
        let _ = write!(s, "  error: {e}");
    }
    s
}

/// Follows the agent's events: prints arrivals, departures and state changes, and keeps a
/// progress bar per running job. Returns when the agent closes the connection.
pub fn watch(socket: &std::path::Path) -> Result<()> {
    let mut c = Client::connect(socket)?;
    let st: Status = c.call(Op::Status)?;
    let mp = MultiProgress::new();
    // Bars only on a terminal; piped into a file or a pager, plain lines (indicatif would
    // hide its println output there).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |line: String| -> Result<()> {
        if tty {
            mp.println(line)?;
        } else {
            println!("{line}");
        }
        Ok(())
    };
    say(render_status(&st))?;
    let style = ProgressStyle::with_template(
        "{prefix:>10} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: HashMap<agent::job::JobId, ProgressBar> = HashMap::new();
    let events = Client::connect(socket)?.subscribe()?;
    for ev in events {
        match ev? {
            Event::DeviceArrived { disk, bay } => say(format!(
                "+ {} arrived{} ({}, {})",
                disk.name,
                bay.map(|b| format!(" in bay {b}")).unwrap_or_default(),
                disk.model_line(),
                render::size(disk.size_bytes)
            ))?,
            Event::DeviceLeft { name } => say(format!("- {name} left"))?,
            Event::DiskStatus { name, status } => say(format!("  {name}: {}", status.line()))?,
            Event::JobState { job } => {
                say(format!("* {}", job_line(&job)))?;
                if job.state.is_terminal() || job.state == JobState::Interrupted {
                    if let Some(b) = bars.remove(&job.id) {
                        b.finish_and_clear();
                    }
                }
            }
            Event::JobProgress { id, progress } if tty => {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let b = mp.add(ProgressBar::new(progress.bytes_total));
                    b.set_style(style.clone());
                    b.set_prefix(id.to_string());
                    b
                });
                bar.set_length(progress.bytes_total);
                bar.set_position(progress.bytes_done);
                bar.set_message(progress.phase.clone());
            }
            Event::JobProgress { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::daemon::matching::{DiskStatus, test_disk};
    use agent::job::JobTarget;
    use agent::job::runner::StepProgress;
    use agent::server::protocol::{BayView, DiskView};

    #[test]
    fn renders_bays_reasons_and_progress() {
        let mut job = Job::new("T", "img@1", None, JobTarget::Bay("a".into()));
        job.set_state(JobState::Writing, None);
        let st = Status {
            summary: "2 bays".into(),
            bays: vec![
                BayView {
                    name: "a".into(),
                    matcher: String::new(),
                    default_image: None,
                    disk: Some("loop1".into()),
                    state: format!("running {}", job.id),
                    job: Some(job.id.clone()),
                    progress: Some(StepProgress {
                        phase: "writing".into(),
                        bytes_done: 1 << 20,
                        bytes_total: 4 << 20,
                        rate_bps: 0.0,
                    }),
                },
                BayView {
                    name: "b".into(),
                    matcher: String::new(),
                    default_image: None,
                    disk: None,
                    state: "empty".into(),
                    job: None,
                    progress: None,
                },
            ],
            disks: vec![DiskView {
                disk: test_disk("sdz"),
                bay: None,
                status: DiskStatus::Ignored {
                    reason: "not in a bench bay".into(),
                },
            }],
            jobs: vec![job],
            progress: Default::default(),
        };
        let text = render_status(&st);
        assert!(text.contains("[writing 25% of 4.0 MiB]"), "{text}");
        assert!(text.contains("b    -         empty"), "{text}");
        assert!(
            text.contains("sdz       ignored: not in a bench bay"),
            "{text}"
        );
        assert!(text.contains("open jobs:"), "{text}");
    }
}
