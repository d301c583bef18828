//! Support for the end-to-end tests: a per-test bench (scratch directory, depot, agent config
//! with virtual bays bound to this test's own files, the signed sample image imported), the
//! `tek agent` process, loop devices (re-exported from `client-data`'s RAII helper), a tmux
//! terminal, and independent checks (sgdisk, byte ranges, mounting and hashing files, the audit chain).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use client_data::loopdev::{LoopDevice, LoopOptions, can_attach};

mod checks;
mod throttle;
mod tmux;
pub use checks::*;
use serde_json::Value;
pub use throttle::Throttle;
pub use tmux::Tmux;

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// The sample image's partitions (see `agent::sample`): (first byte, length).
pub const ROOT_RANGE: (u64, u64) = (18432 * 512, 16 << 20);
/// The sample image's DATA partition.
pub const DATA_RANGE: (u64, u64) = (51200 * 512, 32 << 20);

/// Path of the `tek` binary built in this workspace (`TEK_BIN` overrides). The test command is
/// `cargo build --workspace && cargo test --workspace`, so it exists beside the test binary.
pub fn tek_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TEK_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/e2e-HASH -> target/<profile>/tek
    let exe = std::env::current_exe().expect("locating the test binary");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary in target/<profile>/deps");
    let bin = dir.join("tek");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// True when the test can use loop devices and mounts; otherwise prints why it skips.
pub fn need_root(test: &str) -> bool {
    if can_attach() {
        return true;
    }
    tek_testkit::skip!("{test}: needs root and loop devices (CI runs as root)");
    false
}

/// A running `tek agent`.
pub struct AgentProc {
    child: Child,
}

/// The ticket [`Bench::ingest`] ingests for: jobs migrating that data use it.
pub const E2E_TICKET: &str = "T-E2E";

/// One test's bench: scratch dir, depot, config, agent.
pub struct Bench {
    dir: tempfile::TempDir,
    /// State root.
    pub state: PathBuf,
    /// Agent config file.
    pub config: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// The sample image file (imported as `sample@1`, signed).
    pub image: PathBuf,
    agent: Option<AgentProc>,
}

impl Bench {
    /// A bench with the given virtual bays (`NAME`, or `NAME=IMAGE` for a provisioning bay)
    /// and extra `[policy]` lines; imports `sample@1`, signed by a trusted key, with data
    /// partition `DATA`.
    pub fn new(test: &str, bays: &[&str], policy: &str) -> Bench {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tek-e2e-{test}-"))
            .tempdir()
            .expect("creating scratch dir");
        let root = dir.path().to_path_buf();
        let state = root.join("state");
        let socket = root.join("agent.sock");
        let config = root.join("agent.toml");
        std::fs::create_dir_all(root.join("bays")).unwrap();
        let mut cfg = format!(
            "socket = {:?}\nstate = {:?}\n[policy]\n{policy}\n",
            socket.display().to_string(),
            state.display().to_string()
        );
        for spec in bays {
            // `NAME=IMAGE` makes a provisioning bay with that default image.
            let (b, default) = match spec.split_once('=') {
                Some((b, img)) => (b, format!("default_image = {img:?}\n")),
                None => (*spec, String::new()),
            };
            cfg += &format!(
                "[[bay]]\nname = {b:?}\nloop_backing = \"{}/bays/{b}-*.img\"\n{default}",
                root.display()
            );
        }
        std::fs::write(&config, cfg).unwrap();
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let image = agent::sample::build_image(&work, test).expect("building the sample image");
        let b = Bench {
            dir,
            state,
            config,
            socket,
            image,
            agent: None,
        };
        b.tek_ok(&["image", "keygen", "--dir", &b.p("keys"), "depot"]);
        std::fs::create_dir_all(b.state.join("trusted-keys")).unwrap();
        std::fs::copy(
            b.root().join("keys/depot.pub"),
            b.state.join("trusted-keys/depot.pub"),
        )
        .unwrap();
        let img = b.image.display().to_string();
        b.import_signed(&["--data-partition", "DATA", "sample@1", &img]);
        b
    }

    /// The scratch directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the scratch directory, as a string.
    pub fn p(&self, rel: &str) -> String {
        self.root().join(rel).display().to_string()
    }

    /// `tek --state STATE` with `TEK_CONFIG` set, not yet run.
    pub fn tek_cmd(&self) -> Command {
        let mut c = Command::new(tek_bin());
        c.arg("--state")
            .arg(&self.state)
            .env("TEK_CONFIG", &self.config)
            .env_remove("TEK_SOCKET");
        c
    }

    /// Runs `tek --state STATE ARGS` with `TEK_CONFIG` set.
    pub fn tek(&self, args: &[&str]) -> Output {
        tek_testkit::run(self.tek_cmd().args(args))
    }

    /// Runs tek, panicking with both streams and the scratch directory's listing when it
    /// fails; returns stdout.
    pub fn tek_ok(&self, args: &[&str]) -> String {
        let out = tek_testkit::run_ok(self.tek_cmd().args(args), Some(self.root()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `tek image import --sign-key` (the bench's depot key) `ARGS...`, which must succeed;
    /// its standard output.
    pub fn import_signed(&self, args: &[&str]) -> String {
        let key = self.p("keys/depot.key");
        let mut all = vec!["image", "import", "--sign-key", key.as_str()];
        all.extend_from_slice(args);
        self.tek_ok(&all)
    }

    /// Starts `tek agent` and waits until its socket answers.
    pub fn start_agent(&mut self) {
        self.start_agent_with_env(&[]);
    }

    /// [`Bench::start_agent`] with extra environment variables.
    pub fn start_agent_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.agent.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("agent.log"))
            .unwrap();
        let child = Command::new(tek_bin())
            .arg("--state")
            .arg(&self.state)
            .arg("agent")
            .arg("--config")
            .arg(&self.config)
            .env("TEK_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting tek agent");
        self.agent = Some(AgentProc { child });
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(a) = &mut self.agent
                && let Ok(Some(st)) = a.child.try_wait()
            {
                panic!("tek agent exited with {st}:\n{}", self.agent_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tek agent did not listen within 15 s:\n{}",
            self.agent_log()
        );
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent not running").child.id()
    }

    /// `kill -9` the agent.
    pub fn kill9(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
    }

    /// SIGTERM the agent and wait for it to exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut a) = self.agent.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(a.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(st)) = a.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = a.child.kill();
        let _ = a.child.wait();
        false
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.root().join("agent.log")).unwrap_or_default()
    }

    /// Ingests the generated sample client data (via the client-data library into this
    /// depot) for client `client-e2e`, ticket [`E2E_TICKET`] (a job migrates only its own
    /// ticket's data); returns the dataset id and the source directory.
    pub fn ingest(&self) -> (String, PathBuf) {
        self.ingest_for("client-e2e", E2E_TICKET)
    }

    /// [`Bench::ingest`] for another client and ticket.
    pub fn ingest_for(&self, client: &str, ticket: &str) -> (String, PathBuf) {
        let src = agent::sample::build_client_data(&self.root().join("work"))
            .expect("generating client data");
        let custody = self.custody();
        let info = custody
            .ingest(client, ticket, &src)
            .expect("ingesting client data");
        (info.id.to_string(), src)
    }

    /// The depot's custody.
    pub fn custody(&self) -> client_data::Custody {
        client_data::Custody::open(client_data::CustodyPaths::under(&self.state))
            .expect("opening custody")
    }

    /// Creates a sparse disk file in `bay` (`bays/<bay>-<n>.img`) of `size` bytes.
    pub fn disk_file(&self, bay: &str, n: u32, size: u64) -> PathBuf {
        let p = self.root().join(format!("bays/{bay}-{n}.img"));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    /// Creates a sparse disk file in `bay` and attaches it as a loop device: a disk plugged in.
    pub fn plug(&self, bay: &str, n: u32, size: u64) -> (PathBuf, LoopDevice) {
        let disk = self.disk_file(bay, n, size);
        let lo = LoopDevice::attach(&disk).unwrap();
        (disk, lo)
    }

    /// The journaled record of a job (read from the state directory, not the agent).
    pub fn job_record(&self, id: &str) -> Value {
        let p = self.state.join(format!("jobs/{id}.json"));
        let text = std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        serde_json::from_slice(&text).unwrap()
    }

    /// Polls the journal until `pred` holds for job `id`.
    pub fn wait_job(
        &self,
        id: &str,
        what: &str,
        secs: u64,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < Duration::from_secs(secs) {
            let p = self.state.join(format!("jobs/{id}.json"));
            if let Ok(text) = std::fs::read(&p)
                && let Ok(v) = serde_json::from_slice::<Value>(&text)
            {
                if pred(&v) {
                    return v;
                }
                last = v;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!(
            "job {id}: {what} not reached in {secs} s; last record:\n{}\nagent log:\n{}",
            serde_json::to_string_pretty(&last).unwrap(),
            self.agent_log()
        );
    }

    /// Every journaled job record, oldest first.
    pub fn job_records(&self) -> Vec<Value> {
        let mut v: Vec<Value> = std::fs::read_dir(self.state.join("jobs"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|t| serde_json::from_slice(&t).ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|j: &Value| j["history"][0]["at"].as_str().unwrap_or("").to_string());
        v
    }

    /// Waits for job `id` to reach `state`.
    pub fn wait_state(&self, id: &str, state: &str, secs: u64) -> Value {
        self.wait_job(id, state, secs, |v| v["state"] == state)
    }

    /// `tek status --json`.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.tek_ok(&["status", "--json"])).unwrap()
    }

    /// Adds a job for a bay; returns its id.
    pub fn add_job(&self, ticket: &str, bay: &str, data: Option<&str>) -> String {
        let mut args = vec![
            "job", "add", "--ticket", ticket, "--image", "sample@1", "--bay", bay,
        ];
        if let Some(d) = data {
            args.extend(["--data", d]);
        }
        self.tek_ok(&args).trim().to_string()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.kill9();
    }
}
