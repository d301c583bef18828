//! Checks of what tek ships around the binary: the systemd unit (`systemd-analyze security` and
//! `verify`), the install script, the bay-rules generator and the sample configuration. The udev
//! rules themselves are checked on real loop devices in `udev.rs`.
//!
//! Tools that are missing (`systemd-analyze`, `udevadm`) and missing root make a test skip with a
//! printed reason; CI installs `systemd` and `udev` and runs as root, so there nothing skips.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tek_e2e::tek_bin;

use crate::support::{have, read, repo, run, skip, text};
/// The highest `systemd-analyze security` exposure the unit may have, in tenths (1.5).
const MAX_EXPOSURE_TENTHS: u32 = 15;

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
        ("usr/local/share/bash-completion/completions/tek", 0o644),
        ("usr/local/share/zsh/vendor-completions/_tek", 0o644),
        ("usr/local/share/fish/vendor_completions.d/tek.fish", 0o644),
        ("usr/local/share/man/man1/tek.1", 0o644),
        ("usr/local/share/man/man1/tek-image-import.1", 0o644),
        ("usr/local/share/man/man1/tek-board.1", 0o644),
    ];
    for (rel, want) in expect {
        assert_eq!(mode(&root.join(rel)), want, "mode of {rel}");
    }
    assert!(root.join("etc/tek/trusted-keys").is_dir());
    // The completions are valid bash and complete the real subcommands; the man page is roff
    // naming every top-level command.
    let bash = root.join("usr/local/share/bash-completion/completions/tek");
    let out = run(Command::new("bash").arg("-n").arg(&bash));
    assert!(out.status.success(), "bash -n: {}", text(&out));
    let script = fs::read_to_string(&bash).unwrap();
    assert!(
        script.contains("complete -F _tek") && script.contains("import"),
        "{script}"
    );
    let page = fs::read_to_string(root.join("usr/local/share/man/man1/tek.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH tek 1"),
        "{page}"
    );
    for cmd in [
        "image", "write", "data", "audit", "board", "status", "report", "demo",
    ] {
        assert!(
            page.contains(&format!("tek\\-{cmd}(1)")),
            "tek.1 lacks {cmd}:\n{page}"
        );
    }
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
