//! The privacy audit against real filesystems built by the fixture scripts beside this file
//! (`tests/fixtures/*.sh`: mkntfs + ntfs-3g, mkfs.fat, mkfs.ext4 -d), and against hostile ones.
//! Images are built once per target dir (under CARGO_TARGET_TMPDIR) and shared by the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use image_store::audit::{AuditOptions, AuditReport, PartitionStatus, audit_file};

static BUILD: Mutex<()> = Mutex::new(());

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Builds (once) the fixture `name` with `script args...`; CI must have the tools (no skip).
pub(crate) fn fixture(name: &str, script: &str, args: &[&str]) -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    if out.exists() {
        return out;
    }
    let tmp = dir.join(format!("{name}.part"));
    let st = Command::new("bash")
        .arg(fixtures().join(script))
        .args(args)
        .arg(&tmp)
        .status()
        .expect("running the fixture script");
    assert!(st.success(), "{script} {args:?} failed");
    std::fs::rename(&tmp, &out).unwrap();
    out
}

pub(crate) fn win(variant: &str) -> PathBuf {
    fixture(
        &format!("{variant}.img"),
        "make-image.sh",
        &["--size", "512M", "--fill", "64M", "--variant", variant],
    )
}

fn rules(r: &AuditReport) -> Vec<(String, String)> {
    r.findings
        .iter()
        .map(|f| (f.rule.clone(), f.path.clone()))
        .collect()
}

fn has(r: &AuditReport, rule: &str, path_part: &str) -> bool {
    r.findings
        .iter()
        .any(|f| f.rule == rule && f.path.contains(path_part))
}

/// The audit of `img` with `--deep`.
fn audit_deep(img: &Path) -> AuditReport {
    let opts = AuditOptions {
        deep: true,
        ..Default::default()
    };
    audit_file(img, &opts).unwrap()
}

#[test]
fn generalized_windows_image_is_clean() {
    let r = audit_file(&win("win"), &AuditOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}\n{:?}", rules(&r), r.partitions);
    let fs: Vec<&str> = r.partitions.iter().map(|p| p.filesystem.as_str()).collect();
    assert_eq!(fs, ["fat", "none", "ntfs", "ntfs"]);
    // The ESP is a FAT32 of 100 MiB (fewer than 65525 clusters, as mkfs.fat and Windows make
    // it), empty here; both NTFS volumes hold files.
    assert!(
        matches!(r.partitions[0].status, PartitionStatus::Audited { .. }),
        "{:?}",
        r.partitions[0]
    );
    for p in [2, 3] {
        assert!(
            matches!(r.partitions[p].status, PartitionStatus::Audited { entries } if entries > 0),
            "{:?}",
            r.partitions[p]
        );
    }
    for p in [0, 2, 3] {
        let f = r.partitions[p].free.expect("free space measured");
        assert!(f.free_bytes > 0 && f.nonzero_bytes == 0, "{f:?}");
    }
    // The MSR holds no filesystem: read whole, all zeros. So are the bytes outside the table.
    assert!(
        matches!(r.partitions[1].status, PartitionStatus::Blank { bytes } if bytes == 16 << 20),
        "{:?}",
        r.partitions[1]
    );
    let o = r.outside.expect("bytes outside the partitions measured");
    assert!(o.free_bytes > 0 && o.nonzero_bytes == 0, "{o:?}");
}

#[test]
fn populated_windows_image_yields_every_planted_finding() {
    let r = audit_file(&win("win-populated"), &AuditOptions::default()).unwrap();
    assert!(!r.is_clean());
    for (rule, path) in [
        ("win.profile", "/Users/jsmith"),
        ("win.ntuser", "/Users/jsmith/NTUSER.DAT"),
        (
            "user.documents",
            "/Users/jsmith/Documents/tax return 2025.txt",
        ),
        ("user.documents", "/Users/jsmith/Pictures/passport scan.jpg"),
        ("browser.profile", "Chrome/User Data/Default/History"),
        ("browser.profile", "Chrome/User Data/Default/Login Data"),
        ("mail.store", "/AppData/Local/Microsoft/Outlook/"),
        ("win.recent", "Recent/tax return 2025.lnk"),
        ("win.memory", "/pagefile.sys"),
        ("win.memory", "/hiberfil.sys"),
        ("win.not-generalized", "State.ini"),
    ] {
        assert!(
            has(&r, rule, path),
            "{rule} {path} missing in {:?}",
            rules(&r)
        );
    }
    // The mail store's file name holds an e-mail address: never shown unmasked.
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("jane.smith@"), "{json}");
    assert!(json.contains("j***@e***"), "{json}");
}

#[test]
fn deep_scan_counts_without_keeping_the_text() {
    let r = audit_deep(&win("win-populated"));
    let f = r
        .findings
        .iter()
        .find(|f| f.rule == "deep.personal-data" && f.path.ends_with("tax return 2025.txt"))
        .expect("the tax return's NI number is found");
    assert!(f.detail.contains("1 UK NI number"), "{}", f.detail);
    let json = serde_json::to_string(&r).unwrap();
    for secret in ["QQ123456C", "Jane Smith", "12 Example Road"] {
        assert!(!json.contains(secret), "{secret} leaked");
    }
}

#[test]
fn populated_linux_image_yields_every_planted_finding() {
    let img = fixture("linux-populated.img", "make-linux-image.sh", &["populated"]);
    let r = audit_deep(&img);
    for (rule, path) in [
        ("linux.home", "/home/alice"),
        ("shell.history", "/home/alice/.bash_history"),
        ("shell.history", "/root/.bash_history"),
        ("linux.machine-id", "/etc/machine-id"),
        ("linux.ssh-host-key", "/etc/ssh/ssh_host_ed25519_key"),
        ("ssh.authorized-keys", "/home/alice/.ssh/authorized_keys"),
        ("linux.nm-secret", "Home.nmconnection"),
        ("linux.var-log", "/var/log"),
        ("deep.personal-data", "/home/alice/Documents/notes.txt"),
    ] {
        assert!(
            has(&r, rule, path),
            "{rule} {path} missing in {:?}",
            rules(&r)
        );
    }
    let json = serde_json::to_string(&r).unwrap();
    for secret in ["alice.example@", "7946 0958", "correct horse"] {
        assert!(!json.contains(secret), "{secret} leaked");
    }
}

#[test]
fn clean_linux_and_v1_images_are_clean() {
    let img = fixture("linux-clean.img", "make-linux-image.sh", &["clean"]);
    let r = audit_file(&img, &AuditOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", rules(&r));
    let v1 = fixture(
        "v1.img",
        "make-image.sh",
        &["--size", "256M", "--fill", "16M", "--variant", "v1"],
    );
    let r = audit_file(&v1, &AuditOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?} {:?}", rules(&r), r.partitions);
    assert!(
        r.partitions
            .iter()
            .any(|p| p.filesystem == "ext4" && matches!(p.status, PartitionStatus::Audited { .. }))
    );
}

#[test]
fn deep_skips_packaged_software_and_finds_every_planted_address() {
    let img = fixture("deep.img", "make-deep-image.sh", &[]);
    let r = audit_deep(&img);
    let fs: Vec<&str> = r.partitions.iter().map(|p| p.filesystem.as_str()).collect();
    assert_eq!(fs, ["ext4", "ntfs"], "{:?}", r.partitions);
    let mut hits: Vec<(u32, &str)> = r
        .findings
        .iter()
        .filter(|f| f.rule == "deep.personal-data")
        .map(|f| (f.partition, f.path.as_str()))
        .collect();
    hits.sort();
    // Exactly the planted files: none of the authors' addresses in /usr/share/doc, man pages,
    // licences, /usr/lib, dpkg's status, WinSxS, System32 or Program Files.
    assert_eq!(
        hits,
        [
            (1, "/etc/hello/hello.conf"),
            (1, "/home/ann/notes.txt"),
            (1, "/root/contacts"),
            (1, "/srv/www/customers.csv"),
            (1, "/usr/local/share/list.txt"),
            (2, "/ProgramData/Hello/contacts.xml"),
            (2, "/Users/Public/Documents/list.csv"),
            (2, "/Users/jsmith/Documents/a***@m***.txt"),
            (2, "/Users/jsmith/Documents/letter.txt"),
        ]
    );
    let json = serde_json::to_string(&r).unwrap();
    for secret in ["ann.client@", "jane.dev@", "Ann Client"] {
        assert!(!json.contains(secret), "{secret} leaked");
    }
}

#[test]
fn clean_images_are_clean_under_deep_too() {
    for img in [
        win("win"),
        fixture("linux-clean.img", "make-linux-image.sh", &["clean"]),
        fixture(
            "v1.img",
            "make-image.sh",
            &["--size", "256M", "--fill", "16M", "--variant", "v1"],
        ),
    ] {
        let r = audit_deep(&img);
        assert!(r.deep);
        assert!(r.is_clean(), "{}: {:?}", img.display(), rules(&r));
    }
}

/// Copies `src` to a scratch file and lets `f` damage it.
pub(crate) fn damaged(src: &Path, name: &str, f: impl FnOnce(&Path)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(src)
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    f(&p);
    d
}

pub(crate) fn poke(p: &Path, off: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

pub(crate) fn error_of(r: &AuditReport, number: u32) -> String {
    let p = r.partitions.iter().find(|p| p.number == number).unwrap();
    match &p.status {
        PartitionStatus::Error { reason } => reason.clone(),
        other => panic!("partition {number}: expected an error, got {other:?}"),
    }
}

#[test]
fn corrupt_superblocks_end_that_partition_with_an_error() {
    let img = fixture("linux-clean.img", "make-linux-image.sh", &["clean"]);
    // ext4: keep the magic, break the block-size and group fields (checksummed superblock).
    let d = damaged(&img, "ext4.img", |p| {
        poke(p, (1 << 20) + 1024 + 24, &[0xff; 16])
    });
    let r = audit_file(&d.path().join("ext4.img"), &AuditOptions::default()).unwrap();
    assert!(!error_of(&r, 1).is_empty());
    assert!(!r.is_clean());
    // NTFS: keep the OEM id, break the MFT location of the Windows partition.
    let w = win("win");
    let gpt = {
        let mut f = std::fs::File::open(&w).unwrap();
        let size = f.metadata().unwrap().len();
        image_store::audit::gpt_of(&mut f, size).unwrap().unwrap()
    };
    let p3 = gpt.partitions.iter().find(|p| p.number == 3).unwrap();
    let d = damaged(&w, "ntfs.img", |p| {
        poke(p, p3.first_lba * 512 + 0x30, &[0xff; 8])
    });
    let r = audit_file(&d.path().join("ntfs.img"), &AuditOptions::default()).unwrap();
    assert!(!error_of(&r, 3).is_empty());
    assert!(!r.is_clean());
}

#[test]
fn a_directory_cycle_ends_in_bounded_time() {
    let img = fixture("linux-clean.img", "make-linux-image.sh", &["clean"]);
    let d = tempfile::tempdir().unwrap();
    let part = d.path().join("root.ext4");
    // Carve the partition out, link a directory into itself with debugfs, put it back.
    let sh = format!(
        "set -e; dd if={img} of={part} bs=1M skip=1 count=62 status=none; \
         debugfs -w -R 'mkdir /loop' {part} >/dev/null 2>&1; \
         debugfs -w -R 'ln /loop /loop/again' {part} >/dev/null 2>&1; \
         cp --sparse=always {img} {d}/cycle.img; \
         dd if={part} of={d}/cycle.img bs=1M seek=1 conv=notrunc,sparse status=none",
        img = img.display(),
        part = part.display(),
        d = d.path().display()
    );
    assert!(
        Command::new("bash")
            .args(["-c", &sh])
            .status()
            .unwrap()
            .success()
    );
    let t = std::time::Instant::now();
    let r = audit_file(&d.path().join("cycle.img"), &AuditOptions::default()).unwrap();
    let e = error_of(&r, 1);
    assert!(e.contains("cycle"), "{e}");
    assert!(t.elapsed().as_secs() < 60);
}

#[test]
fn garbage_filesystems_never_hang_or_panic_the_audit() {
    // Overwrite metadata regions with seeded garbage, keeping each magic number so the
    // readers go deep: every partition either audits or ends with an error, quickly.
    let w = win("win");
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..4 {
        let d = damaged(&w, "g.img", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            for _ in 0..64 {
                let off = (1 << 20) + rnd() % (len - (2 << 20));
                let junk: Vec<u8> = (0..4096).map(|_| rnd() as u8).collect();
                poke(p, off, &junk);
            }
        });
        let t = std::time::Instant::now();
        let r = audit_file(&d.path().join("g.img"), &AuditOptions::default()).unwrap();
        assert_eq!(r.partitions.len(), 4, "round {round}");
        assert!(t.elapsed().as_secs() < 120, "round {round}");
    }
}
