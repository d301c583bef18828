//! `tek status`: every bay at a glance, the reason for every refused or waiting disk, and with
//! `--watch` a live view following the agent's events (an indicatif bar per running job).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use agent::daemon::matching::DiskStatus;
use agent::job::{Job, JobState};
use agent::server::client::Client;
use agent::server::protocol::{DiskView, Event, Op, Status};

use super::clock::{duration, now_hms};
use super::table::Table;
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
    /// Also show disks outside every bay that nothing wants (the system disk, the agent's own
    /// loop devices over a data partition); without it they are counted, not listed.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: AgentConn,
}

/// Runs `tek status`.
pub fn run(args: StatusArgs) -> Result<()> {
    if args.watch {
        return watch(&args.conn.socket()?, args.all);
    }
    let st: Status = args.conn.client()?.call(Op::Status)?;
    render::emit(args.json, &st, |st| render_status(st, args.all))
}

/// Whether `tek status` lists a disk without `--all`: one in a bay, or one a job wants (matched
/// by serial outside the bays). Disks outside every bay that the agent ignores are the
/// workstation's own (its system disk, the loop devices it puts over a data partition while
/// restoring onto it): listing them only hides the bays' disks among them.
pub fn listed(d: &DiskView, all: bool) -> bool {
    all || d.bay.is_some() || !matches!(d.status, DiskStatus::Ignored { .. })
}

/// The status as text, one line per bay, then disks outside bays (with `all`, also the ignored
/// ones), then open jobs.
pub fn render_status(st: &Status, all: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", st.summary);
    if st.bays.is_empty() {
        let _ = writeln!(out, "no bays configured");
    } else {
        let mut t = Table::new(&["BAY", "DISK", "STATE", "PROGRESS"]);
        for b in &st.bays {
            let progress = match &b.progress {
                Some(p) if p.bytes_total > 0 => format!(
                    "[{} {:.0}% of {}]",
                    p.phase,
                    p.bytes_done as f64 * 100.0 / p.bytes_total as f64,
                    render::size(p.bytes_total)
                ),
                _ => String::new(),
            };
            t.row([
                b.name.clone(),
                b.disk.clone().unwrap_or_else(|| "-".into()),
                b.state.clone(),
                progress,
            ]);
        }
        out.push_str(&t.render());
    }
    let outside: Vec<_> = st
        .disks
        .iter()
        .filter(|d| d.bay.is_none() && listed(d, all))
        .collect();
    if !outside.is_empty() {
        let mut t = Table::new(&["OTHER DISK", "STATUS"]);
        for d in outside {
            t.row([d.disk.name.clone(), d.status.line()]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    let hidden = st.disks.iter().filter(|d| !listed(d, all)).count();
    if hidden > 0 {
        let _ = writeln!(
            out,
            "\n{} outside every bay, ignored (--all lists {})",
            render::count(hidden as u64, "other disk"),
            if hidden == 1 { "it" } else { "them" }
        );
    }
    let open: Vec<Job> = st
        .jobs
        .iter()
        .filter(|j| !j.state.is_terminal())
        .cloned()
        .collect();
    if !open.is_empty() {
        let _ = writeln!(out, "\nopen jobs:");
        out.push_str(&super::job::job_table(&open));
    }
    out
}

/// Follows the agent's events: prints arrivals, departures and state changes with the time,
/// and keeps a progress bar per running job. When the agent goes away (a restart), says so,
/// reconnects once it is back and prints the status again; ends on Ctrl-C. Fails only when the
/// agent cannot be reached at the start.
pub fn watch(socket: &Path, all: bool) -> Result<()> {
    let mp = MultiProgress::new();
    // Bars only on a terminal; piped into a file or a pager, plain lines (indicatif would
    // hide its println output there).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |line: String| -> Result<()> {
        let line = format!("{}  {line}", now_hms());
        if tty {
            mp.println(line)?;
        } else {
            println!("{line}");
        }
        Ok(())
    };
    let mut bars = Bars::default();
    let mut lost: Option<(Instant, String)> = None;
    loop {
        let connected = Client::connect(socket)
            .and_then(|mut c| c.call::<Status>(Op::Status))
            .and_then(|st| Ok((st, Client::connect(socket)?.subscribe()?)));
        let (st, mut events) = match connected {
            Ok(x) => x,
            Err(e) if lost.is_none() => {
                return Err(e.context(format!("watching the agent at {}", socket.display())));
            }
            Err(_) => {
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if let Some((since, _)) = lost.take() {
            say(format!(
                "agent reachable again after {}; status now:",
                duration(since.elapsed())
            ))?;
        }
        let mut shown: HashSet<String> = st
            .disks
            .iter()
            .filter(|d| listed(d, all))
            .map(|d| d.disk.name.clone())
            .collect();
        say(render_status(&st, all).trim_end().to_string())?;
        let why = loop {
            let ev = match events.next() {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => break format!("{e:#}"),
                None => break "the agent closed the connection".to_string(),
            };
            if let Some(line) = watched_line(&ev, &mut shown, all) {
                say(line)?;
            }
            bars.follow(&ev, tty, &mp);
        };
        bars.clear();
        say(format!(
            "agent connection lost ({why}); reconnecting when it is back"
        ))?;
        lost = Some((Instant::now(), why));
    }
}

/// How often `--watch` tries to reconnect.
const RETRY: Duration = Duration::from_millis(500);

/// The line `--watch` prints for `ev`, `None` when it is hidden or too frequent (progress).
/// `listed` holds the disks shown so far (the status's, then those arriving in a bay or wanted
/// by a job): without `--all`, the others (outside every bay, ignored) come and go unseen, also
/// one that arrived between the status and the subscription and then leaves.
pub fn watched_line(ev: &Event, listed: &mut HashSet<String>, all: bool) -> Option<String> {
    let shown = match ev {
        Event::DeviceArrived { disk, bay } => {
            let show = all || bay.is_some();
            if show {
                listed.insert(disk.name.clone());
            }
            show
        }
        Event::DiskStatus { name, status } => {
            let show =
                all || listed.contains(name) || !matches!(status, DiskStatus::Ignored { .. });
            if show {
                listed.insert(name.clone());
            }
            show
        }
        Event::DeviceLeft { name } => listed.remove(name) || all,
        Event::JobState { .. } | Event::JobProgress { .. } => true,
    };
    shown.then(|| super::board::event_line(ev)).flatten()
}

/// A progress bar per running job.
#[derive(Default)]
struct Bars(HashMap<agent::job::JobId, ProgressBar>);

impl Bars {
    fn follow(&mut self, ev: &Event, tty: bool, mp: &MultiProgress) {
        match ev {
            Event::JobState { job }
                if job.state.is_terminal() || job.state == JobState::Interrupted =>
            {
                if let Some(b) = self.0.remove(&job.id) {
                    b.finish_and_clear();
                }
            }
            Event::JobProgress { id, progress } if tty => {
                let bar = self.0.entry(id.clone()).or_insert_with(|| {
                    let style = ProgressStyle::with_template(
                        "{prefix:>10} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                    let b = mp.add(ProgressBar::new(progress.bytes_total));
                    b.set_style(style);
                    b.set_prefix(id.to_string());
                    b
                });
                bar.set_length(progress.bytes_total);
                bar.set_position(progress.bytes_done);
                bar.set_message(progress.phase.clone());
            }
            _ => {}
        }
    }

    fn clear(&mut self) {
        for (_, b) in self.0.drain() {
            b.finish_and_clear();
        }
    }
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
        let text = render_status(&st, false);
        assert!(text.contains("[writing 25% of 4.0 MiB]"), "{text}");
        assert!(text.contains("\nb    -      empty"), "{text}");
        assert!(
            !text.contains("sdz"),
            "ignored disks outside bays are hidden: {text}"
        );
        assert!(
            text.contains("1 other disk outside every bay, ignored (--all lists it)"),
            "{text}"
        );
        assert!(text.contains("open jobs:"), "{text}");
        let all = render_status(&st, true);
        assert!(
            all.contains("\nsdz         ignored: not in a bench bay"),
            "{all}"
        );
        assert!(!all.contains("--all lists"), "{all}");
    }

    #[test]
    fn watch_hides_disks_outside_bays_until_a_job_wants_one() {
        let mut listed = HashSet::new();
        let arrived = |name: &str, bay: Option<&str>| Event::DeviceArrived {
            disk: Box::new(test_disk(name)),
            bay: bay.map(Into::into),
        };
        let ignored = |name: &str| Event::DiskStatus {
            name: name.into(),
            status: DiskStatus::Ignored {
                reason: "not in a bench bay".into(),
            },
        };
        let left = |name: &str| Event::DeviceLeft { name: name.into() };
        // The agent's own loop device over a data partition comes and goes unseen.
        assert_eq!(
            watched_line(&arrived("loop9", None), &mut listed, false),
            None
        );
        assert_eq!(watched_line(&ignored("loop9"), &mut listed, false), None);
        assert_eq!(watched_line(&left("loop9"), &mut listed, false), None);
        // So does one that arrived before the watch began and was never listed.
        assert_eq!(watched_line(&left("loop8"), &mut listed, false), None);
        assert!(listed.is_empty());
        // With --all it is listed.
        assert!(watched_line(&arrived("loop9", None), &mut HashSet::new(), true).is_some());
        assert!(watched_line(&left("loop8"), &mut HashSet::new(), true).is_some());
        // A disk in a bay is always listed, and so is its departure.
        let l = watched_line(&arrived("loop3", Some("b1")), &mut listed, false).unwrap();
        assert!(l.contains("arrived in bay b1"), "{l}");
        assert!(watched_line(&left("loop3"), &mut listed, false).is_some());
        // A disk outside the bays that a job wants (by serial) shows from then on.
        watched_line(&arrived("sdq", None), &mut listed, false);
        let wanted = Event::DiskStatus {
            name: "sdq".into(),
            status: DiskStatus::Running {
                job: Job::new("T", "img@1", None, JobTarget::Bay("a".into())).id,
            },
        };
        assert!(watched_line(&wanted, &mut listed, false).is_some());
        assert!(watched_line(&left("sdq"), &mut listed, false).is_some());
    }
}
