//! `tek agent`: the daemon (normally started by systemd). The command only loads the
//! configuration, installs the signal handlers, builds the runtime and binds the control
//! socket; the daemon itself is the library's [`agent::run`].

use std::path::Path;

use anyhow::{Context, Result};

use agent::Depot;
use agent::config::Config;

/// Caps glibc's malloc arenas at two for the long-running daemon, through glibc's own
/// `MALLOC_ARENA_MAX` (read at process start): when it is not set, `tek agent` runs itself again
/// with it set, before any thread exists (the systemd unit sets it, so there no second exec
/// happens). Why two: the imager allocates 4 MiB I/O buffers on many threads, glibc gives each
/// allocating thread its own arena (up to 8 per core) and freed buffers stay resident in
/// whichever arena they came from; with four bays busy the agent's RSS reached about 230 MiB,
/// capped at two arenas 192 MiB at the same throughput (`bench/agent.sh`). Safe Rust: no
/// `mallopt` call, so the agent crate forbids `unsafe`.
fn cap_malloc_arenas() -> Result<()> {
    use std::os::unix::process::CommandExt;
    if !cfg!(all(target_os = "linux", target_env = "gnu"))
        || std::env::var_os("MALLOC_ARENA_MAX").is_some()
    {
        return Ok(());
    }
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .env("MALLOC_ARENA_MAX", "2")
        .exec();
    Err(err).context("running tek agent again with MALLOC_ARENA_MAX=2")
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(depot: &Depot, config: Option<&Path>) -> Result<()> {
    cap_malloc_arenas()?;
    // Before anything else, above all before the socket is bound.
    let cfg = Config::load_for_daemon(config)?;
    let depot = depot.for_agent(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Before the socket exists and READY is sent: a SIGTERM from then on is a clean stop,
        // never the default action (a supervisor or test may stop us right after READY).
        let shutdown = shutdown_signal();
        let listener = agent::server::bind_socket(&cfg.socket, &cfg.socket_group)?;
        agent::run(cfg, depot, listener, shutdown).await
    })
}

/// Installs the SIGTERM and SIGINT handlers now (an `async fn` would install them only when
/// first polled, leaving a window after READY where SIGTERM kills outright) and returns a
/// future completing on either. Must be called inside the tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("installing signal handlers failed; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}
