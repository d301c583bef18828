//! The control socket's bounds against the real server ([`run_with`] on a temporary socket):
//! oversized lines, idle and slow clients, connection caps; and that the agent keeps serving
//! everyone else meanwhile. (EMFILE and other uids need a process of their own:
//! `agent/tests/socket_limits.rs`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::daemon::tests::{CFG, fake, loop_disk};
use crate::job::journal::Journal;
use crate::server::client::{AgentError, Client};
use crate::server::protocol::{ErrorCode, Event, Status};

/// A running server on a temporary socket; stops it on drop.
struct Server {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    devices: mpsc::Sender<DeviceEvent>,
}

impl Server {
    fn start(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let agent = Agent::new(
            Config::parse(CFG).unwrap(),
            Journal::open(&dir.path().join("jobs")).unwrap(),
            fake(10),
        )
        .unwrap();
        let (devices, dev_rx) = mpsc::channel(16);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = rt.block_on(async { bind_socket(&sock, "no-such-group-tek").unwrap() });
        let task = rt.spawn(run_with(
            listener,
            agent,
            dev_rx,
            async {
                let _ = stop_rx.await;
            },
            limits,
        ));
        Server {
            _dir: dir,
            sock,
            rt,
            stop: Some(stop),
            task: Some(task),
            devices,
        }
    }

    fn status(&self) -> Result<Status> {
        Client::connect(&self.sock)?.call(Op::Status)
    }

    /// A status call once freed slots are free (the agent notices closes asynchronously).
    fn status_eventually(&self) {
        let start = Instant::now();
        while let Err(e) = self.status() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "a freed slot stays taken: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(t);
        }
    }
}

/// Reads one reply line from a raw connection (failing, not hanging, if none comes in 10 s).
fn reply(s: &UnixStream) -> Reply {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("no reply within 10 s");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// True when the agent closed the connection (end of stream, or reset) within 5 s; false when
/// it is still open. Data still queued is skipped.
fn closed(mut s: &UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

fn short() -> Limits {
    Limits {
        idle: Duration::from_millis(400),
        line: Duration::from_millis(400),
        write: Duration::from_millis(400),
        ..Limits::default()
    }
}

#[test]
fn oversized_line_gets_a_protocol_error_and_is_closed() {
    let srv = Server::start(Limits::default());
    let s = UnixStream::connect(&srv.sock).unwrap();
    let mut w = s.try_clone().unwrap();
    // 16 MiB without a newline, written from another thread (the agent stops reading at
    // 64 KiB, so this write fails with EPIPE/ECONNRESET part way).
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        (0..16).map_while(|_| w.write_all(&chunk).ok()).count()
    });
    let r = reply(&s);
    assert_eq!(r.code, Some(ErrorCode::LineTooLong), "{r:?}");
    assert!(r.error.unwrap().contains("65536 bytes"));
    assert!(closed(&s));
    assert!(writer.join().unwrap() < 16, "the agent read all 16 MiB");
    // A line of exactly the limit is still parsed (and refused as JSON, not as too long).
    let mut s = UnixStream::connect(&srv.sock).unwrap();
    let mut line = vec![b' '; 64 * 1024 - 1];
    line[0] = b'x';
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let r = reply(&s);
    assert_eq!(r.code, Some(ErrorCode::BadRequest), "{r:?}");
    srv.status().expect("the agent still serves");
}

#[test]
fn idle_and_slow_clients_are_closed_while_others_are_served() {
    let srv = Server::start(short());
    let idle = UnixStream::connect(&srv.sock).unwrap();
    let slow = UnixStream::connect(&srv.sock).unwrap();
    let subscriber = Client::connect(&srv.sock).unwrap().subscribe().unwrap();
    // Slow-loris: a request line trickling in one byte every 50 ms.
    let mut w = slow.try_clone().unwrap();
    let loris = std::thread::spawn(move || {
        br#"{"v":1,"op":"status"}"#
            .iter()
            .cycle()
            .take(200)
            .map_while(|b| {
                std::thread::sleep(Duration::from_millis(50));
                w.write_all(&[*b]).ok()
            })
            .count()
    });
    // Meanwhile others get answers.
    for _ in 0..3 {
        srv.status().expect("served while a slow client trickles");
    }
    let r = reply(&slow);
    assert_eq!(r.code, Some(ErrorCode::Timeout), "{r:?}");
    assert!(r.error.unwrap().contains("not complete within"));
    assert!(closed(&slow));
    // Cut off long before its 200 bytes (10 s) were through.
    let sent = loris.join().unwrap();
    assert!(
        sent < 100,
        "the slow client sent {sent} bytes before being closed"
    );

    let r = reply(&idle);
    assert_eq!(r.code, Some(ErrorCode::Timeout), "{r:?}");
    assert!(r.error.unwrap().contains("no request for"));
    assert!(closed(&idle));

    // A subscription is not idle: after twice the idle time it still streams events.
    std::thread::sleep(Duration::from_millis(800));
    srv.devices
        .blocking_send(DeviceEvent::Present(Box::new(loop_disk(
            "loop7",
            "/t/a-7.img",
        ))))
        .unwrap();
    let ev = subscriber.into_iter().next().unwrap().unwrap();
    assert!(matches!(ev, Event::DeviceArrived { .. }), "{ev:?}");
}

#[test]
fn a_client_that_does_not_read_its_replies_is_dropped() {
    let srv = Server::start(short());
    let mut s = UnixStream::connect(&srv.sock).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // Requests whose replies (a full status each) fill the socket buffer, never read.
    let req = b"{\"v\":1,\"op\":\"status\"}\n".repeat(20_000);
    let _ = s.write_all(&req);
    std::thread::sleep(Duration::from_millis(800));
    srv.status().expect("the agent still serves");
    // The agent gave up on it: reading what it sent ends in end of stream.
    assert!(closed(&s), "connection not closed");
}

#[test]
fn connections_are_capped_per_uid_and_in_total() {
    let srv = Server::start(Limits {
        per_uid: 3,
        ..Limits::default()
    });
    let connect = |sock: &Path| {
        let mut c = Client::connect(sock).unwrap();
        let _: Status = c.call(Op::Status).unwrap();
        c
    };
    let mut held: Vec<Client> = (0..3).map(|_| connect(&srv.sock)).collect();
    let e = srv.status().unwrap_err();
    let ae = e.downcast_ref::<AgentError>().expect("a typed refusal");
    assert_eq!(ae.code, Some(ErrorCode::TooManyConnections), "{e:#}");
    assert!(ae.message.contains("already holds 3 connections"), "{e:#}");
    held.pop();
    srv.status_eventually();
    drop(held);

    let srv = Server::start(Limits {
        total: 2,
        ..Limits::default()
    });
    let _held: Vec<Client> = (0..2).map(|_| connect(&srv.sock)).collect();
    let e = srv.status().unwrap_err();
    assert!(
        format!("{e:#}").contains("already serves 2 connections"),
        "{e:#}"
    );
}

#[test]
fn racing_connections_get_exactly_the_cap() {
    let srv = Server::start(Limits {
        per_uid: 16,
        ..Limits::default()
    });
    // 40 clients connect at once and each holds its connection until all have tried.
    let start = std::sync::Arc::new(std::sync::Barrier::new(40));
    let tried = std::sync::Arc::new(std::sync::Barrier::new(40));
    let threads: Vec<_> = (0..40)
        .map(|_| {
            let (sock, start, tried) = (srv.sock.clone(), start.clone(), tried.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut c = Client::connect(&sock).unwrap();
                let r: Result<Status> = c.call(Op::Status);
                let refused = match &r {
                    Ok(_) => false,
                    Err(e) => {
                        let ae = e.downcast_ref::<AgentError>().expect("a typed refusal");
                        assert_eq!(ae.code, Some(ErrorCode::TooManyConnections), "{e:#}");
                        true
                    }
                };
                tried.wait();
                refused
            })
        })
        .collect();
    let refused = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|r| *r)
        .count();
    assert_eq!(refused, 24, "40 racing clients, a cap of 16");
    srv.status_eventually();
}
