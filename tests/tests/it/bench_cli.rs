//! The bench commands as a technician sees them (issue 13): `tek write` under a real terminal
//! (the prompt names the image and what each disk holds, the bars say the phase in words and
//! end with a done line), `tek status --watch` across an agent restart (timestamps, reconnects,
//! disks outside the bays hidden unless `--all`), and `tek bays --discover` marking the disk
//! that holds the depot's state.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tek_e2e::*;

/// Keeps a screen as a test artifact: `target/tmp/bench-screens/NAME.txt`.
fn keep(name: &str, screen: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-screens");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.txt")), screen);
}

#[test]
fn write_under_a_terminal_prompts_with_contents_and_draws_worded_bars() {
    let test = "write_under_a_terminal_prompts_with_contents_and_draws_worded_bars";
    if !need_root(test) || !tek_testkit::require_tool("tmux") {
        return;
    }
    if !tek_testkit::require(Throttle::available(), "cgroup v1 blkio throttling") {
        return;
    }
    let b = Bench::new("writetty", &[], "");
    // A disk outside every bay, holding an ext4 filesystem from an earlier life.
    let disk = b.root().join("old-disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "OLDLIFE"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    let lo = LoopDevice::attach(&disk).unwrap();
    // The pane waits for a key, so the test can throttle it (and the tek it execs) first.
    let cmd = format!(
        "read go; env TERM=xterm-256color {} --state {} write sample@1 {}; ",
        tek_bin().display(),
        b.state.display(),
        lo.path().display()
    );
    let session = format!("tek-write-{}", std::process::id());
    let t = Tmux::start(&session, &format!("sh -c '{cmd} echo EXIT=$?; sleep 600'"));
    let _throttle = Throttle::new(t.pane_pid(), lo.path(), 4_000_000, 8_000_000);
    t.keys(&["Enter"]);
    let s = t.wait("the prompt", 30, |s| s.contains("Continue? [y/N]"));
    keep("write-prompt", &s);
    assert!(
        s.contains("image: sample@1 (64.0 MiB, signed by trusted key depot)"),
        "{s}"
    );
    assert!(
        s.contains(
            "holds: no partition table; the whole disk is one ext4 filesystem labelled \"OLDLIFE\""
        ),
        "{s}"
    );
    assert!(
        s.contains(&format!(
            "Everything on {} will be overwritten with sample@1.",
            lo.path().display()
        )),
        "{s}"
    );
    t.keys(&["y", "Enter"]);
    let s = t.wait("a bar writing", 60, |s| {
        s.contains("writing ")
            && s.contains(" of 64.0 MiB")
            && s.contains("(write and verify: about ")
    });
    keep("write-writing", &s);
    let s = t.wait("the verify pass", 120, |s| {
        s.contains("verifying ") || s.contains("EXIT=")
    });
    keep("write-verifying", &s);
    let s = t.wait("the end", 180, |s| s.contains("EXIT="));
    keep("write-done", &s);
    assert!(s.contains("EXIT=0"), "{s}");
    assert!(s.contains("done: written and verified in"), "{s}");
    assert!(!s.contains("0 B/0 B") && !s.contains("0 B of 0 B"), "{s}");
    assert!(s.contains(": ok: "), "{s}");
    // What the prompt will say next time: the sample's GPT and its partitions.
    let again = b.tek(&["write", "sample@1", &lo.path().display().to_string()]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("holds: GPT, 3 partitions"), "{err}");
    assert!(err.contains("DATA") && err.contains("ext4"), "{err}");
    assert!(
        err.contains("refusing to write without --yes"),
        "stdin is no terminal here: {err}"
    );
}

/// `tek status --watch` with its stdout read by a thread into a shared string.
struct Watcher {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watcher {
    fn start(b: &Bench, extra: &[&str]) -> Watcher {
        let mut child = b
            .tek_cmd()
            .args(["status", "--watch"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Watcher { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn wait(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.text();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "status --watch: {what} not printed within {secs} s; output:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `line` starts with a `HH:MM:SS` time.
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
}

#[test]
fn status_watch_stamps_lines_hides_foreign_disks_and_survives_an_agent_restart() {
    let test = "status_watch_stamps_lines_hides_foreign_disks_and_survives_an_agent_restart";
    if !need_root(test) {
        return;
    }
    let mut b = Bench::new("watch", &["bay1"], "");
    b.start_agent();
    let w = Watcher::start(&b, &[]);
    let all = Watcher::start(&b, &["--all"]);
    w.wait("the status", 20, |s| s.contains("bay1"));
    // A disk outside every bay (not one of the bay's files): --watch does not list it,
    // --watch --all does.
    let foreign = b.root().join("foreign.img");
    std::fs::File::create(&foreign)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let flo = LoopDevice::attach(&foreign).unwrap();
    let fname = flo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    all.wait("the foreign disk with --all", 20, |s| {
        s.contains(&format!(
            "disk {fname} (16.0 MiB) arrived outside every bay"
        ))
    });
    // A disk in the bay: listed, with the time.
    let (_disk, lo) = b.plug("bay1", 1, 128 * MIB);
    let name = lo.path().file_name().unwrap().to_string_lossy().to_string();
    let s = w.wait("the bay's disk", 20, |s| {
        s.contains(&format!("disk {name} (128.0 MiB) arrived in bay bay1"))
    });
    assert!(!s.contains(&format!("disk {fname} ")), "{s}");
    let line = s
        .lines()
        .find(|l| l.contains("arrived in bay bay1"))
        .unwrap();
    assert!(stamped(line), "no time on: {line}");

    // The agent restarts: the watcher says so and carries on.
    assert!(b.stop());
    w.wait("the lost connection", 20, |s| {
        s.contains("agent connection lost")
    });
    b.start_agent();
    let s = w.wait("the reconnect", 20, |s| {
        s.contains("agent reachable again after")
    });
    let back = s
        .lines()
        .find(|l| l.contains("agent reachable again"))
        .unwrap();
    assert!(stamped(back), "{back}");
    // The status printed again after the reconnect names the bay's disk, and the count of
    // hidden disks, not their names.
    let after = &s[s.find("agent reachable again").unwrap()..];
    w.wait("the status after the reconnect", 20, |s| {
        let a = &s[s.find("agent reachable again").unwrap()..];
        a.contains("bay1") && a.contains(&name)
    });
    assert!(!after.contains(&format!("{fname} ")), "{after}");
    drop(flo);
    drop(lo);
    keep("status-watch", &w.text());
    keep("status-watch-all", &all.text());
}

#[test]
fn bays_discover_marks_the_disk_holding_the_state_root() {
    let test = "bays_discover_marks_the_disk_holding_the_state_root";
    if !need_root(test) || !tek_testkit::require_tool("mkfs.ext4") {
        return;
    }
    let b = Bench::new("discover", &["bay1"], "");
    let fs = b.root().join("statefs.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&fs)
            .status()
            .unwrap()
            .success()
    );
    let lo = LoopDevice::attach(&fs).unwrap();
    let mnt = b.root().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = DataMountAt::new(lo.path(), &mnt);
    let (_disk, bay_lo) = b.plug("bay1", 1, 16 * MIB);
    // The agent's state root (its config's `state`) on that filesystem.
    let depot = mnt.join("depot");
    std::fs::create_dir_all(&depot).unwrap();
    let config = b.root().join("discover.toml");
    std::fs::write(
        &config,
        format!(
            "state = {:?}\n[[bay]]\nname = \"bay1\"\nloop_backing = \"{}/bays/bay1-*.img\"\n",
            depot.display().to_string(),
            b.root().display()
        ),
    )
    .unwrap();
    let out = tek_testkit::run_ok(
        Command::new(tek_bin())
            .arg("--state")
            .arg(&b.state)
            .env("TEK_CONFIG", &config)
            .args(["bays", "--discover"]),
        Some(b.root()),
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = lo.path().file_name().unwrap().to_string_lossy().to_string();
    let bay_name = bay_lo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let line = |n: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("{n} not listed:\n{out}"))
            .to_string()
    };
    assert!(
        line(&name).contains("[SYSTEM DISK: holds the depot's state]"),
        "{out}"
    );
    let bay = line(&bay_name);
    assert!(
        bay.contains("[bay bay1]") && !bay.contains("SYSTEM"),
        "{out}"
    );
    drop(m);
}

/// An ext4 filesystem mounted at a given directory, unmounted on drop.
struct DataMountAt(std::path::PathBuf);

impl DataMountAt {
    fn new(dev: &std::path::Path, at: &std::path::Path) -> DataMountAt {
        let st = Command::new("mount").arg(dev).arg(at).status().unwrap();
        assert!(st.success(), "mounting {}", dev.display());
        DataMountAt(at.to_path_buf())
    }
}

impl Drop for DataMountAt {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
