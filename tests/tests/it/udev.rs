//! The udev rules on real loop devices (`udevadm test`, with the rules generated from a config by
//! `packaging/tek-bay-rules`), and why the unit may use PrivateNetwork= but not PrivateUsers=:
//! which namespaces kernel uevents reach. Needs root, `udevadm` and `unshare`; skips with a
//! printed reason otherwise (CI runs as root with them installed, so there nothing skips).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tek_e2e::{LoopDevice, can_attach};

use crate::support::{have, read, repo, run, skip, text};

/// Rules files installed into /etc/udev/rules.d for one test, removed on drop (also when the
/// test panics). Their names carry the pid so they never replace a real installation's files.
struct InstalledRules(Vec<PathBuf>);

impl InstalledRules {
    fn install(files: &[(String, String)]) -> InstalledRules {
        let dir = Path::new("/etc/udev/rules.d");
        fs::create_dir_all(dir).expect("creating /etc/udev/rules.d");
        let mut installed = InstalledRules(Vec::new());
        for (name, body) in files {
            let p = dir.join(name);
            assert!(!p.exists(), "{} already exists", p.display());
            fs::write(&p, body).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
            installed.0.push(p);
        }
        installed
    }
}

impl Drop for InstalledRules {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = fs::remove_file(p) {
                eprintln!("removing {}: {e}", p.display());
            }
        }
    }
}

/// Directories `udevadm test` writes into (its database, /dev/disk and /dev/block links). Each
/// test run mounts a tmpfs over them in a private mount namespace so nothing lands on the host;
/// the mount points themselves are created here when missing and removed again on drop.
const UDEV_SCRATCH: &[&str] = &["/run/udev", "/dev/disk", "/dev/block"];

struct MountPoints(Vec<PathBuf>);

impl MountPoints {
    fn ensure(dirs: &[&str]) -> MountPoints {
        let mut created = MountPoints(Vec::new());
        for d in dirs {
            let p = Path::new(d);
            if !p.exists() {
                fs::create_dir(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
                created.0.push(p.to_path_buf());
            }
        }
        created
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = fs::remove_dir(p) {
                eprintln!("removing {}: {e}", p.display());
            }
        }
    }
}

/// Runs `udevadm test --action=change` on our loop device, isolated as [`UDEV_SCRATCH`] says.
/// udevadm also applies the rules' owner and mode to the device node; our node gets its own
/// back afterwards.
fn udevadm_test(dev: &LoopDevice) -> String {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let node = dev.path();
    let before = fs::metadata(node).unwrap_or_else(|e| panic!("stat {}: {e}", node.display()));
    let script = r#"set -e
for d in /run/udev /dev/disk /dev/block; do mount -t tmpfs -o mode=0755 tek-udev-test "$d"; done
exec udevadm test --action=change "$1""#;
    let out = run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(format!("/sys/class/block/{}", dev.name()))
        .env("SYSTEMD_COLORS", "0"));
    fs::set_permissions(node, fs::Permissions::from_mode(before.mode() & 0o7777))
        .and_then(|()| std::os::unix::fs::chown(node, Some(before.uid()), Some(before.gid())))
        .unwrap_or_else(|e| panic!("restoring owner and mode of {}: {e}", node.display()));
    let t = text(&out);
    assert!(
        out.status.success(),
        "udevadm test {} failed:\n{t}",
        dev.name()
    );
    t
}

/// Lines of `udevadm test` output that complain about a rules file named `file`.
fn rule_complaints<'a>(output: &'a str, file: &str) -> Vec<&'a str> {
    const WORDS: &[&str] = &[
        "invalid",
        "unknown",
        "failed",
        "ignoring",
        "truncated",
        "error",
        "deprecated",
        "not supported",
    ];
    output
        .lines()
        .filter(|l| l.contains(file))
        .filter(|l| {
            let l = l.to_lowercase();
            WORDS.iter().any(|w| l.contains(w))
        })
        .collect()
}

#[test]
fn rule_complaints_are_found() {
    let out = "Reading rules file: /etc/udev/rules.d/70-x.rules\n\
               /etc/udev/rules.d/70-x.rules:3 Invalid key 'FOO'\n\
               loop0: /etc/udev/rules.d/70-x.rules:5 ENV{TEK_BAY}=\"a\"\n";
    assert_eq!(
        rule_complaints(out, "70-x.rules"),
        vec!["/etc/udev/rules.d/70-x.rules:3 Invalid key 'FOO'"]
    );
}

/// The properties `udevadm test` prints for the device at the end of its run.
fn property(output: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&prefix).map(String::from))
}

#[test]
fn udev_rules_mark_only_disks_in_a_bay() {
    if !have("udevadm") {
        return skip("udev_rules", "udevadm not installed");
    }
    if !can_attach() {
        return skip(
            "udev_rules",
            "needs root and /dev/loop-control to attach loop devices",
        );
    }
    if !have("unshare") {
        return skip("udev_rules", "unshare (util-linux) not installed");
    }
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let bay_file = dir.path().join("bay-1.img");
    let other_file = dir.path().join("other.img");
    for f in [&bay_file, &other_file] {
        fs::File::create(f)
            .and_then(|h| h.set_len(8 << 20))
            .unwrap_or_else(|e| panic!("creating {}: {e}", f.display()));
    }

    // The bay rules come from a config through the same generator an installation uses.
    let config = dir.path().join("agent.toml");
    let glob = format!("{}/bay-*.img", dir.path().display());
    fs::write(
        &config,
        format!("[[bay]]\nname = \"udev-test\"\nloop_backing = \"{glob}\"\n"),
    )
    .expect("writing the config");
    let gen_out = run(Command::new("sh")
        .arg(repo().join("packaging/tek-bay-rules"))
        .arg(&config));
    assert!(
        gen_out.status.success(),
        "tek-bay-rules failed:\n{}",
        text(&gen_out)
    );
    let bay_rules = String::from_utf8(gen_out.stdout).expect("rules are UTF-8");

    // The generic rules as shipped, except that a test must never start a real agent service
    // on a machine where udevd and systemd run.
    let bench = read("udev/70-tek-bench.rules");
    assert!(bench.contains("\"tek-agent.service\""));
    let bench = bench.replace("\"tek-agent.service\"", "\"tek-agent-udev-test.service\"");

    let pid = std::process::id();
    let bays_name = format!("69-tek-bays-test-{pid}.rules");
    let bench_name = format!("70-tek-bench-test-{pid}.rules");
    let _rules =
        InstalledRules::install(&[(bays_name.clone(), bay_rules), (bench_name.clone(), bench)]);

    let in_bay = LoopDevice::attach(&bay_file).expect("attaching the bay loop device");
    let outside = LoopDevice::attach(&other_file).expect("attaching the other loop device");

    // `udevadm test` runs the rules against the device's sysfs state without udevd; "change" is
    // the event a loop device gets when its backing file is set.
    let _mount_points = MountPoints::ensure(UDEV_SCRATCH);
    let marked = udevadm_test(&in_bay);
    for file in [&bays_name, &bench_name] {
        assert!(
            marked.contains(file.as_str()),
            "udevadm test did not read {file}:\n{marked}"
        );
        let bad = rule_complaints(&marked, file);
        assert!(
            bad.is_empty(),
            "udevadm complains about {file}:\n{}",
            bad.join("\n")
        );
    }
    for (key, want) in [
        ("TEK_BAY", "udev-test"),
        ("UDISKS_IGNORE", "1"),
        ("UDISKS_AUTO", "0"),
        ("UDISKS_SYSTEM", "1"),
        ("SYSTEMD_WANTS", "tek-agent-udev-test.service"),
    ] {
        assert_eq!(
            property(&marked, key).as_deref(),
            Some(want),
            "{key} on {} (in the bay):\n{marked}",
            in_bay.name()
        );
    }
    let tags = property(&marked, "TAGS").unwrap_or_default();
    assert!(tags.contains(":systemd:"), "TAGS={tags}");

    let untouched = udevadm_test(&outside);
    for key in ["TEK_BAY", "UDISKS_IGNORE", "SYSTEMD_WANTS"] {
        assert_eq!(
            property(&untouched, key),
            None,
            "{key} set on {}, which is in no bay:\n{untouched}",
            outside.name()
        );
    }
}

/// A kernel uevent listener (`udevadm monitor --kernel`) started through `unshare ARGS`, its
/// output lines collected by a thread; killed on drop.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    /// Starts the listener and waits until it listens (its banner), or returns why it did not.
    fn start(unshare_args: &[&str]) -> Result<Monitor, String> {
        use std::io::BufRead;
        let mut child = Command::new("unshare")
            .args(unshare_args)
            .args(["udevadm", "monitor", "--kernel", "--subsystem-match=block"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning unshare {unshare_args:?}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut monitor = Monitor { child, lines };
        // udevadm prints its banner once the netlink socket is bound.
        if monitor.wait_for(|l| l.contains("KERNEL - the kernel uevent"), 5) {
            Ok(monitor)
        } else {
            let _ = monitor.child.kill();
            let _ = monitor.child.wait();
            let mut err = String::new();
            if let Some(mut e) = monitor.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            Err(format!(
                "unshare {unshare_args:?} udevadm monitor did not start: {err}"
            ))
        }
    }

    /// Whether a line satisfying `pred` arrives within `secs` seconds.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unit's PrivateNetwork=yes is safe and PrivateUsers= is not: block-device uevents reach a
/// new network namespace owned by the initial user namespace, but not one owned by a new user
/// namespace (the kernel only broadcasts to network namespaces of the initial user namespace).
#[test]
fn uevents_reach_private_network_but_not_private_users() {
    if !have("udevadm") || !have("unshare") {
        return skip("uevents_namespaces", "udevadm or unshare not installed");
    }
    if !can_attach() {
        return skip("uevents_namespaces", "needs root and /dev/loop-control");
    }
    let mut netns = Monitor::start(&["--net"]).expect("listening in a new network namespace");
    let userns = match Monitor::start(&["--user", "--map-root-user", "--net"]) {
        Ok(m) => Some(m),
        Err(why) => {
            skip("uevents_namespaces (user namespace half)", &why);
            None
        }
    };
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let backing = dir.path().join("disk.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(1 << 20))
        .expect("creating the backing file");
    let dev = LoopDevice::attach(&backing).expect("attaching a loop device");
    // "KERNEL[123.456] change   /devices/virtual/block/loop3 (block)"
    let ours = format!("/block/{} ", dev.name());
    let is_ours = |l: &str| l.starts_with("KERNEL[") && l.contains(ours.as_str());
    assert!(
        netns.wait_for(is_ours, 5),
        "no uevent for {} in a private network namespace",
        dev.name()
    );
    if let Some(mut userns) = userns {
        assert!(
            !userns.wait_for(is_ours, 2),
            "a uevent for {} reached a network namespace of a new user namespace",
            dev.name()
        );
    }
}
