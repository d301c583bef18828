//! The state root (`--state`): a command that only reads refuses one that does not exist and
//! creates nothing (a misspelt `--state` must not make an empty depot that seems to hold
//! nothing); a command that stores something creates it, says so once, and makes the root,
//! `jobs/` and `reports/` private (0700), also under a umask of 000.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// `tek --state STATE ARGS` under `umask` (through sh, so the test process keeps its own).
fn tek(state: &Path, umask: &str, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_tek"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("TEK_STORE")
        .env_remove("TEK_KEK")
        .env_remove("TEK_CONFIG")
        .env("TEK_SOCKET", state.with_extension("no-agent.sock"))
        .output()
        .expect("running tek")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn reading_commands_refuse_a_missing_state_root_and_create_nothing() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("misspelt");
    for args in [
        &["image", "list"][..],
        &["image", "show", "a@1"],
        &["image", "stats"],
        &["image", "gc", "--dry-run"],
        &["image", "verify", "--all"],
        &["data", "list"],
        &["data", "deletions"],
        &["audit", "show"],
        &["audit", "verify"],
        &["audit", "head"],
        &["backup", "prune"],
        &["report", "j-00000000000000000000000000000000"],
        &["write", "a@1", "/nonexistent-target", "--yes"],
    ] {
        let o = tek(&state, "022", args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "tek {args:?} succeeded");
        assert!(
            err.contains(&format!("state root {} does not exist", state.display())),
            "tek {args:?}: {err}"
        );
        assert!(!state.exists(), "tek {args:?} created {}", state.display());

        // The same as the JSON error object on stdout.
        let o = tek(&state, "022", &[args, &["--json"]].concat());
        assert!(!o.status.success(), "tek {args:?} --json succeeded");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("tek {args:?} --json: {e}: {o:?}"));
        assert_eq!(
            v["error"]["code"], "state_root_missing",
            "tek {args:?}: {v}"
        );
        assert!(!state.exists(), "tek {args:?} --json created it");
    }
}

#[test]
fn storing_commands_create_a_private_root_and_say_so_once() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    let img = img.to_str().unwrap();
    let src = src.to_str().unwrap();
    let ingest = ["data", "ingest", "--client", "c-1", "--ticket", "T-1", src];
    for (first, again) in [
        (
            &["image", "import", "a@1", img][..],
            &["image", "import", "a@2", img][..],
        ),
        (&ingest[..], &ingest[..]),
        (
            &["image", "keygen", "k1"][..],
            &["image", "keygen", "k2"][..],
        ),
    ] {
        // Under a parent that does not exist yet either, with nothing masked.
        let state = d
            .path()
            .join(format!("new-{}", first[..2].join("-")))
            .join("state");
        let o = tek(&state, "000", first);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "tek {first:?}: {err}");
        let said = format!("tek: created state root {}", state.display());
        assert_eq!(err.matches(&said).count(), 1, "tek {first:?}: {err}");
        for dir in [state.clone(), state.join("jobs"), state.join("reports")] {
            assert_eq!(mode(&dir), 0o700, "{} after tek {first:?}", dir.display());
        }
        let o = tek(&state, "000", again);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "tek {again:?}: {err}");
        assert!(!err.contains("created state root"), "said twice: {err}");
        // What the command made inside is private too (custody's reports/sanitization...).
        for e in walk(&state) {
            let m = std::fs::symlink_metadata(&e).unwrap();
            if m.is_dir()
                && ["jobs", "reports", "staging", "keys"]
                    .iter()
                    .any(|n| e.ends_with(n))
            {
                assert_eq!(mode(&e), 0o700, "{}", e.display());
            }
        }
    }
}

/// Every path under `root`.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Commands that talk to the agent never touch the state root, existing or not; `tek job list`,
/// which reads the journal when no agent answers, refuses a missing one instead of listing no
/// jobs.
#[test]
fn agent_commands_leave_the_state_root_alone() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("none");
    for (args, code) in [
        (&["status"][..], "agent_unreachable"),
        (
            &[
                "job", "add", "--ticket", "T-1", "--image", "a@1", "--bay", "b",
            ],
            "agent_unreachable",
        ),
        (&["job", "list"], "state_root_missing"),
    ] {
        let o = tek(&state, "022", args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "tek {args:?} without an agent succeeded"
        );
        assert!(
            err.contains("connecting to the agent"),
            "tek {args:?}: {err}"
        );
        assert!(!state.exists(), "tek {args:?} created {}", state.display());
        let o = tek(&state, "022", &[args, &["--json"]].concat());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["error"]["code"], code, "tek {args:?}: {v}");
    }
}

/// Two first imports into one fresh root at once (real processes): exactly one says it created
/// the root, exactly one stores the image, the other is told the image exists (it used to fail
/// with "renaming into place .../store.json: No such file or directory", both saying "created").
#[test]
fn two_first_imports_racing_on_a_fresh_root_create_it_once() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("race.img");
    std::fs::write(&img, tek_testkit::bytes(7, 4 << 20)).unwrap();
    for round in 0..3 {
        let state = d.path().join(format!("root{round}"));
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_tek"))
                .arg("--state")
                .arg(&state)
                .args(["image", "import", "--no-audit", "w@1"])
                .arg(&img)
                .env_remove("TEK_STORE")
                .env("TEK_SOCKET", state.with_extension("no-agent.sock"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
        let created = outs
            .iter()
            .filter(|o| err(o).contains("created state root"))
            .count();
        assert_eq!(created, 1, "round {round}: {:?}", outs.map(|o| err(&o)));
        let ok = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(ok, 1, "round {round}: {:?}", outs.map(|o| err(&o)));
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        assert!(err(loser).contains("already exists"), "{}", err(loser));
        let v = tek(&state, "022", &["image", "verify", "w@1"]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
}
