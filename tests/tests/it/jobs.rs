//! End-to-end tests of what a job may take and use: only disks in a bay, only its own ticket's
//! data, only the manifest it was written with, and only jobs that can succeed are accepted
//! (through `tek job add` and the raw socket alike). The real `tek` binary and agent, real loop
//! devices; the disk and the records are checked independently.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tek_e2e::*;

/// Sends one raw request line on the agent's socket and returns the reply.
fn raw(socket: &Path, req: Value) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connecting to the agent");
    let mut line = serde_json::to_vec(&req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

/// `tek ARGS` must fail; returns its stderr.
fn tek_err(b: &Bench, args: &[&str]) -> String {
    let out = b.tek(args);
    assert!(
        !out.status.success(),
        "tek {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The audit log's lines as JSON.
fn audit(b: &Bench) -> Vec<Value> {
    std::fs::read_to_string(b.state.join("audit/audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until `tek status --json` lists a disk named `name` with a status `pred` accepts.
fn wait_disk(b: &Bench, name: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut seen = Value::Null;
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some(d) = b.status()["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["disk"]["name"] == name)
        {
            seen = d.clone();
            if pred(&seen["status"]) {
                return seen;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("disk {name}: status not reached in {secs} s; last: {seen:#}");
}

fn loop_name(lo: &LoopDevice) -> String {
    lo.path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn serial_job_never_writes_a_disk_outside_every_bay() {
    if !need_root("serial_job_never_writes_a_disk_outside_every_bay") {
        return;
    }
    // Loop devices are on the "virtual" bus: allowed for serial jobs here.
    let mut b = Bench::new("serial-outside", &["bay1"], "allowed_buses = [\"virtual\"]");
    b.start_agent();
    let other = b.root().join("internal.img");
    std::fs::write(&other, vec![0x5au8; 16 * MIB as usize]).unwrap();
    let before = b3(&other);
    let lo = LoopDevice::attach(&other).unwrap();
    let name = loop_name(&lo);
    // Loop devices report no serial: the job names the disk by everything that identifies it
    // (its kernel name, its backing file); none of it may reach a disk outside every bay.
    let backing = other.display().to_string();
    let mut jobs = Vec::new();
    for serial in [name.as_str(), backing.as_str()] {
        let j = b.tek_ok(&[
            "job", "add", "--ticket", "T-201", "--image", "sample@1", "--serial", serial,
        ]);
        jobs.push(j.trim().to_string());
    }
    let seen = wait_disk(&b, &name, 10, |s| s["state"] == "ignored");
    let reason = seen["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("not in a bench bay"), "{reason}");
    std::thread::sleep(Duration::from_millis(500));
    drop(lo);
    assert_eq!(b3(&other), before, "a disk outside every bay was written");
    for j in &jobs {
        assert_eq!(b.job_record(j)["state"], "queued");
    }
}

#[test]
fn job_add_refuses_jobs_that_cannot_succeed_by_cli_and_socket() {
    if !need_root("job_add_refuses_jobs_that_cannot_succeed_by_cli_and_socket") {
        return;
    }
    let mut b = Bench::new("job-add-refusals", &["bay1"], "");
    let (alice, _) = b.ingest_for("C-ALICE", "T-ALICE");
    let (wiped, _) = b.ingest_for("C-ALICE", "T-WIPED");
    b.tek_ok(&["data", "wipe", &wiped, "--force", "--reason", "other"]);
    let img = b.image.display().to_string();
    // An image without a data partition hint, and an unsigned one.
    b.import_signed(&["nodata@1", &img]);
    b.tek_ok(&[
        "image",
        "import",
        "--data-partition",
        "DATA",
        "unsigned@1",
        &img,
    ]);
    b.start_agent();
    // (ticket, image, data, what the refusal must say)
    let cases: Vec<(&str, &str, Option<&str>, Vec<&str>)> = vec![
        ("T-1", "missing@1", None, vec!["missing@1"]),
        ("T-1", "unsigned@1", None, vec!["unsigned@1", "signature"]),
        (
            "T-ALICE",
            "nodata@1",
            Some(&alice),
            vec!["nodata@1", "no data partition"],
        ),
        ("T-WIPED", "sample@1", Some(&wiped), vec![&wiped, "wiped"]),
        (
            "T-BOB",
            "sample@1",
            Some(&alice),
            vec!["T-ALICE", "T-BOB", "--dataset-of-other-ticket"],
        ),
    ];
    for (ticket, image, data, says) in &cases {
        let mut args = vec![
            "job", "add", "--ticket", ticket, "--image", image, "--bay", "bay1",
        ];
        if let Some(d) = data {
            args.extend(["--data", d]);
        }
        let err = tek_err(&b, &args);
        let reply = raw(
            &b.socket,
            json!({"v": 1, "op": "job_add", "ticket": ticket, "image": image, "data": data,
                   "bay": "bay1"}),
        );
        assert_eq!(reply["ok"], false, "{reply}");
        let msg = reply["error"].as_str().unwrap();
        for s in says {
            assert!(err.contains(s), "tek job add {args:?}: {err:?} lacks {s:?}");
            assert!(msg.contains(s), "socket {image}: {msg:?} lacks {s:?}");
        }
    }
    assert!(b.job_records().is_empty(), "a refused job was journaled");
    // The explicit override is accepted, kept in the job record and audited without the
    // free-text reason.
    let reason = "follow-up ticket for the same repair";
    let out = b.tek_ok(&[
        "job",
        "add",
        "--ticket",
        "T-BOB",
        "--image",
        "sample@1",
        "--bay",
        "bay1",
        "--data",
        &alice,
        "--dataset-of-other-ticket",
        reason,
    ]);
    let job = out.trim();
    assert_eq!(b.job_record(job)["dataset_of_other_ticket"], reason);
    let audited: Vec<Value> = audit(&b)
        .into_iter()
        .filter(|e| e["event"] == "dataset_of_other_ticket")
        .collect();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["job"], job);
    assert_eq!(audited[0]["ticket"], "T-BOB");
    assert_eq!(audited[0]["dataset_ticket"], "T-ALICE");
    assert!(
        !audited[0].to_string().contains("follow-up"),
        "free text in the audit log"
    );
}

#[test]
fn image_rm_of_an_image_queued_jobs_use_is_refused_unless_forced() {
    if !need_root("image_rm_of_an_image_queued_jobs_use_is_refused_unless_forced") {
        return;
    }
    let mut b = Bench::new("image-rm", &["bay1"], "");
    let img = b.image.display().to_string();
    b.import_signed(&["--data-partition", "DATA", "other@1", &img]);
    b.start_agent();
    let job = b.tek_ok(&[
        "job", "add", "--ticket", "T-301", "--image", "sample@1", "--bay", "bay1",
    ]);
    let job = job.trim();
    let err = tek_err(&b, &["image", "rm", "sample@1"]);
    assert!(err.contains(job) && err.contains("--force"), "{err}");
    assert!(
        b.tek_ok(&["image", "list"]).contains("sample@1"),
        "removed anyway"
    );
    assert_eq!(b.job_record(job)["state"], "queued");
    // An image no job uses goes at once.
    b.tek_ok(&["image", "rm", "other@1"]);
    // --force fails the job through the running agent, with the reason, then removes.
    let out = b.tek_ok(&["image", "rm", "sample@1", "--force"]);
    assert!(out.contains(job), "{out}");
    let rec = b.job_record(job);
    assert_eq!(rec["state"], "failed");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("sample@1 was removed"),
        "{rec:#}"
    );
    assert!(!b.tek_ok(&["image", "list"]).contains("sample@1"));
    let shown = b.tek_ok(&["job", "list"]);
    assert!(shown.contains("failed"), "{shown}");

    // Without an agent the command fails the jobs itself.
    b.import_signed(&["--data-partition", "DATA", "sample@2", &img]);
    let job2 = b.tek_ok(&[
        "job", "add", "--ticket", "T-302", "--image", "sample@2", "--bay", "bay1",
    ]);
    let job2 = job2.trim().to_string();
    assert!(b.stop());
    let err = tek_err(&b, &["image", "rm", "sample@2"]);
    assert!(err.contains(&job2), "{err}");
    b.tek_ok(&["image", "rm", "sample@2", "--force"]);
    assert_eq!(b.job_record(&job2)["state"], "failed");
    // The restarted agent reads it as failed and keeps it so.
    b.start_agent();
    let jobs: Value = serde_json::from_str(&b.tek_ok(&["job", "list", "--json"])).unwrap();
    let j2 = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job2.as_str())
        .unwrap();
    assert_eq!(j2["state"], "failed");
}

#[test]
fn import_replace_between_write_and_migrate_is_refused() {
    if !need_root("import_replace_between_write_and_migrate_is_refused") {
        return;
    }
    let mut b = Bench::new("pinned-manifest", &["bay1"], "share_write_window_ms = 0");
    let img = b.image.display().to_string();
    let key = b.p("keys/depot.key");
    // First version: data path below a regular file of ROOT, so the first migration fails
    // after a verified write (the job then resumes at the migration on retry).
    b.tek_ok(&[
        "image",
        "import",
        "--replace",
        "--sign-key",
        &key,
        "--data-partition",
        "ROOT",
        "--data-path",
        "/etc/hostname/Users",
        "sample@1",
        &img,
    ]);
    let (dataset, _src) = b.ingest();
    b.start_agent();
    let job = b.add_job(E2E_TICKET, "bay1", Some(&dataset));
    let (disk, lo) = b.plug("bay1", 1, 128 * MIB);
    let rec = b.wait_state(&job, "failed", 60);
    assert!(
        history_states(&rec).contains(&"image_verified".to_string()),
        "{rec:#}"
    );
    let pinned = rec["results"]["image"]["manifest_hash"]
        .as_str()
        .unwrap()
        .to_string();
    // Replaced with other hints (another manifest under the same name), then retried.
    b.tek_ok(&[
        "image",
        "import",
        "--replace",
        "--sign-key",
        &key,
        "--data-partition",
        "DATA",
        "--data-path",
        "/Users",
        "sample@1",
        &img,
    ]);
    let now: Value =
        serde_json::from_str(&b.tek_ok(&["image", "show", "sample@1", "--json"])).unwrap();
    let data_before = read_range(&disk, DATA_RANGE.0, DATA_RANGE.1);
    b.tek_ok(&["job", "retry", &job]);
    let seen = wait_disk(&b, &loop_name(&lo), 20, |s| s["state"] == "refused");
    let reason = seen["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("replaced") && reason.contains(&pinned),
        "{reason} (now {})",
        now["manifest_hash"]
    );
    std::thread::sleep(Duration::from_millis(500));
    let rec = b.job_record(&job);
    assert_ne!(rec["state"], "done", "{rec:#}");
    assert!(rec["results"]["restore"].is_null(), "{rec:#}");
    assert_eq!(
        read_range(&disk, DATA_RANGE.0, DATA_RANGE.1),
        data_before,
        "the data partition was written"
    );
    let info = b.custody().dataset(&dataset.parse().unwrap()).unwrap();
    assert_eq!(format!("{:?}", info.state), "Staged");
}

#[test]
fn a_second_agent_on_the_same_state_is_refused() {
    if !need_root("a_second_agent_on_the_same_state_is_refused") {
        return;
    }
    let mut b = Bench::new("two-agents", &["bay1"], "");
    b.start_agent();
    // Same state, another socket: bind_socket cannot tell, the journal's owner lock does.
    let cfg = std::fs::read_to_string(&b.config).unwrap().replace(
        &b.socket.display().to_string(),
        &b.root().join("second.sock").display().to_string(),
    );
    let second = b.root().join("second.toml");
    std::fs::write(&second, cfg).unwrap();
    let mut child = std::process::Command::new(tek_bin())
        .arg("--state")
        .arg(&b.state)
        .arg("agent")
        .arg("--config")
        .arg(&second)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second agent ran on the same state");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("owns the job journal"), "{err}");
    assert!(
        !b.root().join("second.sock").exists(),
        "the socket was left behind"
    );
}

#[test]
fn image_rm_racing_job_adds_never_leaves_a_queued_job_for_a_removed_image() {
    if !need_root("image_rm_racing_job_adds_never_leaves_a_queued_job_for_a_removed_image") {
        return;
    }
    let mut b = Bench::new("rm-race", &["bay1"], "");
    let img = b.image.display().to_string();
    b.start_agent();
    for round in 0..4 {
        let image = format!("race@{round}");
        b.import_signed(&[&image, &img]);
        // Real processes: four `tek job add` and one `tek image rm --force` at once.
        let spawn = |args: Vec<String>| {
            std::process::Command::new(tek_bin())
                .arg("--state")
                .arg(&b.state)
                .args(&args)
                .env("TEK_CONFIG", &b.config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let add = |t: u32| {
            let t = format!("T-R{round}{t}");
            spawn(
                [
                    "job", "add", "--ticket", &t, "--image", &image, "--bay", "bay1",
                ]
                .map(String::from)
                .to_vec(),
            )
        };
        let mut adds: Vec<_> = (0..2).map(add).collect();
        let mut rm = spawn(
            ["image", "rm", "--force", &image]
                .map(String::from)
                .to_vec(),
        );
        adds.extend((2..4).map(add));
        for mut c in adds {
            c.wait().unwrap();
        }
        assert!(
            rm.wait().unwrap().success(),
            "round {round}: rm --force failed"
        );
        // Whatever the interleaving: the image is gone, and no job for it waits for a disk it
        // could only fail on (a job added after the removal was refused outright).
        assert!(!b.tek_ok(&["image", "list"]).contains(&image));
        for j in b.job_records() {
            if j["image"] == image.as_str() {
                assert_eq!(j["state"], "failed", "round {round}: {j:#}");
            }
        }
    }
}
