//! Checks of what tek ships around the binary: the systemd unit (`systemd-analyze security` and
//! `verify`), the udev rules (`udevadm test` on real loop devices, with the rules generated from
//! a config by `packaging/tek-bay-rules`), the install script and the sample configuration.
//!
//! Tools that are missing (`systemd-analyze`, `udevadm`) and missing root make a test skip with a
//! printed reason; CI installs `systemd` and `udev` and runs as root, so there nothing skips.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tek_e2e::{LoopDevice, can_attach, tek_bin};

/// The highest `systemd-analyze security` exposure the unit may have, in tenths (1.5).
const MAX_EXPOSURE_TENTHS: u32 = 15;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Whether `tool` is on PATH.
fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

fn skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// stdout and stderr together, for tools that log diagnostics to either.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The unit with `ExecStart=` pointing at the freshly built `tek` (systemd-analyze checks that
/// the binary exists), written into `dir` under its real name.
fn unit_copy(dir: &Path) -> PathBuf {
    let unit = read("systemd/tek-agent.service");
    let from = "ExecStart=/usr/bin/tek ";
    assert!(unit.contains(from), "the unit has no `{from}` line");
    let to = format!("ExecStart={} ", tek_bin().display());
    let path = dir.join("tek-agent.service");
    fs::write(&path, unit.replace(from, &to)).expect("writing the unit copy");
    path
}

/// `key=value` lines of a unit file, in order, without comments and section headers.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Parses "→ Overall exposure level for tek-agent.service: 1.5 OK :-)" into tenths (15).
fn overall_exposure_tenths(report: &str) -> Option<u32> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let num = line.rsplit_once(": ")?.1.split_whitespace().next()?;
    let (int, frac) = num.split_once('.').unwrap_or((num, "0"));
    let frac = frac.chars().next().unwrap_or('0').to_digit(10)?;
    Some(int.parse::<u32>().ok()? * 10 + frac)
}

#[test]
fn exposure_parser_reads_systemd_output() {
    let out = "  NAME  DESCRIPTION  EXPOSURE\n✗ PrivateUsers=  Service has access to other users  0.2\n\
               \n→ Overall exposure level for tek-agent.service: 1.5 OK 🙂\n";
    assert_eq!(overall_exposure_tenths(out), Some(15));
    let ascii = "-> Overall exposure level for x.service: 9.6 UNSAFE :-(\n";
    assert_eq!(overall_exposure_tenths(ascii), Some(96));
    assert_eq!(overall_exposure_tenths("no such line"), None);
}

#[test]
fn unit_security_exposure_is_at_most_1_5() {
    if !have("systemd-analyze") {
        return skip("unit_security_exposure", "systemd-analyze not installed");
    }
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let unit = unit_copy(dir.path());
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_COLORS", "0"));
    let report = text(&out);
    // The findings that count against the unit, for the log when the assertion fails.
    for l in report.lines().filter(|l| l.starts_with('✗')) {
        eprintln!("{l}");
    }
    assert!(
        out.status.success(),
        "systemd-analyze security failed:\n{report}"
    );
    let tenths = overall_exposure_tenths(&report)
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
    eprintln!(
        "tek-agent.service exposure: {}.{}",
        tenths / 10,
        tenths % 10
    );
    assert!(
        tenths <= MAX_EXPOSURE_TENTHS,
        "exposure {}.{} above 1.5:\n{report}",
        tenths / 10,
        tenths % 10
    );
}

#[test]
fn unit_verifies_clean() {
    if !have("systemd-analyze") {
        return skip("unit_verifies_clean", "systemd-analyze not installed");
    }
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let unit = unit_copy(dir.path());
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_COLORS", "0"));
    let report = text(&out);
    // `verify` also loads the units ours depends on from the host (multi-user.target,
    // systemd-udevd.service...); what it says about those is the environment's business, so
    // only lines naming our unit fail the test. Unknown or unparsable keys in our unit are
    // reported as warnings with exit status 0, hence the text check on top of the status.
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("tek-agent")).collect();
    let noise: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("tek-agent"))
        .collect();
    if !noise.is_empty() {
        eprintln!("systemd-analyze verify, about other units (ignored):");
        for l in &noise {
            eprintln!("  {l}");
        }
    }
    assert!(
        ours.is_empty(),
        "systemd-analyze verify on the unit:\n{}",
        ours.join("\n")
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{report}"
    );
}

/// Guards against "improving" the exposure score with settings that would break the agent.
#[test]
fn unit_keeps_what_the_agent_needs() {
    let unit = read("systemd/tek-agent.service");
    let s = unit_settings(&unit);
    let one = |key: &str| -> String {
        let v = values(&s, key);
        assert_eq!(v.len(), 1, "{key}= should be set exactly once, found {v:?}");
        v[0].to_string()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(!one("WatchdogSec").is_empty());
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/tek agent --config /etc/tek/agent.toml"
    );
    assert_eq!(one("StateDirectory"), "tek");
    assert_eq!(one("RuntimeDirectory"), "tek");
    assert_eq!(one("ConfigurationDirectory"), "tek");
    assert_eq!(one("ProtectSystem"), "strict");
    // uevents do not reach a process in a new user namespace; the disks must stay visible.
    for (key, forbidden) in [
        ("PrivateUsers", "yes"),
        ("PrivateDevices", "yes"),
        ("ProcSubset", "pid"),
        ("MountFlags", "private"),
        ("DynamicUser", "yes"),
    ] {
        for v in values(&s, key) {
            assert!(
                !(v == forbidden || (forbidden == "yes" && matches!(v, "true" | "on" | "1"))),
                "{key}={v} breaks the agent (see the comments in the unit)"
            );
        }
    }
    let devices: Vec<&str> = values(&s, "DeviceAllow");
    for want in [
        "block-sd rw",
        "block-blkext rw",
        "block-loop rw",
        "/dev/loop-control rw",
    ] {
        assert!(
            devices.contains(&want),
            "DeviceAllow={want} missing: {devices:?}"
        );
    }
    assert_eq!(one("DevicePolicy"), "closed");
    let families = one("RestrictAddressFamilies");
    assert!(
        families.contains("AF_NETLINK") && families.contains("AF_UNIX"),
        "{families}"
    );
    assert!(!families.contains("AF_INET"), "{families}");
    let filters = values(&s, "SystemCallFilter").join(" ");
    assert!(
        filters.contains("@system-service") && filters.contains("@mount"),
        "{filters}"
    );
    // A non-root service only has the capabilities it is given as ambient ones: both sets must
    // be the same, and hold what mounting and restoring need (and not CAP_MKNOD).
    let caps = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = one(key).split_whitespace().map(String::from).collect();
        v.sort();
        v
    };
    let bounding = caps("CapabilityBoundingSet");
    assert_eq!(bounding, caps("AmbientCapabilities"));
    for want in [
        "CAP_SYS_ADMIN",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
    ] {
        assert!(
            bounding.iter().any(|c| c == want),
            "{want} missing: {bounding:?}"
        );
    }
    assert!(!bounding.iter().any(|c| c == "CAP_MKNOD"), "{bounding:?}");
    // The user the unit runs as is the one the sysusers file creates.
    let user = one("User");
    let sysusers = read("systemd/tek.sysusers");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user.as_str()])),
        "systemd/tek.sysusers does not create user {user}"
    );
    // The drivers behind the DeviceAllow= names are loaded at boot.
    let modules = read("systemd/tek.modules-load");
    for m in ["loop", "sd_mod"] {
        assert!(
            modules.lines().any(|l| l.trim() == m),
            "{m} not in tek.modules-load"
        );
    }
}

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

/// Mode bits of `p` (permissions only).
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_script_stages_into_a_destdir_idempotently() {
    let dest = tempfile::tempdir().expect("creating a temp dir");
    let install = |extra: &[&str]| -> String {
        let out = run(Command::new("sh")
            .arg(repo().join("packaging/install.sh"))
            .arg("--destdir")
            .arg(dest.path())
            .arg("--bin")
            .arg(tek_bin())
            .args(extra));
        let t = text(&out);
        assert!(out.status.success(), "install.sh {extra:?} failed:\n{t}");
        t
    };
    install(&[]);
    let root = dest.path();
    let expect = [
        ("usr/local/bin/tek", 0o755),
        ("usr/local/lib/systemd/system/tek-agent.service", 0o644),
        ("usr/local/lib/udev/rules.d/70-tek-bench.rules", 0o644),
        ("usr/local/lib/sysusers.d/tek.conf", 0o644),
        ("usr/local/lib/modules-load.d/tek.conf", 0o644),
        ("usr/local/share/tek/tek-bay-rules", 0o755),
        ("usr/local/share/doc/tek/agent.toml.example", 0o644),
        ("usr/local/share/doc/tek/69-tek-bays.rules.example", 0o644),
        ("usr/local/share/doc/tek/README.md", 0o644),
    ];
    for (rel, want) in expect {
        assert_eq!(mode(&root.join(rel)), want, "mode of {rel}");
    }
    assert!(root.join("etc/tek/trusted-keys").is_dir());
    // The sample is documentation: a live config is the administrator's decision.
    assert!(!root.join("etc/tek/agent.toml").exists());
    let unit = fs::read_to_string(root.join("usr/local/lib/systemd/system/tek-agent.service"))
        .expect("reading the installed unit");
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/tek agent --config /etc/tek/agent.toml\n"),
        "ExecStart not pointed at the prefix"
    );
    assert_eq!(
        fs::read(root.join("usr/local/bin/tek")).expect("reading the installed binary"),
        fs::read(tek_bin()).expect("reading the built binary")
    );

    // Again: same result, no temp files left behind.
    install(&[]);
    let mut leftovers = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)
            .expect("listing the destdir")
            .map(Result::unwrap)
        {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".tek-new") {
                leftovers.push(e.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The bay rules, generated into the destdir's /etc.
    install(&[
        "--bay-rules",
        repo()
            .join("packaging/agent.toml.example")
            .to_str()
            .unwrap(),
    ]);
    let rules = fs::read_to_string(root.join("etc/udev/rules.d/69-tek-bays.rules"))
        .expect("reading the generated bay rules");
    assert!(rules.contains("ENV{TEK_BAY}=\"left-dock\""), "{rules}");

    // A dry run changes nothing.
    let empty = tempfile::tempdir().expect("creating a temp dir");
    let out = run(Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .args(["--dry-run", "--destdir"])
        .arg(empty.path())
        .arg("--bin")
        .arg(tek_bin()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("would install"), "{}", text(&out));
    assert_eq!(fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn bay_rules_generator_matches_the_sample_and_refuses_what_it_cannot_express() {
    let generate = |toml: &str| -> Output {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let p = dir.path().join("agent.toml");
        fs::write(&p, toml).expect("writing the config");
        run(Command::new("sh")
            .arg(repo().join("packaging/tek-bay-rules"))
            .arg(&p))
    };
    let sample = generate(&read("packaging/agent.toml.example"));
    assert!(sample.status.success(), "{}", text(&sample));
    let rules = String::from_utf8_lossy(&sample.stdout);
    let bays: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("ENV{TEK_BAY}="))
        .collect();
    assert_eq!(
        bays,
        [
            "ENV{ID_PATH}==\"pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0\", ENV{TEK_BAY}=\"left-dock\"",
            "ENV{ID_PATH}==\"pci-0000:00:14.0-usb-0:4:1.0-scsi-0:0:0:0\", ENV{TEK_BAY}=\"right-dock\"",
            "KERNEL==\"loop*\", ATTR{loop/backing_file}==\"/srv/tek-virtual/bay1-*.img\", ENV{TEK_BAY}=\"virtual-1\"",
        ],
        "the commented-out provisioning bay must stay out"
    );
    for (toml, why) in [
        ("[[bay]]\nport_path = \"x\"\n", "has no name"),
        ("[[bay]]\nname = \"a\"\n", "needs exactly one of"),
        (
            "[[bay]]\nname = \"a\"\nport_path = \"x\"\nloop_backing = \"/y*\"\n",
            "needs exactly one of",
        ),
        (
            "[[bay]]\nname = \"a\"\nport_path = \"pci-*\"\n",
            "glob characters",
        ),
        (
            "[[bay]]\nname = \"a\"\nloop_backing = \"y/*\"\n",
            "absolute",
        ),
        (
            "[[bay]]\nname = \"a\"\nport_path = \"x\"\n[[bay]]\nname = \"a\"\nport_path = \"y\"\n",
            "used twice",
        ),
        (
            "[[bay]]\nname = \"a b\"\nport_path = \"x\"\n",
            "must be 1 or more",
        ),
        ("[[bay]]\nname = \"a\"\nport_path = \"x\\\"y\"\n", "escapes"),
        ("[[bay]]\nname = \"a\"\nport_path = x\n", "quoted string"),
    ] {
        let out = generate(toml);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{toml:?} accepted:\n{t}");
        assert!(
            t.contains(why) && t.contains("agent.toml:"),
            "{toml:?}: {t}"
        );
    }
}

/// The sample config is read by the agent's real parser (through `tek bays`, which loads and
/// validates it and lists the bays even with no agent running).
#[test]
fn sample_config_is_accepted_by_tek() {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let out = run(Command::new(tek_bin())
        .args(["bays", "--config"])
        .arg(repo().join("packaging/agent.toml.example"))
        .arg("--socket")
        .arg(dir.path().join("no-agent.sock")));
    let t = text(&out);
    assert!(
        out.status.success(),
        "tek bays rejected the sample config:\n{t}"
    );
    for bay in ["left-dock", "right-dock", "virtual-1"] {
        assert!(t.contains(bay), "{bay} missing from:\n{t}");
    }
}

/// Every file the Debian package and the install script take from the repository exists (a
/// rename would otherwise only show when someone runs `cargo deb`).
#[test]
fn packaged_files_exist() {
    let manifest = read("agent/Cargo.toml");
    let table = manifest
        .split_once("[package.metadata.deb]")
        .expect("agent/Cargo.toml has a [package.metadata.deb] table")
        .1;
    let mut sources = Vec::new();
    for line in table.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("[\"") {
            let src = rest.split('"').next().unwrap_or_default();
            if !src.starts_with("target/") {
                sources.push(src.to_string());
            }
        }
    }
    assert!(sources.len() >= 5, "found only {sources:?}");
    let agent = repo().join("agent");
    for s in &sources {
        assert!(
            agent.join(s).is_file(),
            "deb asset {s} (relative to agent/) missing"
        );
    }
    // systemd-units picks these up by name from unit-scripts = "../systemd".
    for f in ["systemd/tek-agent.service", "systemd/tek.sysusers"] {
        assert!(repo().join(f).is_file(), "{f} missing");
    }
    for f in ["packaging/debian/postinst", "packaging/debian/postrm"] {
        let body = read(f);
        assert!(
            body.contains("#DEBHELPER#"),
            "{f} lacks the #DEBHELPER# token"
        );
        assert_eq!(mode(&repo().join(f)) & 0o111, 0o111, "{f} not executable");
    }
}

/// The sysusers file creates the user the unit runs as and the socket group, here in a scratch
/// root (`systemd-sysusers --root`), as the package's postinst does on the real one.
#[test]
fn sysusers_creates_the_tek_user_and_group() {
    if !have("systemd-sysusers") {
        return skip("sysusers", "systemd-sysusers not installed");
    }
    let root = tempfile::tempdir().expect("creating a temp dir");
    let etc = root.path().join("etc");
    fs::create_dir(&etc).expect("creating etc");
    for f in ["passwd", "group", "shadow", "gshadow"] {
        fs::write(etc.join(f), "").expect("creating an empty account file");
    }
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo().join("systemd/tek.sysusers")));
    assert!(
        out.status.success(),
        "systemd-sysusers failed:\n{}",
        text(&out)
    );
    let passwd = fs::read_to_string(etc.join("passwd")).expect("reading passwd");
    let group = fs::read_to_string(etc.join("group")).expect("reading group");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("tek:"))
        .unwrap_or_else(|| panic!("no user tek in:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/tek", "{user}");
    assert!(fields[6].ends_with("nologin"), "{user}");
    let gid = group
        .lines()
        .find(|l| l.starts_with("tek:"))
        .unwrap_or_else(|| panic!("no group tek in:\n{group}"))
        .split(':')
        .nth(2)
        .unwrap();
    assert_eq!(fields[3], gid, "user tek's primary group is not tek");
}
