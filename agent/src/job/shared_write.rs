//! Shared writes: jobs that start writing the same image within a short window share one
//! `imager::write_image` call with several targets, so the image is read and decoded once
//! instead of once per bay (on a 2-core bench, four separate decodes made four bays CPU-bound).
//! Each job still has its own journal, state, progress and report: only the write step is
//! shared, and each job gets its own target's report back.
//!
//! How a batch forms: the first job to write image X becomes the leader, opens a batch for X
//! and waits `window`; jobs writing X meanwhile join it. The leader then closes the batch (later
//! jobs open the next one) and runs the imager on every member's disk. The imager makes each
//! target fail alone (a pulled or failing disk does not stop the others) and splits a slow
//! target off onto its own decode stream, so a slow disk does not hold the batch back.
//!
//! Stopping: the imager has one cancel flag per call, not per target. The batch's flag is set
//! only when every member asked to stop (agent shutdown, or all cancelled). A member that is
//! cancelled alone keeps being written until the shared write ends; its job then records the
//! verified image and stops at the runner's next safe point. That keeps the rule that one disk
//! has at most one writer: a job never reports "stopped" while the imager still writes its disk
//! (a retry could otherwise start a second writer on it). A pulled disk fails its own target at
//! once (I/O error) and its job is interrupted as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, unbounded};

use crate::job::runner::StepProgress;

/// What the batch sends back to a member's thread.
enum Msg<R> {
    Progress(StepProgress),
    Done(Result<R, String>),
}

struct Member<R> {
    dev: PathBuf,
    stop: Arc<AtomicBool>,
    tx: Sender<Msg<R>>,
}

/// The batches being formed, one per image. `R` is a target's report
/// (`imager::TargetReport`; tests use their own).
pub struct WriteSharing<R> {
    window: Duration,
    open: Mutex<HashMap<String, Vec<Member<R>>>>,
}

/// Runs the imager for a batch: targets, the batch's cancel flag, a progress sender; returns
/// each target's report with its path.
pub type RunImager<'a, R> = dyn FnOnce(&[PathBuf], Arc<AtomicBool>, Sender<imager::ProgressEvent>) -> Vec<(PathBuf, R)>
    + Send
    + 'a;

impl<R: Send> WriteSharing<R> {
    /// Batches form over `window`; zero disables sharing (every job writes alone, at once).
    pub fn new(window: Duration) -> WriteSharing<R> {
        WriteSharing {
            window,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Writes `key` (the image) onto `dev`, alone or in a batch. `run` is only called by the
    /// batch's leader, on every member's target. Returns this target's report, or why there is
    /// none (the imager panicked).
    pub fn write(
        &self,
        key: &str,
        dev: &Path,
        stop: &Arc<AtomicBool>,
        progress: &dyn Fn(StepProgress),
        run: Box<RunImager<'_, R>>,
    ) -> Result<R, String> {
        let (tx, rx) = unbounded();
        let me = Member {
            dev: dev.to_path_buf(),
            stop: stop.clone(),
            tx,
        };
        if self.window.is_zero() {
            return std::thread::scope(|s| {
                s.spawn(move || run_batch(vec![me], run));
                follow(&rx, progress)
            });
        }
        let leader = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get_mut(key) {
                Some(batch) => {
                    batch.push(me);
                    None
                }
                None => {
                    open.insert(key.to_string(), vec![me]);
                    Some(run)
                }
            }
        };
        std::thread::scope(|s| {
            if let Some(run) = leader {
                s.spawn(move || {
                    // Wait for others; a leader asked to stop does not hold its stop back.
                    let start = Instant::now();
                    while start.elapsed() < self.window && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let members = self
                        .open
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(key)
                        .unwrap_or_default();
                    if members.len() > 1 {
                        tracing::info!(image = %key, targets = members.len(), "shared write");
                    }
                    run_batch(members, run);
                });
            }
            follow(&rx, progress)
        })
    }
}

/// A member's side: relays progress to its own callback until its report arrives.
fn follow<R>(
    rx: &crossbeam_channel::Receiver<Msg<R>>,
    progress: &dyn Fn(StepProgress),
) -> Result<R, String> {
    for msg in rx.iter() {
        match msg {
            Msg::Progress(p) => progress(p),
            Msg::Done(r) => return r,
        }
    }
    Err("the shared write ended without a report for this disk".into())
}

/// Runs the imager on every member's target and hands each member its own report.
fn run_batch<R: Send>(members: Vec<Member<R>>, run: Box<RunImager<'_, R>>) {
    if members.is_empty() {
        return;
    }
    let targets: Vec<PathBuf> = members.iter().map(|m| m.dev.clone()).collect();
    let cancel = Arc::new(AtomicBool::new(false));
    let finished = AtomicBool::new(false);
    let (ptx, prx) = unbounded::<imager::ProgressEvent>();
    let reports = std::thread::scope(|s| {
        s.spawn(|| {
            // The imager's cancel flag is per call: stop the call only when every member wants
            // to stop (see the module docs).
            while !finished.load(Ordering::SeqCst) {
                if members.iter().all(|m| m.stop.load(Ordering::SeqCst)) {
                    cancel.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let writer = s.spawn(|| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&targets, cancel.clone(), ptx)
            }));
            finished.store(true, Ordering::SeqCst);
            r
        });
        for ev in prx.iter() {
            if let Some(m) = members.iter().find(|m| m.dev == ev.target) {
                let _ = m.tx.send(Msg::Progress(StepProgress {
                    phase: ev.phase.to_string(),
                    bytes_done: ev.bytes_done,
                    bytes_total: ev.bytes_total,
                    rate_bps: ev.rate_bps,
                }));
            }
        }
        writer.join().unwrap_or_else(Err)
    });
    let mut reports = match reports {
        Ok(r) => r,
        Err(_) => {
            for m in &members {
                let _ = m.tx.send(Msg::Done(Err("the imager panicked".into())));
            }
            return;
        }
    };
    for m in &members {
        let r = match reports.iter().position(|(p, _)| *p == m.dev) {
            Some(i) => Ok(reports.swap_remove(i).1),
            None => Err(format!(
                "the imager returned no report for {}",
                m.dev.display()
            )),
        };
        let _ = m.tx.send(Msg::Done(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A fake imager: one call per batch, reports "ok:<target>" after `ms`, or "stopped:" if
    /// cancelled first.
    fn fake(calls: &AtomicUsize, ms: u64) -> Box<RunImager<'_, String>> {
        Box::new(move |targets: &[PathBuf], cancel: Arc<AtomicBool>, tx| {
            calls.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(ms) {
                if cancel.load(Ordering::SeqCst) {
                    return targets
                        .iter()
                        .map(|t| (t.clone(), format!("stopped:{}", t.display())))
                        .collect();
                }
                for t in targets {
                    let _ = tx.send(imager::ProgressEvent {
                        target: t.clone(),
                        phase: imager::Phase::Writing,
                        bytes_done: 1,
                        bytes_total: 2,
                        rate_bps: 0.0,
                        eta_secs: None,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            targets
                .iter()
                .map(|t| (t.clone(), format!("ok:{}", t.display())))
                .collect()
        })
    }

    #[test]
    fn jobs_within_the_window_share_one_call_and_get_their_own_reports() {
        let ws = WriteSharing::new(Duration::from_millis(300));
        let calls = AtomicUsize::new(0);
        let results: Vec<(Result<String, String>, usize)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|i| {
                    let (ws, calls) = (&ws, &calls);
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(i * 50));
                        let dev = PathBuf::from(format!("/dev/t{i}"));
                        let stop = Arc::new(AtomicBool::new(false));
                        let seen = AtomicUsize::new(0);
                        let r = ws.write(
                            "img@1",
                            &dev,
                            &stop,
                            &|_| {
                                seen.fetch_add(1, Ordering::SeqCst);
                            },
                            fake(calls, 100),
                        );
                        (r, seen.load(Ordering::SeqCst))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one imager call for the batch"
        );
        for (i, (r, seen)) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), format!("ok:/dev/t{i}"));
            assert!(seen > 0, "member {i} got no progress");
        }
        // The next job opens a new batch.
        let stop = Arc::new(AtomicBool::new(false));
        let r = ws.write(
            "img@1",
            Path::new("/dev/t9"),
            &stop,
            &|_| {},
            fake(&calls, 0),
        );
        assert_eq!(r.unwrap(), "ok:/dev/t9");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn one_member_stopping_does_not_stop_the_others_but_all_stopping_does() {
        let ws = WriteSharing::new(Duration::from_millis(100));
        let calls = AtomicUsize::new(0);
        let stops: Vec<_> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let run = |stops: &[Arc<AtomicBool>], stop_which: &[usize]| -> Vec<String> {
            std::thread::scope(|s| {
                let hs: Vec<_> = stops
                    .iter()
                    .enumerate()
                    .map(|(i, stop)| {
                        let (ws, calls) = (&ws, &calls);
                        s.spawn(move || {
                            let dev = PathBuf::from(format!("/dev/s{i}"));
                            ws.write("img@2", &dev, stop, &|_| {}, fake(calls, 600))
                                .unwrap()
                        })
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(250));
                for &i in stop_which {
                    stops[i].store(true, Ordering::SeqCst);
                }
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            })
        };
        let r = run(&stops, &[0]);
        assert_eq!(
            r,
            ["ok:/dev/s0", "ok:/dev/s1"],
            "a lone cancel waits for the write"
        );
        let stops: Vec<_> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let r = run(&stops, &[0, 1]);
        assert_eq!(r, ["stopped:/dev/s0", "stopped:/dev/s1"]);
    }

    #[test]
    fn zero_window_writes_alone_and_different_images_never_share() {
        let calls = AtomicUsize::new(0);
        let ws = WriteSharing::new(Duration::ZERO);
        let stop = Arc::new(AtomicBool::new(false));
        let r = ws.write("a@1", Path::new("/dev/x"), &stop, &|_| {}, fake(&calls, 0));
        assert_eq!(r.unwrap(), "ok:/dev/x");
        let ws = WriteSharing::new(Duration::from_millis(100));
        std::thread::scope(|s| {
            for img in ["a@1", "b@1"] {
                let (ws, calls, stop) = (&ws, &calls, &stop);
                s.spawn(move || {
                    let dev = PathBuf::from(format!("/dev/{img}"));
                    ws.write(img, &dev, stop, &|_| {}, fake(calls, 0)).unwrap()
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
