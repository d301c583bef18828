//! `tek write` tells the truth: a compressed file is written decoded, and an image whose chunks
//! are not all in the store is refused before anything is written, and flagged by `image list`
//! and `image show`. The real binary; targets are loop devices as root, plain files otherwise;
//! checked with `cmp`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{MIB, Tek, gpt_image, have_sgdisk};

fn cmp(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// A file of `size` bytes of an old owner's data (0xEE) with a GPT on it.
fn old_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0xEEu8; size as usize]).unwrap();
    let o = Command::new("sgdisk")
        .args(["-n1:2048:+1M", "-c1:OLD"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success());
    p
}

/// The target: a loop device over `file` as root, else the file itself.
fn target_for(file: &Path) -> (PathBuf, Option<client_data::loopdev::LoopDevice>) {
    if client_data::loopdev::can_attach() {
        let lo = client_data::loopdev::LoopDevice::attach(file).unwrap();
        (lo.path().to_path_buf(), Some(lo))
    } else {
        eprintln!("(not root: writing to a plain file instead of a loop device)");
        (file.to_path_buf(), None)
    }
}

#[test]
fn gzip_image_is_written_decoded() {
    if !have_sgdisk() {
        tek_testkit::skip!("needs sgdisk");
        return;
    }
    let tek = Tek::new();
    let img = gpt_image(tek.dir());
    let gz = tek.dir().join("disk.img.gz");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", img.display(), gz.display()))
        .status()
        .unwrap();
    assert!(o.success());
    let file = tek.dir().join("target");
    std::fs::write(&file, vec![0xEEu8; 16 * MIB as usize]).unwrap();
    let (target, lo) = target_for(&file);
    // A compressed file cannot be privacy-audited before the write: refused unless
    // --allow-unaudited (importing it audits it), the target untouched.
    let o = tek.run(&[
        "write",
        gz.to_str().unwrap(),
        target.to_str().unwrap(),
        "--yes",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot be audited") && err.contains("--allow-unaudited"),
        "{err}"
    );
    assert!(std::fs::read(&file).unwrap().iter().all(|&b| b == 0xEE));
    let o = tek.run(&[
        "write",
        gz.to_str().unwrap(),
        target.to_str().unwrap(),
        "--yes",
        "--json",
        "--allow-unaudited",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("decoded from gzip"), "{err}");
    assert!(err.contains("(gzip) once to check it"), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["image"]["size_bytes"], 16 * MIB, "{r}");
    assert_eq!(r[0]["image"]["file_format"], "gzip", "{r}");
    drop(lo);
    // Same size as the image and a GPT that fits: every byte must be the decoded image's.
    assert!(cmp(&img, &file), "the disk holds the decoded image");
}

/// Chunk ids of `image` in image order, from `tek image show --json`.
fn chunk_ids(tek: &Tek, image: &str) -> Vec<String> {
    let show: serde_json::Value =
        serde_json::from_str(&tek.ok(&["image", "show", image, "--json"])).unwrap();
    show["manifest"]["extents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "chunk")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn chunk_path(tek: &Tek, id: &str) -> PathBuf {
    tek.dir()
        .join("state/store/chunks")
        .join(&id[..2])
        .join(format!("{id}.zst"))
}

#[test]
fn image_with_absent_chunks_is_refused_before_writing_and_flagged() {
    if !have_sgdisk() {
        tek_testkit::skip!("needs sgdisk");
        return;
    }
    let tek = Tek::new();
    let img = gpt_image(tek.dir());
    tek.ok(&["image", "import", "os@1", img.to_str().unwrap()]);
    tek.ok(&["image", "import", "other@1", img.to_str().unwrap()]);
    let ids = chunk_ids(&tek, "os@1");
    assert!(ids.len() >= 3, "{ids:?}");
    // One chunk deleted, one quarantined (as a corrupt chunk found by verify would be).
    let (gone, bad) = (&ids[ids.len() / 2], &ids[ids.len() - 1]);
    std::fs::remove_file(chunk_path(&tek, gone)).unwrap();
    let p = chunk_path(&tek, bad);
    std::fs::rename(&p, p.with_extension("zst.bad")).unwrap();

    let list = tek.ok(&["image", "list"]);
    let row = list.lines().find(|l| l.starts_with("os@1")).unwrap();
    assert!(
        row.contains("INCOMPLETE: 1 chunk missing, 1 quarantined"),
        "{list}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&tek.ok(&["image", "list", "--json"])).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["image"] == "os@1")
        .unwrap();
    assert_eq!(row["complete"], false, "{row}");
    assert_eq!(row["chunks_missing"], 1, "{row}");
    assert_eq!(row["chunks_quarantined"], 1, "{row}");
    let show = tek.ok(&["image", "show", "os@1"]);
    assert!(
        show.contains("INCOMPLETE, cannot be written: 2 chunks"),
        "{show}"
    );
    assert!(
        show.contains(gone.as_str()) && show.contains(bad.as_str()),
        "{show}"
    );
    let show: serde_json::Value =
        serde_json::from_str(&tek.ok(&["image", "show", "os@1", "--json"])).unwrap();
    assert_eq!(show["complete"], false);
    assert_eq!(show["absent_chunks"][0]["id"], gone.as_str());
    assert_eq!(show["absent_chunks"][0]["quarantined"], false);
    assert_eq!(show["absent_chunks"][1]["quarantined"], true);

    let file = old_disk(tek.dir(), "target", 16 * MIB);
    let before = tek.dir().join("target.before");
    std::fs::copy(&file, &before).unwrap();
    let (target, lo) = target_for(&file);
    let err = tek.fails(&[
        "write",
        "os@1",
        target.to_str().unwrap(),
        "--yes",
        "--allow-unsigned",
    ]);
    assert!(err.contains("image os@1 cannot be written"), "{err}");
    assert!(err.contains(gone.as_str()), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    drop(lo);
    assert!(
        cmp(&before, &file),
        "the target is byte-identical to before"
    );
}
