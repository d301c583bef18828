//! Independent checks of what a job left behind: byte ranges, the GPT (sgdisk), files by
//! mounting and hashing them, staging contents, the audit chain and the service report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{Bench, DATA_RANGE, LoopDevice, LoopOptions, ROOT_RANGE};

/// The states a job went through, from its journaled history.
pub fn history_states(rec: &Value) -> Vec<String> {
    rec["history"]
        .as_array()
        .expect("job record has a history")
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect()
}

/// Everything a finished job with client data must have left behind, checked independently.
pub fn check_done_with_data(b: &Bench, job: &str, disk: &Path, dataset: &str, src: &Path) {
    let rec = b.job_record(job);
    assert_eq!(rec["state"], "done", "{rec:#}");
    assert_gpt_valid(disk);
    assert_same_range(&b.image, disk, ROOT_RANGE);
    {
        let m = DataMount::new(disk);
        assert_eq!(hash_tree(m.path()), hash_tree(src), "restored files differ");
    }
    // Staging holds no ciphertext of the dataset any more.
    let left: Vec<_> = find_named(&b.state.join("staging"), dataset)
        .into_iter()
        .filter(|p| {
            tree_bytes(p) > 64 * 1024 || p.is_file() && p.metadata().unwrap().len() > 64 * 1024
        })
        .collect();
    assert!(
        left.is_empty(),
        "staging still holds data of {dataset}: {left:?}"
    );
    let info = b
        .custody()
        .dataset(&dataset.parse().unwrap())
        .expect("dataset metadata");
    assert_eq!(format!("{:?}", info.state), "Wiped");
    // The audit chain verifies and holds this job's entries.
    let audit = client_data::AuditLog::open(&b.state.join("audit"), &b.state.join("keys")).unwrap();
    audit.verify().expect("audit chain verifies");
    b.tek_ok(&["audit", "verify"]);
    let log = std::fs::read_to_string(audit.path()).unwrap();
    for ev in ["image_written", "job_finished"] {
        assert!(
            log.lines()
                .any(|l| l.contains(job) && l.to_lowercase().contains(ev)),
            "no {ev} audit entry for {job}:\n{log}"
        );
    }
    // No address and no path: the disk is recorded by identity, not by node or backing file.
    let backing = disk.display().to_string();
    for bad in ["@", backing.as_str(), "/dev/"] {
        assert!(!log.contains(bad), "{bad:?} in the audit log:\n{log}");
    }
    // The service report.
    let report: Value = serde_json::from_str(&b.tek_ok(&["report", job, "--json"])).unwrap();
    assert_eq!(report["state"], "done");
    assert_eq!(report["ticket"], rec["ticket"]);
    assert_eq!(report["image"], "sample@1");
    assert_eq!(
        report["image_details"]["signature"]["status"], "valid",
        "{report:#}"
    );
    // The image's privacy audit verdict, as recorded in its signed manifest (issue 12).
    let verdict = report["image_details"]["privacy_audit"]
        .as_str()
        .unwrap_or("");
    assert!(verdict.starts_with("clean ("), "{report:#}");
    let text = b.tek_ok(&["report", job]);
    assert!(
        text.lines()
            .any(|l| l.contains("Privacy audit") && l.contains(verdict)),
        "the printed report names the audit verdict:\n{text}"
    );
    assert_eq!(
        report["data_migration"]["entries_verified"],
        count_entries(src),
        "{report:#}"
    );
    assert_eq!(
        report["sanitization"]["migration_verified"], true,
        "{report:#}"
    );
    // The report pins the audit chain: its signed checkpoint names an entry that is in the log
    // with that hash.
    let cp = &report["audit"]["checkpoint"];
    let seq = cp["seq"]
        .as_u64()
        .expect("the report carries an audit checkpoint");
    let at = log
        .lines()
        .nth(seq as usize)
        .expect("checkpointed entry in the log");
    assert!(
        at.ends_with(&format!("\"hash\":\"{}\"}}", cp["hash"].as_str().unwrap())),
        "{at} vs {cp}"
    );
    assert!(b.tek_ok(&["report", job]).contains("== Audit log"));
    let html = b.tek_ok(&["report", job, "--html"]);
    assert!(
        html.contains("Staging copy") && html.contains("staging copy wiped"),
        "{html}"
    );
    assert!(b.state.join(format!("reports/{job}.html")).exists());
}

/// Reads `len` bytes at `off` of a file.
pub fn read_range(p: &Path, off: u64, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v).unwrap();
    v
}

/// Asserts two files hold the same bytes in a range; the message names the first difference.
pub fn assert_same_range(a: &Path, b: &Path, (off, len): (u64, u64)) {
    let x = read_range(a, off, len);
    let y = read_range(b, off, len);
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{} and {} differ at byte {} (range {off}+{len}): {:#04x} vs {:#04x}",
            a.display(),
            b.display(),
            off + i as u64,
            x[i],
            y[i]
        );
    }
}

/// BLAKE3 of a whole file, hex.
pub fn b3(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}

/// `sgdisk -v` on a disk or file; panics with its output unless it finds no problems.
pub fn assert_gpt_valid(p: &Path) {
    let out = Command::new("sgdisk").arg("-v").arg(p).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("No problems found"),
        "sgdisk -v {}:\n{text}",
        p.display()
    );
}

/// Relative path -> BLAKE3 of every regular file under `dir`.
pub fn hash_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                if p.file_name().is_some_and(|n| n == "lost+found") {
                    continue;
                }
                walk(base, &p, out);
            } else if ft.is_file() {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(rel, b3(&p));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The DATA partition of a disk file, mounted read-only on a temp dir; unmounted on drop.
pub struct DataMount {
    dir: tempfile::TempDir,
    _lo: LoopDevice,
}

impl DataMount {
    /// Mounts the DATA partition of `disk` (a disk file written from the sample image).
    pub fn new(disk: &Path) -> DataMount {
        let lo = LoopDevice::attach_with(
            disk,
            &LoopOptions {
                offset: DATA_RANGE.0,
                size_limit: DATA_RANGE.1,
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-o", "ro,noload", "-t", "ext4"])
            .arg(lo.path())
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting the DATA partition of {}",
            disk.display()
        );
        DataMount { dir, _lo: lo }
    }
    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for DataMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// How many files, folders and links are under `dir` (itself not counted).
pub fn count_entries(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            1 + if e.file_type().unwrap().is_dir() {
                count_entries(&e.path())
            } else {
                0
            }
        })
        .sum()
}

/// Every path under `dir` whose name contains `needle`.
pub fn find_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(needle) {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find_named(&p, needle));
        }
    }
    out
}

/// Bytes of regular files under `dir` (recursively).
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
