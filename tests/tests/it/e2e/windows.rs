//! The Windows journey end to end: the `win` bench sample (ESP, MSR, Windows NTFS, Recovery NTFS
//! after it, both named "Basic data partition") imported and signed, a job writing it onto a disk
//! twice its size with client data to `/Users/Public/Documents/Recovered`; checked independently:
//! Recovery at the disk's end byte-identical to the image's partition, Windows grown up to it,
//! `ntfsresize --info` clean, `sgdisk -v` clean; and the data, through a fresh read-only
//! `ntfs-3g` mount, against the staged originals on the laptop's NTFS (see [`laptop`]): every
//! entry where the report's name mappings put it, nothing dropped or extra, each with its
//! content, mtime to NTFS precision, creation time, DOS attributes and alternate data streams.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::*;

mod laptop;
mod stall;
use laptop::{CASE_PAIRS, ILLEGAL, Laptop};

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
/// Imports the `win` sample `img` as `win@1`, signed, its data going to Windows' public
/// documents, with `extra` arguments.
fn import_win(b: &Bench, img: &std::path::Path, extra: &[&str]) {
    let mut args = vec![
        "--data-partition",
        "label:Windows",
        "--data-path",
        "/Users/Public/Documents/Recovered",
    ];
    args.extend_from_slice(extra);
    args.extend(["win@1", img.to_str().unwrap()]);
    b.import_signed(&args);
}

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
    import_win(&b, &img, &["--grow-partition", "type:basic-data"]);
    let show = b.tek_ok(&["image", "show", "win@1"]);
    assert!(
        show.contains("filesystem ntfs, label \"Windows\""),
        "{show}"
    );
    // The client's data, from the old laptop's NTFS: the bench's client data set and the
    // planted cases. Ingested from the mount, then the volume is put away.
    let generated = laptop::client_data_set(&make_image(), &b.root().join("work/gen"), 1500, "24M");
    let Some(set) = generated else { return };
    let mut old = Laptop::new(&b.root().join("work/laptop.ntfs"), 128 * MIB);
    let src = old.path().join("Users/jane");
    let files = laptop::copy_as_windows_files(&set, &src);
    assert!(files > 1000, "{files} files of the client data set copied");
    laptop::plant(&src);
    old.remount_read_only();
    let staged = laptop::snapshot(&src);
    let dataset = b
        .custody()
        .ingest("client-e2e", E2E_TICKET, &src)
        .expect("ingesting from the laptop's volume")
        .id
        .to_string();
    old.unmount();
    drop(old);
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
    let restored = {
        // Unmounted also when the snapshot panics (a leaked FUSE mount keeps the loop device).
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
        let _mounted = Unmount(mnt.path());
        laptop::snapshot(&mnt.path().join("Users/Public/Documents/Recovered"))
    };
    let report: serde_json::Value =
        serde_json::from_str(&b.tek_ok(&["report", &job, "--json"])).unwrap();
    check_migrated(&staged, &restored, &report["data_migration"]);
    drop(part);
    let v = &report["verification"];
    assert!(v["gpt"]["moved"].is_array(), "{v:#}");
    let fsg = &v["filesystem"];
    assert!(fsg["new_bytes"].is_u64(), "{fsg:#}");
    let boot = fsg["first_boot"].as_str().unwrap_or_default();
    assert!(boot.starts_with("Windows will not run chkdsk"), "{fsg:#}");
    // The printable report says it too.
    let text = b.tek_ok(&["report", &job]);
    assert!(text.contains("Windows will not run chkdsk"), "{text}");
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}

/// The restored tree against the staged one, through the report's name mappings: each staged
/// entry where the mappings say, nothing dropped, nothing extra, the same facts (content, mtime,
/// a file's access time, creation time, DOS attributes, streams, link text), and each planted name case mapped to a
/// name Windows accepts.
fn check_migrated(
    staged: &BTreeMap<String, laptop::Facts>,
    restored: &BTreeMap<String, laptop::Facts>,
    migration: &serde_json::Value,
) {
    let mappings: BTreeMap<String, String> = migration["name_mappings"]
        .as_array()
        .unwrap_or_else(|| panic!("no name_mappings in the report: {migration:#}"))
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_string();
            (s("from"), s("to"))
        })
        .collect();
    let shown = |n: &str| client_data::winnames::show(n.as_bytes());
    for name in ILLEGAL {
        let from = shown(&format!("Planted/{name}"));
        let to = mappings
            .get(&from)
            .unwrap_or_else(|| panic!("{from} is not in the mappings: {mappings:#?}"));
        let last = to.rsplit('/').next().unwrap();
        assert!(
            !last
                .chars()
                .any(|c| "<>:\"\\|?*".contains(c) || (c as u32) < 0x20)
                && !last.ends_with(['.', ' ']),
            "{from} -> {to}"
        );
    }
    for (kept, mapped) in CASE_PAIRS {
        assert!(!mappings.contains_key(&format!("Planted/{kept}")), "{kept}");
        assert!(
            mappings.contains_key(&format!("Planted/{mapped}")),
            "{mapped}: {mappings:#?}"
        );
    }
    let want = laptop::mapped_paths(staged.keys(), &mappings);
    let mut missing = Vec::new();
    let mut differ = Vec::new();
    for (from, to) in &want {
        match restored.get(to) {
            None => missing.push(format!("{from} (as {to})")),
            Some(got) if got != &staged[from] => differ.push(format!(
                "{from} (as {to}):\n  staged   {:?}\n  restored {got:?}",
                staged[from]
            )),
            Some(_) => {}
        }
    }
    let expected: std::collections::BTreeSet<&String> = want.values().collect();
    let extra: Vec<&String> = restored.keys().filter(|k| !expected.contains(k)).collect();
    assert!(
        missing.is_empty() && differ.is_empty() && extra.is_empty(),
        "{} missing: {missing:#?}\n{} differ:\n{}\n{} extra: {extra:#?}",
        missing.len(),
        differ.len(),
        differ.join("\n"),
        extra.len()
    );
    eprintln!(
        "checked {} entries through a fresh mount, {} under mapped names",
        want.len(),
        want.iter().filter(|(a, b)| a != b).count()
    );
    // The sample is what it claims to be: metadata was there to lose.
    let with = |f: fn(&laptop::Facts) -> bool| staged.values().filter(|x| f(x)).count();
    assert!(with(|f| !f.streams.is_empty()) > 50, "streams");
    assert!(
        with(|f| f.attrib.is_some_and(|a| a & 0x02 != 0)) > 100,
        "hidden"
    );
    assert!(
        with(|f| f.attrib.is_some_and(|a| a & 0x01 != 0)) > 100,
        "read-only"
    );
    assert!(
        with(|f| f.mtime.is_some_and(|m| m.1 % 1000 != 0)) > 100,
        "sub-ms mtimes"
    );
    assert!(with(|f| f.kind == "link") > 0, "links");
}
