//! Signals during `tek write`: SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal went away) do
//! not kill the process mid-write. The first one sets the imager's cancel flag, so the writers
//! stop at their next piece and reset each unfinished target's partition table (both GPT headers
//! and the protective MBR); `tek write` then says what each target holds and exits non-zero.
//! Further signals only say that the stop is under way. `kill -9` cannot be caught: for that the
//! imager leaves its unfinished-write marker on the disk (`imager::marker`).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// The signal that stopped the write, once one arrived.
#[derive(Clone, Default)]
pub struct Interrupted(Arc<Mutex<Option<&'static str>>>);

impl Interrupted {
    /// The signal's name (`SIGINT`, ...), if one arrived.
    pub fn signal(&self) -> Option<&'static str> {
        *self.0.lock().expect("interrupt state")
    }
}

/// Prints to stderr without panicking when it is gone (after SIGHUP the terminal may answer EIO;
/// the disk's safety must not depend on being able to say so).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Starts catching SIGINT, SIGTERM and SIGHUP for the rest of the process: the first sets
/// `cancel`. The handlers are installed before this returns, so no signal after it can kill the
/// process with the default action.
pub fn catch(cancel: Arc<AtomicBool>) -> Result<Interrupted> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal handler")?;
    let (mut int, mut term, mut hup) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt()).context("catching SIGINT")?,
            signal(SignalKind::terminate()).context("catching SIGTERM")?,
            signal(SignalKind::hangup()).context("catching SIGHUP")?,
        )
    };
    let state = Interrupted::default();
    let seen = state.clone();
    std::thread::Builder::new()
        .name("tek-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                        _ = hup.recv() => "SIGHUP",
                    };
                    let first = {
                        let mut s = seen.0.lock().expect("interrupt state");
                        let first = s.is_none();
                        s.get_or_insert(name);
                        first
                    };
                    cancel.store(true, Ordering::SeqCst);
                    if first {
                        say(&format!(
                            "tek write: {name}: stopping the writers and resetting the \
                             partition table of every unfinished target..."
                        ));
                    } else {
                        say(&format!(
                            "tek write: {name}: still stopping; the partition tables are \
                             being reset, please wait"
                        ));
                    }
                }
            })
        })
        .context("starting the signal thread")?;
    Ok(state)
}
