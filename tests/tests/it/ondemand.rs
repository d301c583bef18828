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

use crate::lib_servers::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, s3s_fs};

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

#[test]
fn a_bench_pulls_on_demand_refuses_corruption_and_runs_offline_from_its_cache() {
    if !need_root("a_bench_pulls_on_demand_refuses_corruption_and_runs_offline_from_its_cache") {
        return;
    }
    let Some(s3) = s3s_fs() else {
        tek_testkit::skip("needs s3s-fs (cargo install s3s-fs@0.14.1 --features binary --locked)");
        return;
    };
    let mut b = Bench::new("ondemand", &["bay1"], "");
    let server = S3Server::start(&s3, &b.root().join("s3"));
    let url = format!("s3://{BUCKET}/lib");
    let pushed = b
        .tek_cmd()
        .args(["image", "push", "sample@1", "--to", &url])
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

    // An empty cache: the bench's store goes, and the library is configured, its key in a
    // 0600 credentials file.
    let ids = chunk_ids(&b);
    std::fs::remove_dir_all(b.state.join("store")).unwrap();
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
    std::fs::write(&b.config, cfg).unwrap();

    // A corrupt object mid-image: the job fails naming the chunk and its URL; the disk is not
    // reported written.
    let bad = &ids[ids.len() / 2];
    let object = server.object_path(&format!("lib/chunks/{}/{bad}.zst", &bad[..2]));
    let good = std::fs::read(&object).unwrap();
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x10;
    std::fs::write(&object, &corrupt).unwrap();
    b.start_agent();
    let id = b.add_job("T-OD-1", "bay1", None);
    let (_disk1, lo1) = b.plug("bay1", 1, 64 * MIB);
    let job = b.wait_state(&id, "failed", 120);
    let err = job["error"].as_str().unwrap_or_default();
    eprintln!("corrupt object: {err}");
    assert!(err.contains(bad.as_str()), "{err}");
    assert!(err.contains(&format!("{url}/chunks/")), "{err}");
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
