//! The engine under every reader of an image: jobs produced in order on one thread, run on a pool
//! of workers, and their outputs delivered strictly in job order through a bounded channel.
//!
//! Shape: `job thread -> bounded work queue -> N workers -> result queue -> orderer thread ->
//! bounded output`. Memory is bounded by a token pool, not by how fast the consumer is: the job
//! thread takes a token before it dispatches a job and the orderer gives it back once that job's
//! outputs have entered the output channel, so at most `depth` jobs exist in the pipeline, plus at
//! most `depth` outputs waiting in the output channel, however slow the consumer or one worker is.
//! (The result queue between workers and orderer needs no bound of its own: it can never hold more
//! than the `depth` jobs the tokens allow.)
//!
//! An output for which `stop` says true ends the stream after it is delivered (the imager stops at
//! the first bad chunk; `tek image verify` reports every one and never stops). Dropping the
//! receiver stops every thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, bounded};

/// Runs `work` over `jobs` on `workers` threads (named `{name}-N`), at most `depth` jobs in
/// flight, and returns the outputs in job order. A job may yield several outputs (a run of
/// chunks yields one piece per chunk); the stream ends after the first output for which `stop`
/// is true, or when the jobs run out.
pub fn ordered<J, T, I, W, S>(
    name: &str,
    jobs: I,
    workers: usize,
    depth: usize,
    work: W,
    stop: S,
) -> Receiver<T>
where
    J: Send + 'static,
    T: Send + 'static,
    I: IntoIterator<Item = J>,
    I::IntoIter: Send + 'static,
    W: Fn(J) -> Vec<T> + Send + Sync + 'static,
    S: Fn(&T) -> bool + Send + 'static,
{
    let depth = depth.max(1);
    let (tok_tx, tok_rx) = bounded::<()>(depth);
    for _ in 0..depth {
        tok_tx.send(()).expect("token pool has room");
    }
    let (work_tx, work_rx) = bounded::<(u64, J)>(depth);
    let (res_tx, res_rx) = crossbeam_channel::unbounded::<(u64, Vec<T>)>();
    let (out_tx, out_rx) = bounded::<T>(depth);

    let jobs = jobs.into_iter();
    std::thread::Builder::new()
        .name(format!("{name}-jobs"))
        .spawn(move || {
            for (seq, job) in jobs.enumerate() {
                // No token: the orderer ended the stream (consumer gone, or a stopping output).
                if tok_rx.recv().is_err() || work_tx.send((seq as u64, job)).is_err() {
                    return;
                }
            }
        })
        .expect("spawning job thread");

    let work = Arc::new(work);
    for i in 0..workers.max(1) {
        let (work_rx, res_tx, work) = (work_rx.clone(), res_tx.clone(), work.clone());
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                for (seq, job) in work_rx {
                    if res_tx.send((seq, work(job))).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning worker thread");
    }
    drop(res_tx);

    std::thread::Builder::new()
        .name(format!("{name}-order"))
        .spawn(move || {
            let mut next = 0u64;
            let mut waiting: BTreeMap<u64, Vec<T>> = BTreeMap::new();
            for (seq, outs) in res_rx {
                waiting.insert(seq, outs);
                while let Some(outs) = waiting.remove(&next) {
                    next += 1;
                    for t in outs {
                        let last = stop(&t);
                        if out_tx.send(t).is_err() || last {
                            return; // drops the tokens: the job thread stops
                        }
                    }
                    // The job thread may have finished (and dropped its end): that is fine.
                    let _ = tok_tx.send(());
                }
            }
        })
        .expect("spawning orderer thread");
    out_rx
}

/// Ends an iterator of results after its first error (which it yields): a source that failed
/// is not asked for more.
pub fn until_error<T, E>(
    it: impl Iterator<Item = Result<T, E>>,
) -> impl Iterator<Item = Result<T, E>> {
    let mut failed = false;
    it.take_while(move |r| {
        let go = !failed;
        failed = r.is_err();
        go
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn output_is_in_job_order_with_many_workers() {
        // Later jobs finish first: job i sleeps (20 - i % 20) ms.
        let rx = ordered(
            "t",
            0..100u64,
            4,
            3,
            |i| {
                std::thread::sleep(Duration::from_millis(20 - i % 20));
                vec![2 * i, 2 * i + 1]
            },
            |_| false,
        );
        assert_eq!(rx.iter().collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_stopping_output_ends_the_stream_after_itself() {
        let rx = ordered("t", 0..1000u32, 2, 4, |i| vec![i], |&i| i == 5);
        assert_eq!(rx.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn dropping_the_receiver_stops_an_endless_source() {
        let rx = ordered("t", 0u64.., 2, 2, |i| vec![i], |_| false);
        assert_eq!(rx.recv().unwrap(), 0);
        drop(rx); // the endless job thread must notice and exit (the test would hang otherwise)
    }

    /// Counts live outputs: made by a worker, dropped by the consumer.
    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_slow_consumer_holds_at_most_the_bound() {
        let (live, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (l, p) = (live.clone(), peak.clone());
        let (depth, per_job) = (3, 4);
        let rx = ordered(
            "t",
            0..200,
            2,
            depth,
            move |_| {
                (0..per_job)
                    .map(|_| {
                        let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(n, Ordering::SeqCst);
                        Live(l.clone())
                    })
                    .collect()
            },
            |_| false,
        );
        let mut n = 0;
        for item in rx {
            std::thread::sleep(Duration::from_millis(1));
            drop(item);
            n += 1;
        }
        assert_eq!(n, 200 * per_job);
        // depth jobs in the pipeline, depth outputs in the channel, one in the consumer's hand.
        let bound = depth * per_job + depth + 1;
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= bound, "peak {peak} outputs alive, bound {bound}");
    }

    #[test]
    fn until_error_yields_the_error_and_stops() {
        let it = [Ok(1), Err("bad"), Ok(3)].into_iter();
        assert_eq!(until_error(it).collect::<Vec<_>>(), vec![Ok(1), Err("bad")]);
    }
}
