//! The control socket of a real `tek agent` process against clients that need processes of
//! their own: other uids (authorization, per-uid caps), a huge request line (the agent's
//! memory), and an agent out of file descriptors (EMFILE: backoff, a small log, no spinning,
//! also while loop devices come and go and each uevent finds sysfs unreadable).
//! Needs root (to run clients as uid 65534 and lower the agent's fd limit); says so and skips
//! otherwise.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use client_data::loopdev::{LoopDevice, can_attach};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A `tek agent` with no bays on a socket in a scratch directory that every uid may reach.
struct Agent {
    dir: tempfile::TempDir,
    sock: PathBuf,
    child: Child,
}

impl Agent {
    fn start(group: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("agent.sock");
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "socket = {:?}\nsocket_group = {group:?}\nstate = {:?}\n",
                sock.display().to_string(),
                dir.path().join("state").display().to_string()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .env("TEK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut a = Agent { dir, sock, child };
        let start = Instant::now();
        while UnixStream::connect(&a.sock).is_err() {
            if let Ok(Some(st)) = a.child.try_wait() {
                panic!("tek agent exited with {st}:\n{}", a.log());
            }
            assert!(start.elapsed() < Duration::from_secs(15), "{}", a.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        // As if an administrator had opened the socket to everyone: authorization must not
        // depend on the file mode.
        std::fs::set_permissions(&a.sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        a
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `tek ARGS --socket SOCK` as `uid`/`gid` (no supplementary groups).
    fn tek_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        let state = self.dir.path().join(format!("client-{uid}-{gid}"));
        std::fs::create_dir_all(&state).unwrap();
        nix::unistd::chown(
            &state,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(&state)
            .args(args)
            .arg("--socket")
            .arg(&self.sock)
            .env_remove("TEK_CONFIG")
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A group that exists here and that uid 65534 is not in (gid 1, `daemon` on Debian).
fn other_group() -> Option<(String, u32)> {
    let g = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(1)).ok()??;
    let nobody = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(NOBODY)).ok()??;
    (nobody.gid.as_raw() != 1 && !g.mem.contains(&nobody.name)).then_some((g.name, 1))
}

#[test]
fn other_uids_may_read_but_only_group_members_may_change_jobs() {
    if !is_root() {
        tek_testkit::skip!("needs root");
        return;
    }
    let Some((group, gid)) = other_group() else {
        tek_testkit::skip!("no group with gid 1 that excludes nobody");
        return;
    };
    let a = Agent::start(&group);
    // Anyone who can connect may read.
    let o = a.tek_as(NOBODY, NOBODY, &["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = a.tek_as(NOBODY, NOBODY, &["job", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Not a member: refused, saying who may.
    for args in [
        &["job", "cancel", "j-nope"][..],
        &["job", "retry", "j-nope"],
        &[
            "job", "add", "--ticket", "T-1", "--image", "a@1", "--bay", "left",
        ],
    ] {
        let o = a.tek_as(NOBODY, NOBODY, args);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("uid 65534") && e.contains(&format!("members of group {group} may")),
            "{args:?}: {e}"
        );
    }
    assert!(a.log().contains("refused: uid 65534"), "{}", a.log());
    // A member (by its primary gid) is authorized: the request reaches the jobs.
    let o = a.tek_as(NOBODY, gid, &["job", "cancel", "j-nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no job j-nope"), "{}", stderr(&o));
    // Root too.
    let o = a.tek_as(0, 0, &["job", "cancel", "j-nope"]);
    assert!(stderr(&o).contains("no job j-nope"), "{}", stderr(&o));
}

#[test]
fn one_uid_at_its_connection_cap_does_not_lock_out_others() {
    if !is_root() {
        tek_testkit::skip!("needs root");
        return;
    }
    let a = Agent::start("no-such-group-tek");
    // uid 0 takes its 16 connections (each answered once, so each is really accepted).
    let held: Vec<UnixStream> = (0..16)
        .map(|_| {
            let s = UnixStream::connect(&a.sock).unwrap();
            (&s).write_all(b"{\"v\":1,\"op\":\"job_list\"}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert!(line.contains("\"ok\":true"), "{line}");
            s
        })
        .collect();
    let o = a.tek_as(0, 0, &["status"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("uid 0 already holds 16 connections"),
        "{}",
        stderr(&o)
    );
    // Another uid is still served.
    let o = a.tek_as(NOBODY, NOBODY, &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(held);
}

/// The agent's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_512_mib_line_is_refused_without_growing_the_agent() {
    let a = Agent::start("no-such-group-tek");
    let s = UnixStream::connect(&a.sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        (0..512).map_while(|_| w.write_all(&chunk).ok()).count()
    });
    // An agent that buffers the whole line never answers: fail, do not hang.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .expect("no answer to a 512 MiB line within 60 s");
    assert!(line.contains("\"code\":\"line_too_long\""), "{line}");
    let sent = writer.join().unwrap();
    assert!(sent < 512, "the agent took all 512 MiB");
    let rss = peak_rss_kib(a.pid());
    assert!(rss < 64 * 1024, "agent peak RSS {rss} KiB");
    let o = a.tek_as(0, 0, &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields after the command: state(3) ... utime(14) stime(15); index = field - 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// Sets the soft RLIMIT_NOFILE of `pid` (the hard limit stays, so it can be raised again).
fn set_nofile(pid: u32, n: u64) {
    let o = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={n}:"))
        .output()
        .unwrap();
    assert!(o.status.success(), "prlimit: {}", stderr(&o));
}

#[test]
fn out_of_file_descriptors_the_agent_backs_off_logs_once_and_recovers() {
    if !Path::new("/usr/bin/prlimit").exists() && !Path::new("/bin/prlimit").exists() {
        tek_testkit::skip!("prlimit (util-linux) not installed");
        return;
    }
    let a = Agent::start("no-such-group-tek");
    let pid = a.pid();
    // Room for two more descriptors: the third connection cannot be accepted (EMFILE), and
    // stays in the listen backlog with the rest.
    set_nofile(pid, open_fds(pid) + 2);
    let log_before = a.log().len();
    let clients: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(&a.sock).unwrap())
        .collect();
    let ticks_before = cpu_ticks(pid);
    // Meanwhile disks come and go (as other tests' loop devices do on a busy machine): each
    // uevent makes the agent read sysfs, which needs descriptors it does not have. That must
    // cost one line, not one per event or per device (once a flood of 170 KB in 3 s).
    let storm = can_attach().then(|| LoopStorm::start(a.dir.path()));
    std::thread::sleep(Duration::from_secs(3));
    let storm_events = storm.map(LoopStorm::stop);
    let ticks = cpu_ticks(pid) - ticks_before;
    let log = a.log();
    let grown = log.len() - log_before;
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    assert!(
        ticks < ticks_per_s / 2,
        "the agent used {ticks} ticks of CPU in 3 s while out of descriptors"
    );
    assert!(grown < 4096, "the log grew by {grown} bytes in 3 s:\n{log}");
    let emfile = log
        .lines()
        .filter(|l| l.contains("accepting a control connection"))
        .count();
    assert!((1..=3).contains(&emfile), "{emfile} lines:\n{log}");
    let sysfs_short = log
        .lines()
        .filter(|l| l.contains("identifying disks: out of file descriptors"))
        .count();
    if let Some(n) = storm_events {
        assert!(n >= 10, "only {n} loop attaches in 3 s");
        assert_eq!(sysfs_short, 1, "{n} loop attaches:\n{log}");
    }
    // Descriptors come back: the agent serves again within its backoff (at most 1 s).
    drop(clients);
    set_nofile(pid, 1024);
    let start = Instant::now();
    loop {
        let o = a.tek_as(0, 0, &["status"]);
        if o.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not serving again: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = a.log();
    assert!(log.contains("accepting control connections again"), "{log}");
    if storm_events.is_some() {
        // The watcher reads sysfs again by itself (it re-scans every second while short).
        let start = Instant::now();
        while !a.log().contains("reading disks from sysfs again") {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the disk watcher did not recover:\n{}",
                a.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A thread attaching and detaching a loop device over a small sparse file, over and over,
/// until stopped: real uevents for every process listening, as a busy bench machine has.
struct LoopStorm {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl LoopStorm {
    fn start(dir: &Path) -> LoopStorm {
        let backing = dir.join("storm.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // Detached on drop, also if the test panics meanwhile.
                let dev = LoopDevice::attach(&backing).unwrap();
                n += 1;
                drop(dev);
            }
            n
        });
        LoopStorm { stop, thread }
    }

    /// Stops the storm; returns how many attaches it made.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A user listed as a supplementary member of a group in /etc/group: (group, uid, its gid).
fn supplementary_member() -> Option<(String, u32, u32)> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let gid: u32 = f.get(2)?.parse().ok()?;
        f.get(3)?.split(',').find_map(|m| {
            let u = nix::unistd::User::from_name(m).ok()??;
            (u.uid.as_raw() != 0 && u.gid.as_raw() != gid)
                .then(|| (f[0].to_string(), u.uid.as_raw(), u.gid.as_raw()))
        })
    })
}

#[test]
fn a_supplementary_member_of_the_group_may_change_jobs() {
    if !is_root() {
        tek_testkit::skip!("needs root");
        return;
    }
    let Some((group, uid, gid)) = supplementary_member() else {
        tek_testkit::skip!("no user with a supplementary group here");
        return;
    };
    let a = Agent::start(&group);
    // The client process carries no supplementary groups (dropped with the uid): membership
    // comes from the user database.
    let o = a.tek_as(uid, gid, &["job", "cancel", "j-nope"]);
    assert!(stderr(&o).contains("no job j-nope"), "{}", stderr(&o));
    let o = a.tek_as(NOBODY, NOBODY, &["job", "cancel", "j-nope"]);
    assert!(stderr(&o).contains("may not change jobs"), "{}", stderr(&o));
}
