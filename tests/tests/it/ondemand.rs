//! A bench with `[library] url` pulls on demand (issue 14): a job for an image its store does
//! not have fetches it from a real S3 server (`s3s-fs` on 127.0.0.1) while the disk is written;
//! a corrupt object fails the job naming the chunk and its URL with the disk not reported
//! written; with the server down a cached image still runs and the record says so, and an
//! image neither cached nor reachable is refused with the reason.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tek_e2e::*;

use tek_testkit::servers::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, s3s_fs};

const MIB: u64 = 1 << 20;

/// The chunk ids of `sample@1` in image order, from the bench's manifest.
fn chunk_ids(b: &Bench) -> Vec<String> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(b.state.join("store/images/sample/1.json")).unwrap())
            .unwrap();
    m["extents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "chunk")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// The disk holds the image, byte for byte (`cmp`; the disks are the image's size, so no GPT
/// is moved to a larger disk's end).
fn disk_is_image(disk: &Path, image: &Path) {
    let len = std::fs::metadata(image).unwrap().len().to_string();
    tek_testkit::run_ok(
        Command::new("cmp").args(["-n", &len]).arg(image).arg(disk),
        None,
    );
}

fn source(job: &Value) -> String {
    job["results"]["image"]["source"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A bench with bays `bays`, images of their own flavour `import`ed besides `sample@1`, an S3
/// server, `images` pushed to `s3://library/lib` (the bench's store keeps them), and
/// `[library]` configured with the key in a 0600 credentials file.
fn bench_with_library(
    name: &str,
    bays: &[&str],
    import: &[&str],
    images: &[&str],
    cache_max_bytes: Option<u64>,
) -> (Bench, S3Server) {
    let s3 = s3s_fs().expect("checked by the caller");
    let b = Bench::new(name, bays, "");
    for image in import {
        import_flavour(&b, image);
    }
    let server = S3Server::start(&s3, &b.root().join("s3"));
    let url = format!("s3://{BUCKET}/lib");
    for image in images {
        let pushed = b
            .tek_cmd()
            .args(["image", "push", image, "--to", &url])
            .env("AWS_ENDPOINT_URL", server.endpoint())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap();
        assert!(
            pushed.status.success(),
            "{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
    }
    let creds = b.root().join("library.toml");
    std::fs::write(
        &creds,
        format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = std::fs::read_to_string(&b.config).unwrap();
    cfg += &format!(
        "[library]\nurl = \"{url}\"\ncredentials = \"{}\"\nendpoint = \"{}\"\n",
        creds.display(),
        server.endpoint()
    );
    if let Some(n) = cache_max_bytes {
        cfg += &format!("cache_max_bytes = {n}\n");
    }
    std::fs::write(&b.config, cfg).unwrap();
    (b, server)
}

fn have_s3s_fs() -> bool {
    if s3s_fs().is_none() {
        tek_testkit::skip("needs s3s-fs (cargo install s3s-fs@0.14.1 --features binary --locked)");
        return false;
    }
    true
}

#[test]
fn a_bench_pulls_on_demand_refuses_corruption_and_runs_offline_from_its_cache() {
    if !need_root("a_bench_pulls_on_demand_refuses_corruption_and_runs_offline_from_its_cache") {
        return;
    }
    if !have_s3s_fs() {
        return;
    }
    let (mut b, server) = bench_with_library("ondemand", &["bay1"], &[], &["sample@1"], None);
    let url = format!("s3://{BUCKET}/lib");
    let ids = chunk_ids(&b);
    let bad = &ids[ids.len() / 2];
    let chunk_file = std::fs::read(
        b.state
            .join(format!("store/chunks/{}/{bad}.zst", &bad[..2])),
    )
    .unwrap();
    // An empty cache: the bench's store goes.
    std::fs::remove_dir_all(b.state.join("store")).unwrap();

    // A corrupt chunk mid-image (inside its pack file, which holds the store's chunk files back
    // to back): the job fails naming the chunk and its pack; the disk is not reported written.
    let (object, at) = std::fs::read_dir(server.object_path("lib/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .find_map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let at = bytes
                .windows(chunk_file.len())
                .position(|w| w == &chunk_file[..])?;
            Some((p, at))
        })
        .expect("a pack holds the chunk");
    let good = std::fs::read(&object).unwrap();
    let mut corrupt = good.clone();
    corrupt[at + chunk_file.len() / 2] ^= 0x10;
    std::fs::write(&object, &corrupt).unwrap();
    b.start_agent();
    let id = b.add_job("T-OD-1", "bay1", None);
    let (_disk1, lo1) = b.plug("bay1", 1, 64 * MIB);
    let job = b.wait_state(&id, "failed", 120);
    let err = job["error"].as_str().unwrap_or_default();
    eprintln!("corrupt object: {err}");
    assert!(err.contains(bad.as_str()), "{err}");
    assert!(err.contains(&format!("{url}/packs/")), "{err}");
    assert_ne!(job["results"]["write"]["result"]["status"], "ok", "{job:#}");
    assert!(!b.state.join("store/images/sample/1.json").exists());
    drop(lo1);

    // The object repaired: a job on an empty disk completes from the library.
    std::fs::write(&object, &good).unwrap();
    let id = b.add_job("T-OD-2", "bay1", None);
    let (disk2, lo2) = b.plug("bay1", 2, 64 * MIB);
    let job = b.wait_state(&id, "done", 180);
    let said = source(&job);
    eprintln!("from the library: {said}");
    assert!(said.starts_with(&format!("fetched from {url}: ")), "{said}");
    disk_is_image(&disk2, &b.image);
    assert!(
        b.state.join("store/images/sample/1.json").exists(),
        "the image is cached"
    );
    drop(lo2);

    // The library down: the cached image still runs, and the record says so.
    drop(server);
    let id = b.add_job("T-OD-3", "bay1", None);
    let (disk3, lo3) = b.plug("bay1", 3, 64 * MIB);
    let job = b.wait_state(&id, "done", 180);
    let said = source(&job);
    eprintln!("library down: {said}");
    assert!(said.starts_with("library unreachable ("), "{said}");
    assert!(said.ends_with("; using cached copy"), "{said}");
    let shown = String::from_utf8_lossy(&b.tek(&["job", "show", &id]).stdout).to_string();
    assert!(shown.contains(&format!("source:   {said}")), "{shown}");
    disk_is_image(&disk3, &b.image);
    drop(lo3);

    // Not cached and the library down: refused with the reason, no secret in it.
    let out = b.tek(&[
        "job", "add", "--ticket", "T-OD-4", "--image", "other@1", "--bay", "bay1",
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("other@1 is not in the local store, and the library at s3://library/lib"),
        "{e}"
    );
    assert!(!e.contains(SECRET_KEY), "{e}");
    eprintln!("not cached, library down: {e}");
    assert!(b.stop(), "the agent stops cleanly");
}

/// Imports a sample image of its own flavour (some chunks of its own) as `image`, signed.
fn import_flavour(b: &Bench, image: &str) {
    let work = b.root().join(format!("work-{image}"));
    std::fs::create_dir_all(&work).unwrap();
    let file = agent::sample::build_image(&work, image).unwrap();
    let f = file.display().to_string();
    b.import_signed(&["--data-partition", "DATA", image, &f]);
}

/// Sets the last use of `image` to `hours` ago (what a job using it then would have left).
fn used_hours_ago(b: &Bench, image: &str, hours: u32) {
    let dir = b.state.join("library/last-used");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(image);
    std::fs::write(&p, b"").unwrap();
    let when = format!("{hours} hours ago");
    tek_testkit::run_ok(Command::new("touch").args(["-d", &when]).arg(&p), None);
}

#[test]
fn after_a_pull_the_least_recently_used_refetchable_unpinned_images_are_evicted_and_audited() {
    if !need_root("after_a_pull_the_least_recently_used_refetchable_unpinned_images_are_evicted")
        || !have_s3s_fs()
    {
        return;
    }
    // local@1 is never pushed: it could not be fetched again, so it is never evicted.
    let own = ["old@1", "older@1", "queued@1", "local@1"];
    let pushed = ["sample@1", "old@1", "older@1", "queued@1"];
    let (mut b, _server) = bench_with_library("evict", &["bay1", "bay2"], &own, &pushed, Some(1));
    for (image, hours) in [
        ("local@1", 5),
        ("older@1", 4),
        ("queued@1", 3),
        ("old@1", 2),
    ] {
        used_hours_ago(&b, image, hours);
    }
    // sample@1 leaves the cache (its manifest; a gc below may sweep its chunks meanwhile).
    b.tek_ok(&["image", "rm", "sample@1"]);
    b.start_agent();
    // A queued job pins queued@1: no disk in bay2.
    b.tek_ok(&[
        "job", "add", "--ticket", "T-Q", "--image", "queued@1", "--bay", "bay2",
    ]);
    // Real processes racing the pull, the job's write and the eviction: `tek image gc` with no
    // age margin, over and over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (stop, mut cmd) = (stop.clone(), b.tek_cmd());
        cmd.args(["image", "gc", "--min-age", "0"]);
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs += 1;
            }
            runs
        })
    };
    let id = b.add_job("T-EV", "bay1", None);
    let (disk, lo) = b.plug("bay1", 1, 64 * MIB);
    let job = b.wait_state(&id, "done", 180);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc.join().unwrap();
    assert!(runs > 0);
    assert!(
        source(&job).starts_with("fetched from s3://library/lib: "),
        "{job:#}"
    );
    disk_is_image(&disk, &b.image);
    drop(lo);

    // Least recently used first; pinned (queued@1, sample@1 just pulled) and not re-fetchable
    // (local@1) images stay.
    let log = std::fs::read_to_string(b.state.join("audit/audit.log")).unwrap();
    let evicted: Vec<String> = log
        .lines()
        .filter(|l| l.contains("\"image_evicted\""))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let e = if v["event"].is_object() {
                &v["event"]
            } else {
                &v
            };
            format!(
                "{}@{}",
                e["image"].as_str().unwrap(),
                e["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(evicted, ["older@1", "old@1"], "{log}");
    let list = b.tek_ok(&["image", "list"]);
    for kept in ["sample@1", "queued@1", "local@1"] {
        assert!(
            list.contains(kept.split('@').next().unwrap()),
            "{kept}: {list}"
        );
    }
    for gone in ["old", "older"] {
        assert!(
            !b.state.join(format!("store/images/{gone}/1.json")).exists(),
            "{gone}"
        );
    }
    b.tek_ok(&["image", "verify", "sample@1"]);
    assert!(b.stop(), "the agent stops cleanly");
}

#[test]
fn tek_image_pull_without_from_uses_the_benchs_library_its_credentials_and_cache_limit() {
    if !need_root("tek_image_pull_without_from_uses_the_benchs_library") || !have_s3s_fs() {
        return;
    }
    let (b, _server) = bench_with_library(
        "pullcfg",
        &["bay1"],
        &["old@1", "local@1"],
        &["sample@1", "old@1"],
        Some(1),
    );
    used_hours_ago(&b, "old@1", 2);
    used_hours_ago(&b, "local@1", 5);
    b.tek_ok(&["image", "rm", "sample@1"]);
    // No --from and no AWS_* variables: the URL, endpoint and key come from [library].
    let listed = b.tek_ok(&["image", "list", "--remote"]);
    assert!(
        listed.contains("sample@1") && listed.contains("old@1"),
        "{listed}"
    );
    let out = b.tek_ok(&["image", "pull", "sample@1"]);
    assert!(
        out.contains("pulled sample@1 from s3://library/lib: "),
        "{out}"
    );
    // Past cache_max_bytes: old@1 (re-fetchable) goes; local@1 (never pushed) and the image
    // just pulled stay, and the line says why.
    assert!(out.contains("evicted old@1 from the cache"), "{out}");
    assert!(
        out.contains("over its limit of 1 B; kept: local@1 (not re-fetchable"),
        "{out}"
    );
    assert!(out.contains("sample@1 (just pulled)"), "{out}");
    assert!(!b.state.join("store/images/old/1.json").exists());
    b.tek_ok(&["image", "verify", "sample@1"]);
    let log = std::fs::read_to_string(b.state.join("audit/audit.log")).unwrap();
    assert_eq!(log.matches("\"image_evicted\"").count(), 1, "{log}");

    // --json: the pull's fields and the eviction.
    b.tek_ok(&["image", "rm", "sample@1"]);
    let out = b.tek_ok(&["image", "pull", "sample@1", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["image"], "sample@1", "{v:#}");
    assert!(v["eviction"]["kept"].is_array(), "{v:#}");

    // Without [library] and without --from: refused, saying what to give.
    std::fs::write(&b.config, "").unwrap();
    let out = b.tek(&["image", "pull", "sample@1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no library to use: give its URL"), "{err}");
}
