//! End-to-end custody checks against hostile images and racing processes: the real `tek`
//! binary and `tek agent`, real loop devices, real ext4.
//!
//! Tests that need root and loop devices print "SKIP ..." and pass without them; CI runs as
//! root.

use std::path::Path;

use serde_json::Value;
use tek_e2e::*;

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

/// Issue 8.1: an image whose DATA filesystem holds `Users -> <host dir>`, data path `/Users`.
/// The job must fail saying why, write nothing on the host, and keep the dataset staged.
#[test]
fn image_with_symlinked_data_path_fails_the_job_and_keeps_staging() {
    if !need_root("image_with_symlinked_data_path_fails_the_job_and_keeps_staging") {
        return;
    }
    let mut b = Bench::new("symlinked-data-path", &["bay1"], "");
    let host = b.root().join("host-dir");
    std::fs::create_dir(&host).unwrap();
    let evil = b.root().join("work/evil.img");
    std::fs::copy(&b.image, &evil).unwrap();
    {
        let m = client_data::PartitionMount::mount(&evil, "DATA", None).unwrap();
        std::os::unix::fs::symlink(&host, m.path().join("Users")).unwrap();
        m.unmount().unwrap();
    }
    b.import_signed(&[
        "--data-partition",
        "DATA",
        "--data-path",
        "/Users",
        "evil@1",
        &evil.display().to_string(),
    ]);
    let (dataset, _src) = b.ingest();
    let staged_bytes = tree_bytes(&b.state.join("staging"));
    b.start_agent();
    let job = b
        .tek_ok(&[
            "job",
            "add",
            "--ticket",
            tek_e2e::E2E_TICKET,
            "--image",
            "evil@1",
            "--bay",
            "bay1",
            "--data",
            &dataset,
        ])
        .trim()
        .to_string();
    let (_disk, _lo) = b.plug("bay1", 1, 128 * MIB);
    let rec = b.wait_job(&job, "a finished state", 90, |v| {
        ["failed", "done", "cancelled"].contains(&v["state"].as_str().unwrap_or(""))
    });
    assert_eq!(rec["state"], "failed", "{rec:#}");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("symlink") && err.contains("/Users"),
        "the failure names the reason: {err}"
    );
    assert!(rec["results"]["sanitization"].is_null(), "{rec:#}");
    assert!(is_empty_dir(&host), "nothing written on the host");
    let list: Value = serde_json::from_str(&b.tek_ok(&["data", "list", "--json"])).unwrap();
    let ds = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == dataset.as_str())
        .expect("dataset listed");
    assert_eq!(ds["state"], "staged", "{ds:#}");
    assert_eq!(
        tree_bytes(&b.state.join("staging")),
        staged_bytes,
        "staging untouched"
    );
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}

fn tek_at(state: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(tek_bin());
    c.arg("--state")
        .arg(state)
        .env_remove("TEK_KEK")
        .env_remove("TEK_SOCKET")
        // No agent config: the built-in custody defaults (an empty file).
        .env("TEK_CONFIG", "/dev/null");
    c
}

/// Issue 8.3: two (here three) first ingests into a fresh depot, as separate `tek` processes
/// started together, used to make a KEK each: the last rename won and the other datasets'
/// wrapped keys no longer opened. 30 fresh depots; every dataset must restore and verify.
#[test]
fn parallel_first_ingests_share_one_kek_and_all_restore() {
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    std::fs::create_dir_all(src.join("Documents")).unwrap();
    std::fs::write(src.join("Documents/letter.txt"), b"Dear client\n").unwrap();
    std::fs::write(src.join("photo.bin"), vec![0x5au8; 300_000]).unwrap();
    let (depots, per_depot) = (30, 3);
    let mut lost = Vec::new();
    for wave in 0..3 {
        let mut children = Vec::new();
        for n in 0..depots / 3 {
            let state = scratch.path().join(format!("depot-{wave}-{n}"));
            for k in 0..per_depot {
                let child = tek_at(&state)
                    .args(["data", "ingest", "--client", &format!("C-{k}"), "--ticket"])
                    .arg(format!("T-{k}"))
                    .arg(&src)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawning tek");
                children.push((state.clone(), child));
            }
        }
        for (state, child) in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "ingest into {} failed: {}",
                state.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let id = stdout.lines().next().unwrap_or_default().trim().to_string();
            assert!(id.starts_with("ds-"), "{stdout}");
            let target = scratch.path().join(format!("restored-{id}"));
            std::fs::create_dir(&target).unwrap();
            let r = tek_at(&state)
                .args(["data", "restore", &id])
                .arg(&target)
                .output()
                .unwrap();
            if !r.status.success() {
                lost.push(format!(
                    "{} {id}: {}",
                    state.display(),
                    String::from_utf8_lossy(&r.stderr).trim()
                ));
                continue;
            }
            assert_eq!(
                std::fs::read(target.join("Documents/letter.txt")).unwrap(),
                b"Dear client\n"
            );
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} datasets do not restore:\n{}",
        lost.len(),
        depots * per_depot,
        lost.join("\n")
    );
}

/// A second restore of a dataset into the folder a first one filled (and verified) replaces
/// what the journal proves the first one wrote, and says so in words that fit a finished
/// earlier restore as well as an interrupted one; the copy stays the staged data.
#[test]
fn restoring_twice_into_one_folder_says_what_it_resumed() {
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("depot");
    let src = scratch.path().join("src");
    std::fs::create_dir_all(src.join("Documents")).unwrap();
    std::fs::write(src.join("Documents/letter.txt"), b"Dear client\n").unwrap();
    std::fs::write(src.join("photo.bin"), vec![0x5au8; 300_000]).unwrap();
    let out = tek_at(&state)
        .args(["data", "ingest", "--client", "C-1", "--ticket", "T-1"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let target = scratch.path().join("restored");
    std::fs::create_dir(&target).unwrap();
    let restore = || {
        let r = tek_at(&state)
            .args(["data", "restore", &id])
            .arg(&target)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8(r.stdout).unwrap()
    };
    let first = restore();
    assert!(!first.contains("resumed"), "{first}");
    let second = restore();
    assert!(
        second.contains(
            "resumed: 3 entries an earlier restore of this dataset into this folder \
             (interrupted, or verified and now done again) had written, proved its own by the \
             restore journal, were replaced (listed in --json)"
        ),
        "{second}"
    );
    assert!(second.starts_with("restored 3 entries"), "{second}");
    assert_eq!(
        std::fs::read(target.join("Documents/letter.txt")).unwrap(),
        b"Dear client\n"
    );
    assert_eq!(
        std::fs::read(target.join("photo.bin")).unwrap(),
        vec![0x5au8; 300_000]
    );
}
