//! `tek agent` as a process: what it refuses before it takes the control socket.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `tek --state STATE agent ARGS` and waits up to 15 s for it to exit; kills it and fails
/// the test if it is still running then (it would be serving).
fn agent_exit(state: &Path, args: &[&str]) -> (bool, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tek"))
        .arg("--state")
        .arg(state)
        .arg("agent")
        .args(args)
        .env_remove("TEK_CONFIG")
        .env_remove("TEK_SOCKET")
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(err.path()).unwrap();
            return (st.success(), text);
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tek agent {args:?} was still running after 15 s:\n{}",
                std::fs::read_to_string(err.path()).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agent_refuses_to_start_without_a_config_file() {
    let default = Path::new(agent::config::DEFAULT_CONFIG);
    if default.exists() {
        tek_testkit::skip!("{} exists on this machine", default.display());
        return;
    }
    let socket = Path::new(agent::config::DEFAULT_SOCKET);
    let socket_before = socket.exists();
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = agent_exit(dir.path(), &[]);
    assert!(!ok, "started without a configuration:\n{err}");
    assert!(
        err.contains("no configuration at /etc/tek/agent.toml") && err.contains("--config"),
        "{err}"
    );
    if !socket_before {
        assert!(!socket.exists(), "the socket was bound before refusing");
    }

    // An explicit file that does not exist: refused, naming it.
    let missing = dir.path().join("nope/agent.toml");
    let (ok, err) = agent_exit(dir.path(), &["--config", &missing.display().to_string()]);
    assert!(!ok);
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

/// A depot and a configuration with its socket inside the depot (no bays: no disk on this
/// machine is ever matched).
fn temp_agent(dir: &Path, socket: &str) -> (agent::config::Config, agent::Depot) {
    let cfg = agent::config::Config {
        socket: dir.join(socket),
        ..Default::default()
    };
    (cfg, agent::Depot::at(&dir.join("state")))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Asks the agent on `socket` for its status, retrying until it answers (30 s at most).
async fn status_of(socket: &Path) -> agent::server::protocol::Status {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = agent::server::client::Client::connect(&socket)
                .and_then(|mut c| c.call(agent::server::protocol::Op::Status));
            match answer {
                Ok(st) => return st,
                Err(e) if Instant::now() > deadline => panic!("the agent never answered: {e:#}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
    .await
    .unwrap()
}

#[test]
fn agent_run_serves_a_bound_socket_until_shutdown_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, depot) = temp_agent(dir.path(), "agent.sock");
    let socket = cfg.socket.clone();
    runtime().block_on(async {
        let listener = agent::server::bind_socket(&socket, "tek-no-such-group").unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(agent::run(cfg, depot, listener, async {
            let _ = stopped.await;
        }));
        let status = status_of(&socket).await;
        assert!(
            status.bays.is_empty() && status.jobs.is_empty(),
            "{}",
            status.summary
        );
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), daemon)
            .await
            .expect("the agent did not stop after shutdown")
            .unwrap()
            .unwrap();
    });
    assert!(!socket.exists(), "the socket file outlived the agent");
}

#[test]
fn second_agent_run_on_the_same_state_refuses_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, depot) = temp_agent(dir.path(), "first.sock");
    let (second_cfg, _) = temp_agent(dir.path(), "second.sock");
    let first_socket = cfg.socket.clone();
    runtime().block_on(async {
        let listener = agent::server::bind_socket(&first_socket, "tek-no-such-group").unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn(agent::run(cfg, depot.clone(), listener, async {
            let _ = stopped.await;
        }));
        // Once its socket answers, the first agent owns the journal.
        status_of(&first_socket).await;
        let second_socket = second_cfg.socket.clone();
        let listener = agent::server::bind_socket(&second_socket, "tek-no-such-group").unwrap();
        let err = agent::run(second_cfg, depot, listener, std::future::pending())
            .await
            .unwrap_err();
        assert!(
            err.is::<agent::job::journal::JournalBusy>(),
            "not refused as busy: {err:#}"
        );
        assert!(!second_socket.exists(), "the refused agent left its socket");
        stop.send(()).unwrap();
        first.await.unwrap().unwrap();
    });
}
