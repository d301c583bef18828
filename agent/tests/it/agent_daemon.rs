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
