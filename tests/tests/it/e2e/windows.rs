//! The Windows journey end to end: the `win` bench sample (ESP, MSR, Windows NTFS, Recovery NTFS
//! after it, both named "Basic data partition") imported and signed, a job writing it onto a disk
//! twice its size with client data to `/Users/Public/Documents/Recovered`; checked independently:
//! Recovery at the disk's end byte-identical to the image's partition, Windows grown up to it,
//! `ntfsresize --info` clean, the data hashed through a fresh `ntfs-3g` mount, `sgdisk -v` clean.

use std::path::PathBuf;
use std::process::Command;

use super::*;

/// The shared bench's image builder: `TEK_SHARED_BENCH`, else `../shared/bench` beside the
/// repository (as the issue names it), else the depot's `/work/shared/bench`.
fn make_image() -> PathBuf {
    let candidates = [
        std::env::var_os("TEK_SHARED_BENCH").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench")),
        Some(PathBuf::from("/work/shared/bench")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("make-image.sh"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/work/shared/bench/make-image.sh"))
}

/// The `win` sample (512 MiB, 64 MiB of files), built once and kept under the target dir.
fn win_sample() -> Option<PathBuf> {
    let tools = ["mkntfs", "ntfs-3g", "ntfsresize", "sgdisk", "mkfs.fat"];
    if !make_image().exists() || !tools.iter().all(|t| have(t)) {
        tek_testkit::skip!(
            "windows e2e: needs {} and {tools:?}",
            make_image().display()
        );
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("samples");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("win-512M-64M.img");
    if !p.exists() {
        let tmp = dir.join(format!("win.{}.tmp", std::process::id()));
        let out = Command::new(make_image())
            .args(["--variant", "win", "--size", "512M", "--fill", "64M"])
            .arg(&tmp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &p).unwrap();
    }
    Some(p)
}

fn have(tool: &str) -> bool {
    sh("sh", &["-c", &format!("command -v {tool}")]).0
}

fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

#[test]
fn windows_image_with_client_data_onto_a_disk_twice_its_size() {
    if !need_root("windows_image_with_client_data_onto_a_disk_twice_its_size") {
        return;
    }
    let Some(img) = win_sample() else { return };
    let mut b = Bench::new("win", &["bay1"], "");
    // The ambiguous GPT name is refused at import, with both candidates.
    let out = b.tek(&[
        "image",
        "import",
        "--data-partition",
        "Basic data partition",
        "win@1",
        img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ambiguous"), "{err}");
    assert!(
        err.contains("number:3") && err.contains("number:4"),
        "{err}"
    );
    b.tek_ok(&[
        "image",
        "import",
        "--sign-key",
        &b.p("keys/depot.key"),
        "--data-partition",
        "label:Windows",
        "--data-path",
        "/Users/Public/Documents/Recovered",
        "--grow-partition",
        "type:basic-data",
        "win@1",
        img.to_str().unwrap(),
    ]);
    let show = b.tek_ok(&["image", "show", "win@1"]);
    assert!(
        show.contains("filesystem ntfs, label \"Windows\""),
        "{show}"
    );
    let (dataset, src) = b.ingest();
    b.start_agent();
    let job = b
        .tek_ok(&[
            "job", "add", "--ticket", E2E_TICKET, "--image", "win@1", "--bay", "bay1", "--data",
            &dataset,
        ])
        .trim()
        .to_string();
    let disk_size = 1024 * MIB;
    let (disk, lo) = b.plug("bay1", 1, disk_size);
    let rec = b.wait_state(&job, "done", 240);
    drop(lo);

    let w = &rec["results"]["write"];
    let moved = &w["gpt"]["moved"][0];
    assert_eq!(moved["number"], 4, "{w:#}");
    let (old_first, new_first) = (
        moved["old_first_lba"].as_u64().unwrap(),
        moved["new_first_lba"].as_u64().unwrap(),
    );
    assert_eq!(new_first, old_first + (disk_size - 512 * MIB) / 512);
    let fsg = &w["filesystem"];
    assert_eq!(fsg["filesystem"], "ntfs", "{w:#}");
    assert!(
        fsg["new_bytes"].as_u64() > fsg["old_bytes"].as_u64(),
        "{fsg:#}"
    );

    // Independent checks: the partition table, Recovery's bytes at the end, Windows grown.
    assert_gpt_valid(&disk);
    let (_, p) = sh("sgdisk", &["-i", "4", disk.to_str().unwrap()]);
    let rec_len = p
        .lines()
        .find_map(|l| l.strip_prefix("Partition size: "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 512;
    assert_eq!(
        read_range(&img, old_first * 512, rec_len),
        read_range(&disk, new_first * 512, rec_len),
        "Recovery at the disk's end is the image's partition, byte for byte"
    );
    let (_, p3) = sh("sgdisk", &["-i", "3", disk.to_str().unwrap()]);
    let first3: u64 = p3
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        p3.contains(&format!("Last sector: {} ", new_first - 1)),
        "{p3}"
    );
    let part = LoopDevice::attach_with(
        &disk,
        &LoopOptions {
            offset: first3 * 512,
            size_limit: (new_first - first3) * 512,
            ..Default::default()
        },
    )
    .unwrap();
    let (ok, info) = sh(
        "ntfsresize",
        &["--info", "-P", part.path().to_str().unwrap()],
    );
    assert!(ok, "ntfsresize --info: {info}");
    // The data, through a fresh ntfs-3g mount of its own (read-only).
    let mnt = tempfile::tempdir().unwrap();
    let (ok, out) = sh(
        "ntfs-3g",
        &[
            "-o",
            "ro",
            part.path().to_str().unwrap(),
            mnt.path().to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let restored = hash_tree(&mnt.path().join("Users/Public/Documents/Recovered"));
    let staged = hash_tree(&src);
    let _ = Command::new("umount").arg(mnt.path()).status();
    assert!(!staged.is_empty());
    assert_eq!(
        restored, staged,
        "restored files differ from the staged ones"
    );
    drop(part);
    let report = b.tek_ok(&["report", &job, "--json"]);
    assert!(
        report.contains("\"moved\"") && report.contains("\"new_bytes\""),
        "{report}"
    );
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}
