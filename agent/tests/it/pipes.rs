//! A closed output pipe (`tek image list | head -1`) ends a read-only command quietly, as it
//! ends coreutils: killed by SIGPIPE, nothing on stderr, never a panic (exit 101).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn tek(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tek"));
    c.arg("--state")
        .arg(state)
        .env_remove("TEK_KEK")
        .env_remove("TEK_STORE")
        .env_remove("TEK_TEST_NOW");
    c
}

fn ok(c: &mut Command) {
    let o = c.output().expect("running tek");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A depot with three images and an audit log holding a few events.
fn depot(dir: &Path) -> std::path::PathBuf {
    let state = dir.join("state");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    for v in ["1", "2", "3"] {
        ok(tek(&state)
            .args(["image", "import", &format!("pipe@{v}")])
            .arg(&img));
    }
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    for t in ["T-1", "T-2"] {
        ok(tek(&state)
            .args(["data", "ingest", "--client", "c-1", "--ticket", t])
            .arg(&src));
    }
    state
}

/// Runs `tek ARGS` with stdout a pipe whose reader has already gone (what `| head -1` leaves
/// once head has its line) and asserts a quiet end.
fn into_closed_pipe(state: &Path, args: &[&str]) {
    // nix, not std::io::pipe: that needs Rust 1.87 and the MSRV is 1.85.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let o = tek(state)
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.signal() == Some(libc::SIGPIPE) || o.status.success(),
        "tek {args:?}: {:?}\n{err}",
        o.status
    );
    assert!(err.is_empty(), "tek {args:?} said on stderr:\n{err}");
}

#[test]
fn read_only_commands_end_quietly_on_a_closed_pipe() {
    let d = tempfile::tempdir().unwrap();
    let state = depot(d.path());
    for args in [
        &["image", "list"][..],
        &["image", "list", "--json"],
        &["image", "show", "pipe@1"],
        &["image", "stats"],
        &["audit", "show"],
        &["audit", "show", "--json"],
        &["audit", "verify"],
        &["data", "list"],
        &["image", "export", "pipe@1", "-"],
    ] {
        into_closed_pipe(&state, args);
    }
}

/// The same through a real `| head -1` in bash: head gets the first line, tek's status is 0 or
/// the SIGPIPE kill (141, when head exits before tek's last write), never a panic (101), and
/// stderr stays empty. (Which of the two is a race; the test above makes the close certain.)
#[test]
fn head_gets_its_line_and_tek_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    let state = depot(d.path());
    for args in ["image list", "audit show"] {
        let script = format!(
            "\"$TEK\" --state \"$STATE\" {args} | head -1; echo \"status ${{PIPESTATUS[0]}}\""
        );
        let o = Command::new("bash")
            .args(["-c", &script])
            .env("TEK", env!("CARGO_BIN_EXE_tek"))
            .env("STATE", &state)
            .env_remove("TEK_STORE")
            .env_remove("TEK_KEK")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "tek {args} | head -1: {out}\n{err}");
        assert!(
            lines[1] == "status 141" || lines[1] == "status 0",
            "tek {args} | head -1: {}\n{err}",
            lines[1]
        );
        assert!(err.is_empty(), "tek {args} said on stderr:\n{err}");
    }
}
