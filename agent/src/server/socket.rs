//! The daemon's event loop: the control socket, disk events, systemd notifications and
//! shutdown. [`run`] takes an already bound listener, a source of disk events and a shutdown
//! future, so tests bind a temporary socket, feed hand-made disks and stop it when they like
//! (the mini-redis `server::run` shape).

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};

use crate::daemon::Agent;
use crate::server::access::{self, Peer};
pub use crate::server::conn::Limits;
use crate::server::conn::{self, AcceptErrors, Full, LineError, Slots};
use crate::server::protocol::{ErrorCode, EventLine, Op, PROTOCOL_VERSION, Reply, Request};
use blockdev::DiskInfo;

/// A disk event, as the daemon consumes it (the hotplug watcher's events are converted).
#[derive(Debug, Clone)]
pub enum DeviceEvent {
    /// A disk is present (found at start, arrived, or changed).
    Present(Box<DiskInfo>),
    /// A disk went away.
    Gone {
        /// Kernel name.
        name: String,
    },
}

/// Starts the hotplug watcher on `sys_root` (sysfs) and converts its events. Must be called
/// inside the tokio runtime. The watcher scans first, so every disk already present arrives as
/// `Present`: that is how jobs interrupted by a crash find their disk again.
pub fn hotplug_events(sys_root: std::path::PathBuf) -> Result<mpsc::Receiver<DeviceEvent>> {
    let mut rx = blockdev::watch::watch(sys_root.clone())
        .with_context(|| format!("watching disks (uevents, {})", sys_root.display()))?;
    let (tx, out) = mpsc::channel(256);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let ev = match ev {
                blockdev::watch::DiskEvent::Present(d) => {
                    // The watcher read `diskseq` with the rest of the disk; a re-attach after
                    // that comes as its own `Gone`/`Present` pair carrying the new value.
                    DeviceEvent::Present(Box::new(d))
                }
                blockdev::watch::DiskEvent::Gone { name } => DeviceEvent::Gone { name },
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    Ok(out)
}

/// Binds the control socket: creates its directory, refuses to start if another agent answers
/// on it, replaces a stale socket file, sets mode 0660 and, when the group exists, its group.
pub fn bind_socket(path: &Path, group: &str) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another agent is already listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => {
            nix::unistd::chown(path, None, Some(g.gid))
                .with_context(|| format!("giving {} to group {group}", path.display()))?;
        }
        _ => tracing::info!(%group, "socket group does not exist; socket stays root-only"),
    }
    Ok(listener)
}

/// Runs the agent until `shutdown` completes: serves the socket, applies disk events, sends
/// systemd READY/STATUS/WATCHDOG, then stops taking work and brings running jobs to a safe
/// point before returning. Connections are bounded by the default [`Limits`].
pub async fn run(
    listener: UnixListener,
    agent: Arc<Agent>,
    devices: mpsc::Receiver<DeviceEvent>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_with(listener, agent, devices, shutdown, Limits::default()).await
}

/// [`run`] with explicit connection bounds (tests use short timeouts and small caps).
pub async fn run_with(
    listener: UnixListener,
    agent: Arc<Agent>,
    mut devices: mpsc::Receiver<DeviceEvent>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> Result<()> {
    tokio::pin!(shutdown);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!("agent ready");
    let status_task = tokio::spawn(status_loop(agent.clone()));
    let limits = Arc::new(limits);
    let slots = Slots::new(&limits);
    let mut accept_errors = AcceptErrors::default();
    // After a failed accept (EMFILE...): no accepting before this instant, so a persistent
    // error cannot spin a core; shutdown and disk events are still served meanwhile.
    let mut accept_after: Option<tokio::time::Instant> = None;
    let mut devices_open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(accept_after.unwrap_or_else(tokio::time::Instant::now)),
                if accept_after.is_some() => accept_after = None,
            conn = listener.accept(), if accept_after.is_none() => match conn {
                Ok((stream, _)) => {
                    accept_errors.succeeded();
                    let peer = stream.peer_cred().ok().map(Peer::from);
                    let slot = slots.take(peer.map(|p| p.uid));
                    let (agent, limits) = (agent.clone(), limits.clone());
                    tokio::spawn(async move {
                        let res = match slot {
                            Ok(_slot) => serve(stream, agent, peer, &limits).await,
                            Err(Full(why)) => {
                                tracing::debug!(uid = ?peer.map(|p| p.uid), "{why}");
                                refuse(stream, ErrorCode::TooManyConnections, why, &limits).await
                            }
                        };
                        if let Err(e) = res {
                            tracing::debug!("control connection ended: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    let wait = accept_errors.failed(&e);
                    accept_after = Some(tokio::time::Instant::now() + wait);
                }
            },
            ev = devices.recv(), if devices_open => match ev {
                Some(ev) => {
                    // Disk handling may run the eligibility checks (reads the manifest,
                    // looks at mounts): keep it off the async workers, but in order.
                    let agent = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || match ev {
                        DeviceEvent::Present(d) => agent.disk_present(*d),
                        DeviceEvent::Gone { name } => agent.disk_gone(&name),
                    })
                    .await;
                }
                None => {
                    tracing::warn!("disk event source closed; no more hotplug");
                    devices_open = false;
                }
            },
        }
    }
    tracing::info!("stopping: bringing running jobs to a safe point");
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping: jobs to a safe point"),
        ],
    );
    status_task.abort();
    let a = agent.clone();
    tokio::task::spawn_blocking(move || a.shutdown())
        .await
        .context("waiting for jobs to stop")?;
    tracing::info!("stopped");
    Ok(())
}

/// STATUS with the one-line summary whenever it changes, and WATCHDOG pings at half the
/// interval systemd asked for.
async fn status_loop(agent: Arc<Agent>) {
    let (watchdog, usec) = watchdog_usec();
    let period = if watchdog {
        Duration::from_micros(usec / 2)
    } else {
        Duration::from_secs(2)
    };
    let mut last = String::new();
    loop {
        let summary = agent.status().summary;
        let mut states = Vec::new();
        if summary != last {
            states.push(sd_notify::NotifyState::Status(&summary));
        }
        if watchdog {
            states.push(sd_notify::NotifyState::Watchdog);
        }
        if !states.is_empty() {
            let _ = sd_notify::notify(false, &states);
        }
        last = summary;
        tokio::time::sleep(period.min(Duration::from_secs(2))).await;
    }
}

/// The watchdog interval systemd asked for, as `sd_watchdog_enabled(3)` reads it: WATCHDOG_USEC,
/// for this process when WATCHDOG_PID is unset or names it. (The sd-notify crate insists on
/// WATCHDOG_PID being set.)
fn watchdog_usec() -> (bool, u64) {
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|u| *u > 0);
    let pid_ok = match std::env::var("WATCHDOG_PID") {
        Ok(p) => p.parse::<u32>().ok() == Some(std::process::id()),
        Err(_) => true,
    };
    match usec {
        Some(u) if pid_ok => (true, u),
        _ => (false, 0),
    }
}

/// Answers a connection that gets no slot, then closes it.
async fn refuse(stream: UnixStream, code: ErrorCode, why: String, limits: &Limits) -> Result<()> {
    let (_rd, mut wr) = stream.into_split();
    write_line(&mut wr, &Reply::refused(code, why), limits).await
}

async fn serve(
    stream: UnixStream,
    agent: Arc<Agent>,
    peer: Option<Peer>,
    limits: &Limits,
) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    // Blank lines do not count as activity: only a request renews the idle deadline.
    let mut idle_until = tokio::time::Instant::now() + limits.idle;
    loop {
        let line = match conn::read_line(&mut rd, limits.max_line, idle_until, limits.line).await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(e) => {
                let (code, msg) = match e {
                    LineError::Io(e) => return Err(e).context("reading a request"),
                    LineError::TooLong => (
                        ErrorCode::LineTooLong,
                        format!(
                            "request line longer than {} bytes; closing the connection",
                            limits.max_line
                        ),
                    ),
                    LineError::Idle => (
                        ErrorCode::Timeout,
                        format!(
                            "no request for {} s; closing the connection",
                            limits.idle.as_secs_f32()
                        ),
                    ),
                    LineError::Slow => (
                        ErrorCode::Timeout,
                        format!(
                            "request line not complete within {} s; closing the connection",
                            limits.line.as_secs_f32()
                        ),
                    ),
                };
                tracing::debug!(uid = ?peer.map(|p| p.uid), "{msg}");
                return write_line(&mut wr, &Reply::refused(code, msg), limits).await;
            }
        };
        if line.trim_ascii().is_empty() {
            continue;
        }
        idle_until = tokio::time::Instant::now() + limits.idle;
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let reply = Reply::refused(ErrorCode::BadRequest, format!("parsing request: {e}"));
                write_line(&mut wr, &reply, limits).await?;
                continue;
            }
        };
        if req.v != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} not supported; this agent speaks {PROTOCOL_VERSION}",
                req.v
            );
            let reply = Reply::refused(ErrorCode::UnsupportedVersion, msg);
            write_line(&mut wr, &reply, limits).await?;
            continue;
        }
        if let Op::Subscribe = req.op {
            return subscription(rd, wr, &agent, limits).await;
        }
        let group = agent.config().socket_group.clone();
        let a = agent.clone();
        let reply = tokio::task::spawn_blocking(move || {
            if req.op.is_mutating() {
                let uid = peer.map(|p| p.uid);
                match access::may_change(peer, &group) {
                    Ok(grant) => {
                        tracing::info!(?uid, ?grant, op = req.op.name(), "control request");
                    }
                    Err(why) => {
                        tracing::warn!(?uid, op = req.op.name(), "refused: {why}");
                        return Reply::refused(ErrorCode::Forbidden, why);
                    }
                }
            }
            handle(&a, req.op)
        })
        .await
        .unwrap_or_else(|e| Reply::refused(ErrorCode::Internal, format!("handling request: {e}")));
        write_line(&mut wr, &reply, limits).await?;
    }
}

/// A subscription: events until either side closes. Never idle; what the client sends is read
/// and dropped (only its end of stream matters), so it cannot pile up.
async fn subscription(
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: tokio::net::unix::OwnedWriteHalf,
    agent: &Agent,
    limits: &Limits,
) -> Result<()> {
    let mut rx = agent.subscribe();
    let ok = Reply::ok(serde_json::json!({"subscribed": true}));
    write_line(&mut wr, &ok, limits).await?;
    let mut sink = [0u8; 512];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(event) => {
                    let line = EventLine { v: PROTOCOL_VERSION, event };
                    write_line(&mut wr, &line, limits).await?;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!("subscriber lagged by {n} events");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            n = rd.read(&mut sink) => if !matches!(n, Ok(n) if n > 0) { return Ok(()) },
        }
    }
}

fn handle(agent: &Agent, op: Op) -> Reply {
    let to = |r: Result<serde_json::Value>| match r {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::refused(crate::daemon::error_code(&e), crate::errors::text(&e)),
    };
    let json = |v: Result<crate::job::Job>| v.map(|j| serde_json::to_value(j).unwrap_or_default());
    match op {
        Op::Status => to(Ok(serde_json::to_value(agent.status()).unwrap_or_default())),
        Op::JobAdd {
            ticket,
            image,
            data,
            bay,
            serial,
            dataset_of_other_ticket,
        } => to(json(agent.add_job_with(
            &ticket,
            &image,
            data,
            bay,
            serial,
            dataset_of_other_ticket,
        ))),
        Op::JobList => to(Ok(serde_json::to_value(agent.jobs()).unwrap_or_default())),
        Op::JobShow { id } => to(json(agent.job(&id))),
        Op::JobCancel { id } => to(json(agent.cancel(&id))),
        Op::JobRetry { id } => to(json(agent.retry(&id))),
        Op::JobFail { id, reason } => to(json(agent.fail(&id, &reason))),
        Op::CustodyChanged => to(Ok(serde_json::json!(agent.custody_changed()))),
        Op::Subscribe => Reply::refused(
            ErrorCode::BadRequest,
            "subscribe is handled by the connection",
        ),
    }
}

/// Writes one line; a client that does not read it within [`Limits::write`] is dropped.
async fn write_line<T: serde::Serialize>(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
    limits: &Limits,
) -> Result<()> {
    let mut bytes = serde_json::to_vec(v).context("serializing a reply")?;
    bytes.push(b'\n');
    tokio::time::timeout(limits.write, wr.write_all(&bytes))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the client read nothing for {} s; closing the connection",
                limits.write.as_secs_f32()
            )
        })?
        .context("writing a reply")?;
    Ok(())
}

#[cfg(test)]
mod limit_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::daemon::tests::{CFG, fake, loop_disk};
    use crate::job::journal::Journal;
    use crate::job::{Job, JobState};
    use crate::server::client::{AgentError, Client};
    use crate::server::protocol::{Event, Status};

    #[test]
    fn socket_round_trip_events_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/agent.sock");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cfg = Config::parse(CFG).unwrap();
        let agent = Agent::new(
            cfg,
            Journal::open(&dir.path().join("jobs")).unwrap(),
            fake(300),
        )
        .unwrap();
        let (dev_tx, dev_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = rt.block_on(async { bind_socket(&sock, "no-such-group-tek").unwrap() });
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let server = rt.spawn(run(listener, agent.clone(), dev_rx, async {
            let _ = stop_rx.await;
        }));
        // A second agent on the same socket is refused.
        let e = rt.block_on(async { bind_socket(&sock, "tek").unwrap_err() });
        assert!(format!("{e:#}").contains("already listening"));

        let events = Client::connect(&sock).unwrap().subscribe().unwrap();
        let mut c = Client::connect(&sock).unwrap();
        // Free text as a ticket is refused over the socket (and not journaled: one job below).
        let err = c
            .request(Op::JobAdd {
                ticket: "Jane Doe, jane.doe@example.com, +44 20 7946 0000".into(),
                image: "img@1".into(),
                data: None,
                bay: Some("a".into()),
                serial: None,
                dataset_of_other_ticket: None,
            })
            .unwrap_err();
        let code = err.downcast_ref::<AgentError>().and_then(|e| e.code);
        assert_eq!(code, Some(ErrorCode::InvalidArgument), "{err:#}");
        assert!(format!("{err:#}").contains("an id, not a name"), "{err:#}");
        let job: Job = c
            .call(Op::JobAdd {
                ticket: "T-9".into(),
                image: "img@1".into(),
                data: Some("ds".into()),
                bay: Some("a".into()),
                serial: None,
                dataset_of_other_ticket: None,
            })
            .unwrap();
        let err = c
            .request(Op::JobShow {
                id: "j-nope".into(),
            })
            .unwrap_err();
        let code = err.downcast_ref::<AgentError>().and_then(|e| e.code);
        assert_eq!(code, Some(ErrorCode::NotFound), "{err:#}");
        // A hostile id names no file: ids are looked up in the daemon's map, never joined to
        // a path, so a traversal is just an unknown job, for reads and for changes alike.
        for op in [
            Op::JobShow {
                id: "../../etc/passwd".into(),
            },
            Op::JobCancel {
                id: "../jobs/x".into(),
            },
            Op::JobRetry {
                id: "/etc/shadow".into(),
            },
        ] {
            let err = c.request(op).unwrap_err();
            let code = err.downcast_ref::<AgentError>().and_then(|e| e.code);
            assert_eq!(code, Some(ErrorCode::NotFound), "{err:#}");
        }
        dev_tx
            .blocking_send(DeviceEvent::Present(Box::new(loop_disk(
                "loop4",
                "/t/a-4.img",
            ))))
            .unwrap();
        let mut seen = Vec::new();
        for ev in events {
            let ev = ev.unwrap();
            let done = matches!(&ev, Event::JobState { job } if job.state == JobState::Done);
            seen.push(ev);
            if done {
                break;
            }
        }
        assert!(
            seen.iter()
                .any(|e| matches!(e, Event::DeviceArrived { bay: Some(b), .. } if b == "a"))
        );
        assert!(
            seen.iter()
                .any(|e| matches!(e, Event::JobProgress { id, .. } if *id == job.id))
        );
        let st: Status = c.call(Op::Status).unwrap();
        assert!(
            st.bays[0].state.contains("safe to remove"),
            "{:?}",
            st.bays[0]
        );
        let list: Vec<Job> = c.call(Op::JobList).unwrap();
        assert_eq!(list.len(), 1);

        // Version mismatch is answered, not dropped.
        let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        std::io::Write::write_all(&mut raw, b"{\"v\":7,\"op\":\"status\"}\n").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(raw), &mut line).unwrap();
        let reply: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(reply.code, Some(ErrorCode::UnsupportedVersion), "{line}");
        assert!(line.contains("protocol version 7"), "{line}");

        stop_tx.send(()).unwrap();
        rt.block_on(server).unwrap().unwrap();
    }
}
