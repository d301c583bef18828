//! `tek image pull` stopped by a real SIGINT or SIGTERM (issue 14, finding F4): the verified
//! chunks that arrived since the last kept batch are kept (not lost with the process), the
//! command exits 130 / 143 saying how many chunks were kept, and the next pull fetches only
//! what is missing (counted in chunks, bytes and the web server's requests).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tek_e2e::*;

use tek_testkit::servers::{ACCESS_KEY, BUCKET, Nginx, S3Server, SECRET_KEY, nginx, s3s_fs};

/// Files under `dir`.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn stopped_pull_keeps_what_arrived(test: &str, signal: nix::sys::signal::Signal, code: i32) {
    if !need_root(test) {
        return;
    }
    let (Some(s3), Some(ng)) = (s3s_fs(), nginx()) else {
        tek_testkit::skip("needs s3s-fs and nginx");
        return;
    };
    let b = Bench::new(test, &[], "");
    // 16 MiB that do not compress: a few hundred chunks, all in the batch not yet kept.
    let raw = b.root().join("big.raw");
    std::fs::write(&raw, tek_testkit::bytes(5, 16 << 20)).unwrap();
    b.import_signed(&["--no-audit", "big@1", &raw.display().to_string()]);
    let server = S3Server::start(&s3, &b.root().join("s3"));
    let pushed = b
        .tek_cmd()
        .args([
            "image",
            "push",
            "big@1",
            "--to",
            &format!("s3://{BUCKET}/lib"),
        ])
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{pushed:?}");
    let chunks_dir = b.state.join("store/chunks");
    std::fs::remove_dir_all(b.state.join("store")).unwrap();

    // A slow web server (each response at 512 KB/s): the pull is under way for seconds.
    let bucket = server.root.join(BUCKET);
    let slow = Nginx::start(&ng, &bucket, &b.root().join("nginx-slow"), Some("512k"));
    let mut child = b
        .tek_cmd()
        .args(["image", "pull", "big@1", "--from", &slow.url("lib")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Chunks checked and written under the pull's tmp/, not yet kept (named): the batch a
    // signal used to lose.
    let tmp = b.state.join("store/tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(&tmp).is_empty() {
        assert!(Instant::now() < deadline, "no chunk arrived in 60 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended too soon"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let sent = Instant::now();
    nix::sys::signal::kill(pid, signal).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "{signal}: exit {:?} after {took:?}: {err}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        err.contains(&format!("stopped before every chunk arrived ({signal})")),
        "{err}"
    );
    let kept: u64 = err
        .split(" chunks fetched and verified before that are kept for the next pull")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of kept chunks in: {err}"));
    let on_disk = files(&chunks_dir);
    assert!(kept > 0, "{err}");
    assert_eq!(on_disk.len() as u64, kept, "{err}");
    let kept_bytes: u64 = on_disk
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    // The next pull (a fast server) fetches exactly the rest.
    let fast = Nginx::start(&ng, &bucket, &b.root().join("nginx-fast"), None);
    let v: Value = serde_json::from_str(&b.tek_ok(&[
        "image",
        "pull",
        "big@1",
        "--from",
        &fast.url("lib"),
        "--json",
    ]))
    .unwrap();
    eprintln!("resumed: {v}");
    let n = |k: &str| v[k].as_u64().unwrap();
    assert_eq!(n("present"), kept, "{v}");
    assert_eq!(n("fetched") + kept, n("chunks"), "{v}");
    // Every chunk of the image is there now, and its bytes came once: kept, or fetched now.
    let now = files(&chunks_dir);
    assert_eq!(now.len() as u64, n("chunks"), "{v}");
    let stored: u64 = now
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(n("fetched_bytes") + kept_bytes, stored, "{v}");
    let pack_requests = fast
        .requests()
        .iter()
        .filter(|(_, p)| p.ends_with(".pack"))
        .count() as u64;
    assert_eq!(pack_requests + 4, n("requests"), "{:?}", fast.requests());
    b.tek_ok(&["image", "verify", "big@1"]);
}

#[test]
fn library_pull_stopped_by_sigint_keeps_what_arrived_and_exits_130() {
    stopped_pull_keeps_what_arrived(
        "library_pull_stopped_by_sigint_keeps_what_arrived_and_exits_130",
        nix::sys::signal::Signal::SIGINT,
        130,
    );
}

#[test]
fn library_pull_stopped_by_sigterm_keeps_what_arrived_and_exits_143() {
    stopped_pull_keeps_what_arrived(
        "library_pull_stopped_by_sigterm_keeps_what_arrived_and_exits_143",
        nix::sys::signal::Signal::SIGTERM,
        143,
    );
}
