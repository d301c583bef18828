//! `tek write`'s progress: one bar per target on a terminal (indicatif's MultiProgress), a line
//! every few seconds per target otherwise. Each target's bar spans the write *and* the
//! read-back (the two passes over the image that take the time), so its ETA is for the whole
//! target, not for the current pass; the phase is said in words, and a finished bar says what
//! was done instead of a `0 B/0 B` count.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use imager::{Phase, ProgressEvent};

use super::render::size;

/// Where one target is across its phases: the write and the verify pass each cover the image,
/// so the target's total is their sum (the verify total as announced once it starts).
#[derive(Debug, Clone)]
pub struct TargetProgress {
    phase: Phase,
    phase_done: u64,
    phase_total: u64,
    write_total: u64,
    verify_total: Option<u64>,
    failed: bool,
    started: Instant,
}

impl TargetProgress {
    fn new() -> Self {
        TargetProgress {
            phase: Phase::Checking,
            phase_done: 0,
            phase_total: 0,
            write_total: 0,
            verify_total: None,
            failed: false,
            started: Instant::now(),
        }
    }

    /// Takes one event of this target.
    pub fn update(&mut self, ev: &ProgressEvent) {
        if ev.phase == Phase::Failed {
            // Stays where it was: the bar and the words say where it failed.
            self.failed = true;
            return;
        }
        if ev.phase != self.phase && ev.phase == Phase::Writing {
            self.started = Instant::now();
        }
        self.phase = ev.phase;
        self.phase_done = ev.bytes_done;
        self.phase_total = ev.bytes_total;
        match ev.phase {
            Phase::Writing => self.write_total = ev.bytes_total,
            Phase::Verifying => self.verify_total = Some(ev.bytes_total),
            _ => {}
        }
    }

    /// Bytes of both passes: (done, total).
    pub fn overall(&self) -> (u64, u64) {
        let w = self.write_total;
        let v = self.verify_total.unwrap_or(w);
        let done = match self.phase {
            Phase::Checking => 0,
            Phase::Writing => self.phase_done.min(w),
            Phase::ClearingBeyond | Phase::Flushing => w,
            Phase::Verifying => w + self.phase_done.min(v),
            Phase::FixingGpt
            | Phase::GrowingFilesystem
            | Phase::FirstMib
            | Phase::Done
            | Phase::Failed => w + v,
        };
        (done, w + v)
    }

    /// Seconds left for both passes at the average rate so far (`None` before any byte).
    pub fn eta_secs(&self) -> Option<f64> {
        let (done, total) = self.overall();
        let secs = self.started.elapsed().as_secs_f64();
        (done > 0 && secs > 0.0).then(|| total.saturating_sub(done) as f64 * secs / done as f64)
    }

    /// `  (write and verify: about 3 min 05 s left)`, or nothing before the first byte and
    /// under a second.
    pub fn eta_words(&self) -> String {
        self.left()
            .map(|left| format!("  (write and verify: about {left} left)"))
            .unwrap_or_default()
    }

    /// The time left for both passes in words, `None` before the first byte and under a second.
    fn left(&self) -> Option<String> {
        self.eta_secs()
            .filter(|&s| s >= 1.0)
            .map(|s| super::clock::duration(Duration::from_secs_f64(s)))
    }

    /// The phase in words, with the phase's own bytes when it counts any (`writing 12.0 MiB
    /// of 64.0 MiB`, `fitting the partition table`).
    pub fn message(&self) -> String {
        let words = self.phase.words();
        if self.failed {
            return format!("failed while {words}");
        }
        if self.phase_total > 0 && !matches!(self.phase, Phase::Done | Phase::Failed) {
            format!(
                "{words} {} of {}",
                size(self.phase_done),
                size(self.phase_total)
            )
        } else {
            words.to_string()
        }
    }
}

/// Draws progress until the channel closes (every writer finished); `width` is the longest
/// target name, so the bars line up.
pub fn show(rx: crossbeam_channel::Receiver<ProgressEvent>, width: usize) {
    if std::io::stderr().is_terminal() {
        bars(rx, width)
    } else {
        lines(rx)
    }
}

fn bars(rx: crossbeam_channel::Receiver<ProgressEvent>, width: usize) {
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}%  {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    let done_style = indicatif::ProgressStyle::with_template("{prefix} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut targets: HashMap<PathBuf, (indicatif::ProgressBar, TargetProgress)> = HashMap::new();
    for ev in rx {
        let (bar, tp) = targets.entry(ev.target.clone()).or_insert_with(|| {
            let b = multi.add(indicatif::ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(format!("{:<width$}", ev.target.display().to_string()));
            (b, TargetProgress::new())
        });
        tp.update(&ev);
        let (done, total) = tp.overall();
        bar.set_length(total);
        bar.set_position(done);
        match ev.phase {
            Phase::Done => {
                bar.set_style(done_style.clone());
                bar.finish_with_message(format!(
                    "done: written and verified in {}",
                    elapsed(tp.started.elapsed())
                ));
            }
            Phase::Failed => {
                bar.set_style(done_style.clone());
                bar.abandon_with_message(format!("{} (see below)", tp.message()));
            }
            _ => bar.set_message(format!("{}{}", tp.message(), tp.eta_words())),
        }
    }
}

fn lines(rx: crossbeam_channel::Receiver<ProgressEvent>) {
    let mut last: HashMap<PathBuf, (Instant, Phase, TargetProgress)> = HashMap::new();
    for ev in rx {
        let (t, p, tp) = last
            .entry(ev.target.clone())
            .or_insert_with(|| (Instant::now(), ev.phase, TargetProgress::new()));
        let first = tp.write_total == 0 && ev.phase == Phase::Writing;
        tp.update(&ev);
        let due = first || *p != ev.phase || t.elapsed() >= Duration::from_secs(5);
        if !due {
            continue;
        }
        *t = Instant::now();
        *p = ev.phase;
        say_line(&ev, tp);
    }
}

fn say_line(ev: &ProgressEvent, tp: &TargetProgress) {
    let (done, total) = tp.overall();
    let line = match ev.phase {
        // The summary after the write says how it ended.
        Phase::Done | Phase::Failed => return,
        _ if total > 0 => format!(
            "{}: {}; {:.0}% of write and verify{}",
            ev.target.display(),
            tp.message(),
            done as f64 * 100.0 / total as f64,
            tp.left()
                .map(|l| format!(", about {l} left"))
                .unwrap_or_default()
        ),
        _ => format!("{}: {}", ev.target.display(), tp.message()),
    };
    eprintln!("tek write: {line}");
}

/// A write's duration: tenths of a second under a minute (a small image takes 0.4 s), then
/// as the board says it.
fn elapsed(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        super::clock::duration(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(phase: Phase, done: u64, total: u64) -> ProgressEvent {
        ProgressEvent {
            target: "/dev/x".into(),
            phase,
            bytes_done: done,
            bytes_total: total,
            rate_bps: 0.0,
            eta_secs: None,
        }
    }

    #[test]
    fn one_bar_spans_write_and_verify() {
        let mut t = TargetProgress::new();
        t.update(&ev(Phase::Checking, 0, 0));
        assert_eq!(t.overall(), (0, 0));
        assert_eq!(t.message(), "checking the disk");
        t.update(&ev(Phase::Writing, 16, 64));
        assert_eq!(
            t.overall(),
            (16, 128),
            "verify assumed as long as the write"
        );
        assert_eq!(t.message(), "writing 16 B of 64 B");
        t.update(&ev(Phase::Flushing, 0, 0));
        assert_eq!(t.overall(), (64, 128));
        assert_eq!(t.message(), "flushing to the disk");
        t.update(&ev(Phase::Verifying, 32, 60));
        assert_eq!(t.overall(), (96, 124));
        t.update(&ev(Phase::FixingGpt, 0, 0));
        assert_eq!(t.overall(), (124, 124));
        assert_eq!(t.message(), "fitting the partition table");
        t.update(&ev(Phase::Done, 0, 0));
        assert_eq!(t.overall(), (124, 124));
        assert_eq!(t.message(), "done", "no `0 B of 0 B` at the end");
        let mut f = TargetProgress::new();
        f.update(&ev(Phase::Writing, 10, 64));
        f.update(&ev(Phase::Failed, 0, 0));
        assert_eq!(f.overall(), (10, 128), "a failed bar stays where it failed");
        assert_eq!(f.message(), "failed while writing");
    }

    #[test]
    fn short_writes_in_tenths() {
        assert_eq!(elapsed(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(elapsed(Duration::from_secs(185)), "3 min 05 s");
    }
}
