//! The daemon's entry point: [`run`] takes the configuration, the depot, an already bound
//! control socket and a shutdown future (the mini-redis `server::run` shape), so the `tek agent`
//! command only parses, binds and waits for a signal, and a test can bind a temporary socket,
//! drive the daemon through it and stop it when it likes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::UnixListener;

use crate::Depot;
use crate::config::Config;
use crate::daemon::Agent;
use crate::job::journal::Journal;
use crate::job::steps::RealSteps;

/// Runs the bench agent on `depot` until `shutdown` completes: takes ownership of the job
/// journal (a second agent on the same state stops here), opens the store, custody and audit
/// log, watches the disks of `/sys` (every disk present now arrives first, so interrupted jobs
/// find their disk again), serves `listener`, then brings running jobs to a safe point. The
/// socket file at `config.socket` is removed on the way out, whatever the result. Must be called
/// inside a tokio runtime with the I/O and time drivers enabled.
pub async fn run(
    config: Config,
    depot: Depot,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let socket = config.socket.clone();
    let res = serve(config, depot, listener, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    res
}

async fn serve(
    config: Config,
    depot: Depot,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    if config.bays.is_empty() {
        tracing::warn!(
            "no [[bay]] configured: only jobs matched by serial can run (see `tek bays --discover`)"
        );
    }
    let (_, created) = Depot::create(Some(depot.root().to_path_buf()), None)?;
    if created {
        tracing::info!(state = %depot.root().display(), "created state root");
    }
    let journal = Journal::open(&depot.jobs())?;
    // Held until the agent exits: commands that change job records themselves (`tek image rm
    // --force`) go through the socket while it is held.
    let _owner = journal
        .own()
        .context("taking ownership of the job journal")?;
    let steps = RealSteps::open(&depot, &config)?;
    let socket = config.socket.clone();
    let agent = Agent::new(config, journal, Arc::new(steps))?;
    let devices = crate::server::hotplug_events(PathBuf::from("/sys"))?;
    tracing::info!(socket = %socket.display(), state = %depot.root().display(), "agent starting");
    crate::server::run(listener, agent, devices, shutdown).await
}
