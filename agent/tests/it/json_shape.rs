//! The `--json` convention, command by command (README "Output for scripts"): stdout holds one
//! JSON document; a list is an array of objects; a size is a whole number under a key ending
//! in `_bytes` (or `bytes`), never a bare `size`; a time is an RFC 3339 string; a failure is
//! `{"error": {"code", "message"}}` with a non-zero exit.
//!
//! The commands come from `tek --help` itself, walked down to every leaf: a new command with
//! `--json` but no case here fails the test, and so does a command without `--json` that is
//! not one of the live views.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Commands that have no `--json`, and why.
const NO_JSON: &[(&str, &str)] = &[
    ("agent", "the daemon"),
    ("board", "a full-screen live view"),
    ("demo", "a narrated walk-through in its own depot"),
    ("completions", "prints a shell script"),
    ("man", "prints a manual page"),
];

/// What a command's `--json` output must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// An array of objects.
    List,
    /// One object.
    Object,
    /// JSON Lines: one object per line (the audit log as stored).
    Lines,
    /// The error object, with a non-zero exit.
    Error,
}

/// A depot with a signed image, a staged dataset, and a `tek agent` serving it.
struct Depot {
    dir: tempfile::TempDir,
    agent: Child,
}

impl Depot {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn sock(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    fn tek(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(self.state())
            .args(args)
            .env("TEK_SOCKET", self.sock())
            .env("TEK_CONFIG", self.dir.path().join("agent.toml"))
            .env_remove("TEK_STORE")
            .env_remove("TEK_KEK")
            .env_remove("TEK_TRUSTED_KEYS")
            .output()
            .expect("running tek")
    }
    fn new() -> Depot {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        // A small GPT image whose audit is clean (`image audit --json` must succeed).
        crate::common::gpt_image(dir.path());
        std::fs::create_dir(p("src")).unwrap();
        std::fs::write(p("src/a.txt"), "a").unwrap();
        std::fs::create_dir(p("backups")).unwrap();
        std::fs::create_dir(p("restored")).unwrap();
        std::fs::write(
            p("agent.toml"),
            format!(
                "socket = {:?}\nstate = {:?}\n[policy]\nallow_unsigned = true\n",
                p("agent.sock").display().to_string(),
                p("state").display().to_string()
            ),
        )
        .unwrap();
        // The depot exists before the agent starts, as the commands below expect.
        let o = Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(p("state"))
            .args(["image", "import", "a@1"])
            .arg(p("disk.img"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let log = std::fs::File::create(p("agent.log")).unwrap();
        let agent = Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(p("state"))
            .arg("agent")
            .arg("--config")
            .arg(p("agent.toml"))
            .env_remove("TEK_KEK")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let log = p("agent.log");
        let d = Depot { dir, agent };
        let start = Instant::now();
        while UnixStream::connect(d.sock()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for Depot {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// Every leaf command of `tek` (`["image", "list"]`, ...), with whether its help offers
/// `--json`.
fn leaf_commands(prefix: &[String], out: &mut BTreeMap<String, bool>) {
    let o = Command::new(env!("CARGO_BIN_EXE_tek"))
        .args(prefix)
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success(), "tek {prefix:?} --help");
    let help = String::from_utf8(o.stdout).unwrap();
    let subs: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    if subs.is_empty() {
        out.insert(prefix.join(" "), help.contains("--json"));
    }
    for s in subs {
        let mut p = prefix.to_vec();
        p.push(s);
        leaf_commands(&p, out);
    }
}

/// Checks one value against the convention, naming the path of what breaks it.
fn check_value(v: &Value, at: &str, problems: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{at}.{k}");
                // The manifest as stored (`tek image show`): a document in its own versioned
                // format (ARCHITECTURE.md), shown as it is signed.
                if here == ".manifest" {
                    continue;
                }
                if k == "size" && x.is_number() {
                    problems.push(format!("{here}: a size under a key not ending in _bytes"));
                }
                if (k.ends_with("_bytes") || k == "bytes") && !(x.is_u64() || x.is_null()) {
                    problems.push(format!("{here}: {x} is no byte count"));
                }
                let time_key =
                    k.ends_with("_at") || ["created", "at", "time"].contains(&k.as_str());
                if time_key && !(x.is_string() || x.is_null()) {
                    problems.push(format!("{here}: {x} is no RFC 3339 string"));
                }
                check_value(x, &here, problems);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                check_value(x, &format!("{at}[{i}]"), problems);
            }
        }
        // Anything that starts like a date and a time must be one, in RFC 3339.
        Value::String(s)
            if looks_like_time(s)
                && time::OffsetDateTime::parse(
                    s,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_err() =>
        {
            problems.push(format!("{at}: {s:?} is no RFC 3339 time"));
        }
        _ => {}
    }
}

fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 16
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
}

/// Runs `tek ARGS` and checks its output has `shape`; returns the parsed output.
fn check(d: &Depot, args: &[&str], shape: Shape) -> Value {
    let o = d.tek(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    let what = format!("tek {}", args.join(" "));
    let v: Value = match shape {
        Shape::Lines => Value::Array(
            out.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
                .collect(),
        ),
        _ => serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{what}: not one JSON document ({e}):\n{out}\n{err}")),
    };
    match shape {
        Shape::Error => {
            assert!(!o.status.success(), "{what} succeeded: {out}");
            let e = &v["error"];
            assert!(
                e["code"].as_str().is_some_and(|c| !c.is_empty())
                    && e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: not the error object: {v}"
            );
            assert_eq!(v.as_object().unwrap().len(), 1, "{what}: {v}");
        }
        _ => {
            assert!(o.status.success(), "{what}: {err}\n{out}");
            // (A job's `error` is its last failure as a sentence, null while none.)
            if v.get("error").is_some_and(Value::is_object) {
                panic!("{what}: an error object on success: {v}");
            }
        }
    }
    match shape {
        Shape::List | Shape::Lines => {
            let a = v
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no array: {v}"));
            assert!(
                a.iter().all(Value::is_object),
                "{what}: not all objects: {v}"
            );
        }
        Shape::Object | Shape::Error => assert!(v.is_object(), "{what}: no object: {v}"),
    }
    let mut problems = Vec::new();
    check_value(&v, "", &mut problems);
    assert!(
        problems.is_empty(),
        "{what}:\n{}\n{v:#}",
        problems.join("\n")
    );
    v
}

#[test]
fn every_command_with_json_follows_the_convention() {
    let d = Depot::new();
    let img = d.path("disk.img");
    let src = d.path("src");
    let (out, restored, backups) = (d.path("out.img"), d.path("restored"), d.path("backups"));
    let keys = d.path("keys");
    let mut seen: Vec<Vec<String>> = Vec::new();
    let mut run = |args: &[&str], shape: Shape| -> Value {
        seen.push(args.iter().map(|a| a.to_string()).collect());
        check(&d, &[args, &["--json"]].concat(), shape)
    };

    run(&["image", "import", "b@1", &img], Shape::Object);
    run(&["image", "import", "b@1", &img], Shape::Error); // exists
    run(&["image", "keygen", "k1", "--dir", &keys], Shape::Object);
    let key = format!("{keys}/k1.key");
    run(&["image", "sign", "b@1", "--key", &key], Shape::Object);
    run(
        &["image", "set", "b@1", "--data-path", "/srv", "--unsign"],
        Shape::Object,
    );
    run(&["image", "list"], Shape::List);
    run(&["image", "show", "a@1"], Shape::Object);
    run(&["image", "show", "nope@1"], Shape::Error);
    run(&["image", "export", "a@1", &out], Shape::Object);
    run(&["image", "stats"], Shape::Object);
    run(&["image", "verify", "a@1"], Shape::List);
    run(&["image", "audit", "a@1"], Shape::Object);
    run(
        &[
            "image",
            "accept",
            "a@1",
            "--finding",
            "f-none",
            "--reason",
            "x",
        ],
        Shape::Error,
    );
    run(&["image", "gc", "--dry-run"], Shape::Object);
    run(&["image", "rm", "b@1"], Shape::Object);
    // The remote library needs a server (library/tests); here only the refusal's shape.
    run(
        &["image", "push", "a@1", "--to", "file:///srv/lib"],
        Shape::Error,
    );
    run(
        &["image", "pull", "a@1", "--from", "file:///srv/lib"],
        Shape::Error,
    );
    run(
        &["image", "list", "--remote", "file:///srv/lib"],
        Shape::Error,
    );

    run(
        &["write", "a@1", &out, "--yes", "--allow-unsigned"],
        Shape::List,
    );

    let ds = run(
        &["data", "ingest", "--client", "c-1", "--ticket", "T-1", &src],
        Shape::Object,
    );
    let ds = ds["id"].as_str().unwrap().to_string();
    run(&["data", "list"], Shape::List);
    run(&["data", "show", &ds], Shape::Object);
    run(&["data", "show", "ds-nope"], Shape::Error);
    run(&["data", "restore", &ds, &restored], Shape::Object);
    run(&["data", "wipe", &ds], Shape::Object);
    run(
        &[
            "data",
            "withdraw",
            "--client",
            "c-1",
            "--received",
            "2026-01-02",
        ],
        Shape::Object,
    );
    run(&["data", "reactivate", "--client", "c-1"], Shape::Object);
    run(&["data", "deletions"], Shape::List);
    run(
        &["backup", "keys", &backups, "--same-filesystem"],
        Shape::Object,
    );
    run(&["backup", "prune"], Shape::List);

    run(&["audit", "verify"], Shape::Object);
    run(&["audit", "show"], Shape::Lines);
    run(&["audit", "head"], Shape::Object);
    run(
        &[
            "audit",
            "breach-report",
            "--from",
            "2020-01-01",
            "--to",
            "2099-01-01",
        ],
        Shape::Object,
    );

    let job = run(
        &[
            "job", "add", "--ticket", "T-2", "--image", "a@1", "--serial", "S-1",
        ],
        Shape::Object,
    );
    let job = job["id"].as_str().unwrap().to_string();
    run(
        &[
            "job",
            "add",
            "--ticket",
            "T-2",
            "--image",
            "a@1",
            "--bay",
            "no-such-bay",
        ],
        Shape::Error,
    );
    run(&["job", "list"], Shape::List);
    run(&["job", "show", &job], Shape::Object);
    run(
        &["job", "show", "j-00000000000000000000000000000000"],
        Shape::Error,
    );
    run(&["job", "cancel", &job], Shape::Object);
    run(&["report", &job], Shape::Object);
    run(&["job", "retry", &job], Shape::Object);
    run(&["status"], Shape::Object);
    run(&["bays"], Shape::List);
    run(&["bays", "--discover"], Shape::List);

    // Every command with --json has a case above; every other one is a live view or a document.
    let mut leaves = BTreeMap::new();
    leaf_commands(&[], &mut leaves);
    for (cmd, has_json) in &leaves {
        let exempt = NO_JSON.iter().any(|(c, _)| c == cmd);
        match (has_json, exempt) {
            (true, _) => {
                let words: Vec<&str> = cmd.split(' ').collect();
                assert!(
                    seen.iter()
                        .any(|a| a.len() >= words.len() && a[..words.len()] == words[..]),
                    "tek {cmd} --json has no case here"
                );
            }
            (false, true) => {}
            (false, false) => panic!("tek {cmd} has no --json"),
        }
    }
}

/// A command line that does not parse, with `--json`: the error object, code `usage`, exit 2.
#[test]
fn a_bad_command_line_with_json_is_the_error_object() {
    let o = Command::new(env!("CARGO_BIN_EXE_tek"))
        .args(["image", "list", "--json", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["code"], "usage", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--no-such-flag"),
        "{v}"
    );
}
