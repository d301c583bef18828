//! The audit's FAT reader on a FAT32 ESP as mkfs.fat and Windows make it (fewer than 65525
//! clusters, which fatfs 0.3 refused), remnants in free space (a deleted file's data) on FAT
//! and ext4, and `import --scrub-free` storing the image with that free space zeroed.
//! Fixtures are built here with mkfs.fat + mtools and the Linux fixture script + debugfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use image_store::audit::{AuditOptions, AuditReport, PartitionStatus, audit_file};
use image_store::{ImageRef, ImportOptions, ImportReport, Store};

fn sh(script: &str) {
    let st = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail; {script}")])
        .env("MTOOLS_SKIP_CHECK", "1")
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

/// A 128 MiB GPT image whose only partition is a 100 MiB FAT32 ESP holding a boot loader, a
/// user's document (with a UK NI number in it) and the data of a deleted 1 MiB file.
fn fat32_image(dir: &Path) -> PathBuf {
    let img = dir.join("esp.img");
    sh(&format!(
        "img={img}; d={d}; truncate -s 128M $img; \
         sgdisk -n 1:2048:+100M -t 1:ef00 -c 1:ESP $img >/dev/null; \
         mkfs.fat -F 32 -n ESP --offset 2048 $img 102400 >/dev/null; \
         m=$img@@1M; \
         mmd -i $m ::/EFI ::/EFI/Boot ::/Users ::/Users/jsmith ::/Users/jsmith/Documents; \
         printf 'MZ boot' >$d/boot; mcopy -i $m $d/boot ::/EFI/Boot/BOOTX64.EFI; \
         printf 'Jane Smith, NI QQ123456C\\n' >$d/tax; \
         mcopy -i $m $d/tax '::/Users/jsmith/Documents/tax return 2025.txt'; \
         head -c 1M /dev/urandom >$d/gone; mcopy -i $m $d/gone ::/gone.bin; \
         mdel -i $m ::/gone.bin",
        img = img.display(),
        d = dir.display()
    ));
    img
}

fn has(r: &AuditReport, rule: &str, path: &str) -> bool {
    r.findings.iter().any(|f| f.rule == rule && f.path == path)
}

#[test]
fn a_fat32_esp_with_few_clusters_is_read_and_its_remnants_measured() {
    let d = tempfile::tempdir().unwrap();
    let img = fat32_image(d.path());
    let r = audit_file(
        &img,
        &AuditOptions {
            deep: true,
            ..Default::default()
        },
    )
    .unwrap();
    let p = &r.partitions[0];
    assert_eq!(p.filesystem, "fat");
    assert!(
        matches!(p.status, PartitionStatus::Audited { entries } if entries >= 7),
        "{p:?}"
    );
    assert!(has(&r, "win.profile", "/Users/jsmith"), "{:?}", r.findings);
    assert!(has(
        &r,
        "user.documents",
        "/Users/jsmith/Documents/tax return 2025.txt"
    ));
    // --deep read the file's contents through mcopy: one NI number, counted, never kept.
    let deep = r
        .findings
        .iter()
        .find(|f| f.rule == "deep.personal-data")
        .expect("the NI number is found");
    assert!(deep.detail.contains("1 UK NI number"), "{}", deep.detail);
    // The deleted file's 1 MiB is still in free space.
    let free = p.free.expect("free space measured");
    assert!(
        free.nonzero_bytes >= 1 << 20 && free.nonzero_bytes < 2 << 20,
        "{free:?}"
    );
    assert!(r.findings.iter().any(|f| f.rule == "fs.remnants"));
    let json = serde_json::to_string(&r).unwrap();
    for secret in ["QQ123456C", "Jane Smith"] {
        assert!(!json.contains(secret), "{secret} leaked: {json}");
    }
}

/// Imports `img` as `NAME@1` and again with `--scrub-free` as `NAME@1-scrubbed`: both import
/// reports and the scrubbed image's name.
fn import_plain_and_scrubbed(
    store: &Store,
    name: &str,
    img: &Path,
) -> (ImportReport, ImportReport, ImageRef) {
    let plain: ImageRef = format!("{name}@1").parse().unwrap();
    let scrubbed: ImageRef = format!("{name}@1-scrubbed").parse().unwrap();
    let r1 = store
        .import(&plain, img, &ImportOptions::default(), None)
        .unwrap();
    let opts = ImportOptions {
        scrub_free: true,
        ..Default::default()
    };
    let r2 = store.import(&scrubbed, img, &opts, None).unwrap();
    (r1, r2, scrubbed)
}

/// The clean Linux fixture with a 2 MiB file written and removed again by debugfs: its blocks
/// are free and still hold the data.
fn ext4_with_deleted_file(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-linux-image.sh");
    let img = dir.join("linux.img");
    sh(&format!(
        "bash {script} clean {img}; d={d}; \
         dd if={img} of=$d/root.ext4 bs=512 skip=2048 count=129990 status=none; \
         head -c 2M /dev/urandom >$d/secret; \
         debugfs -w -R 'write {d}/secret /secret' $d/root.ext4 >/dev/null 2>&1; \
         debugfs -w -R 'rm /secret' $d/root.ext4 >/dev/null 2>&1; \
         dd if=$d/root.ext4 of={img} bs=512 seek=2048 conv=notrunc,sparse status=none",
        script = script.display(),
        img = img.display(),
        d = dir.display()
    ));
    img
}

#[test]
fn scrub_free_stores_the_image_with_free_space_zeroed_and_keeps_both_hashes() {
    let d = tempfile::tempdir().unwrap();
    let img = ext4_with_deleted_file(d.path());
    let before = audit_file(&img, &AuditOptions::default()).unwrap();
    let free = before.partitions[0].free.expect("measured");
    assert!(free.nonzero_bytes >= 2 << 20, "{free:?}");
    assert!(
        before.findings.iter().any(|f| f.rule == "fs.remnants"),
        "{:?}",
        before.findings
    );
    assert!(!before.is_clean());

    let store = Store::open(&d.path().join("store")).unwrap();
    let (r1, r2, scrubbed) = import_plain_and_scrubbed(&store, "linux", &img);
    assert!(r1.manifest.scrubbed.is_none());
    let s = r2.manifest.scrubbed.clone().expect("scrubbed recorded");
    // Both hashes: the source's (as the plain import computed them) and the stored image's.
    assert_eq!(s.source_sha256, r1.manifest.sha256);
    assert_eq!(s.source_blake3, r1.manifest.blake3);
    assert_ne!(r2.manifest.blake3, r1.manifest.blake3);
    assert!(
        s.nonzero_bytes >= 2 << 20 && s.free_bytes >= s.nonzero_bytes,
        "{s:?}"
    );
    // Smaller, and the audit at import (of what was stored) finds no remnants: clean.
    assert!(r2.data_bytes < r1.data_bytes);
    let audit = r2.manifest.audit.clone().unwrap();
    assert!(audit.is_clean(), "{:?}", audit.findings);
    assert_eq!(audit.partitions[0].free.unwrap().nonzero_bytes, 0);
    // The filesystem itself is intact: e2fsck of the exported image's partition finds nothing.
    let out = d.path().join("out.img");
    store.export(&scrubbed, &out).unwrap();
    sh(&format!(
        "dd if={o} of={d}/check.ext4 bs=512 skip=2048 count=129990 status=none; \
         e2fsck -fn {d}/check.ext4 >/dev/null",
        o = out.display(),
        d = d.path().display()
    ));
    let again = audit_file(&out, &AuditOptions::default()).unwrap();
    assert_eq!(
        again.partitions[0].status, before.partitions[0].status,
        "same tree"
    );
    // A compressed source is refused with the reason, before anything is stored.
    let zst = d.path().join("linux.img.zst");
    sh(&format!(
        "zstd -q -1 {} -o {}",
        img.display(),
        zst.display()
    ));
    let e = store
        .import(
            &"linux@2".parse().unwrap(),
            &zst,
            &ImportOptions {
                scrub_free: true,
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("--scrub-free"), "{e}");
}

/// Finds the 32-byte directory entry with short name `name` (11 bytes, padded) and the
/// directory attribute, from `from`.
fn dir_entry(bytes: &[u8], name: &[u8; 11], from: usize) -> usize {
    (from..bytes.len() - 32)
        .step_by(32)
        .find(|&o| &bytes[o..o + 11] == name && bytes[o + 11] & 0x10 != 0)
        .expect("directory entry")
}

#[test]
fn a_fat_directory_cycle_ends_that_partition_with_an_error_in_bounded_time() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("cycle.img");
    sh(&format!(
        "img={img}; truncate -s 128M $img; \
         sgdisk -n 1:2048:+100M -t 1:ef00 -c 1:ESP $img >/dev/null; \
         mkfs.fat -F 32 -n ESP --offset 2048 $img 102400 >/dev/null; \
         mmd -i $img@@1M ::/LOOPA ::/LOOPA/LOOPB",
        img = img.display()
    ));
    // Point LOOPB's first cluster at LOOPA's: /LOOPA/LOOPB is /LOOPA again, without end.
    let mut bytes = std::fs::read(&img).unwrap();
    let a = dir_entry(&bytes, b"LOOPA      ", 1 << 20);
    let (hi, lo) = (
        [bytes[a + 20], bytes[a + 21]],
        [bytes[a + 26], bytes[a + 27]],
    );
    let b = dir_entry(&bytes, b"LOOPB      ", 1 << 20);
    bytes[b + 20..b + 22].copy_from_slice(&hi);
    bytes[b + 26..b + 28].copy_from_slice(&lo);
    std::fs::write(&img, bytes).unwrap();
    let t = std::time::Instant::now();
    let r = audit_file(&img, &AuditOptions::default()).unwrap();
    let PartitionStatus::Error { reason } = &r.partitions[0].status else {
        panic!("a cycle was audited: {:?}", r.partitions[0]);
    };
    assert!(
        reason.contains("cycle") || reason.contains("mdir"),
        "{reason}"
    );
    assert!(!r.is_clean());
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
}

/// The NTFS fixture (`tests/fixtures/make-ntfs-image.sh`): a deleted 3 MiB file's data in free
/// space. Returns the image and its one partition's first byte.
fn ntfs_with_deleted_file(dir: &Path) -> (PathBuf, u64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-ntfs-image.sh");
    let img = dir.join("ntfs.img");
    sh(&format!("bash {} {}", script.display(), img.display()));
    (img, 1 << 20)
}

/// The free clusters of the NTFS partition at `start` of `img`, read by ntfs-3g's own library
/// (`ntfscat` of `$Bitmap`, record 6), not by the audit's reader: (cluster size, free cluster
/// numbers).
fn ntfs_free_clusters(dir: &Path, img: &Path, start: u64) -> (u64, Vec<u64>) {
    let part = dir.join("check.ntfs");
    sh(&format!(
        "dd if={} of={} bs=1M skip={} status=none",
        img.display(),
        part.display(),
        start >> 20
    ));
    let bits = tek_testkit::run_ok(
        Command::new("ntfscat").args(["-f", "-i", "6"]).arg(&part),
        None,
    )
    .stdout;
    let boot = std::fs::read(&part).unwrap();
    let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
    let clusters = boot.len() as u64 / cluster;
    std::fs::remove_file(&part).unwrap();
    let free = (0..clusters)
        .filter(|&c| bits[(c / 8) as usize] & (1 << (c % 8)) == 0)
        .collect();
    (cluster, free)
}

#[test]
fn ntfs_remnants_are_measured_and_scrub_free_zeroes_them() {
    let d = tempfile::tempdir().unwrap();
    let (img, start) = ntfs_with_deleted_file(d.path());
    let before = audit_file(&img, &AuditOptions::default()).unwrap();
    let p = &before.partitions[0];
    assert_eq!(p.filesystem, "ntfs");
    assert!(matches!(p.status, PartitionStatus::Audited { .. }), "{p:?}");
    let free = p.free.expect("free space measured");
    // The deleted file's 3 MiB, nothing else (mkntfs -Q leaves the rest of a sparse file zero).
    assert!(
        free.nonzero_bytes >= 3 << 20 && free.nonzero_bytes < 4 << 20,
        "{free:?}"
    );
    let f = before
        .findings
        .iter()
        .find(|f| f.rule == "fs.remnants" && f.partition == 1)
        .expect("a remnants finding for partition 1");
    assert!(f.detail.starts_with("3.0 MiB of "), "{}", f.detail);
    assert!(!before.is_clean());
    // ntfs-3g's library agrees on what is free, and the free clusters hold the data.
    let (cluster, free_clusters) = ntfs_free_clusters(d.path(), &img, start);
    assert_eq!(free_clusters.len() as u64 * cluster, free.free_bytes);

    let store = Store::open(&d.path().join("store")).unwrap();
    let (plain, r, scrubbed) = import_plain_and_scrubbed(&store, "win", &img);
    let s = r.manifest.scrubbed.clone().expect("scrubbed recorded");
    assert_eq!(s.source_sha256, plain.manifest.sha256);
    assert_eq!(s.source_blake3, plain.manifest.blake3);
    assert_ne!(r.manifest.sha256, plain.manifest.sha256);
    assert!(s.nonzero_bytes >= 3 << 20, "{s:?}");
    let audit = r.manifest.audit.clone().unwrap();
    assert!(audit.is_clean(), "{:?}", audit.findings);
    assert_eq!(audit.partitions[0].free.unwrap().nonzero_bytes, 0);

    // The stored image, exported: every cluster ntfs-3g's $Bitmap calls free reads zero, the
    // stored image's hashes are the manifest's, and the files read as before.
    let out = d.path().join("out.img");
    store.export(&scrubbed, &out).unwrap();
    let (_, after) = ntfs_free_clusters(d.path(), &out, start);
    assert_eq!(after, free_clusters);
    let bytes = std::fs::read(&out).unwrap();
    let dirty: Vec<u64> = after
        .iter()
        .copied()
        .filter(|&c| {
            let at = (start + c * cluster) as usize;
            bytes[at..at + cluster as usize].iter().any(|&b| b != 0)
        })
        .collect();
    assert!(dirty.is_empty(), "free clusters not zero: {dirty:?}");
    assert_eq!(
        blake3::hash(&bytes).to_hex().to_string(),
        r.manifest.blake3,
        "the manifest's blake3 is the stored image's"
    );
    let again = audit_file(&out, &AuditOptions::default()).unwrap();
    assert_eq!(again.partitions[0].status, before.partitions[0].status);
    sh(&format!(
        "dd if={o} of={d}/x.ntfs bs=1M skip=1 status=none; \
         ntfscat -f {d}/x.ntfs /big.txt | cmp - <(head -c 65536 < <(yes 'nothing personal here, just a long text file')); \
         rm {d}/x.ntfs",
        o = out.display(),
        d = d.path().display()
    ));
}

/// A GPT image of `mib` + 20 MiB whose one partition (at 1 MiB) is a fresh ext4 of `mib` MiB
/// with `block` byte blocks (0: mke2fs's choice, 1 KiB below 512 MiB): most of its groups are
/// `BLOCK_UNINIT`, their bitmaps never written. `features` goes to mke2fs's `-O` (empty: none).
fn fresh_ext4(dir: &Path, name: &str, mib: u64, block: u64, features: &str) -> PathBuf {
    let img = dir.join(name);
    let mut b = if block == 0 {
        String::new()
    } else {
        format!("-b {block}")
    };
    if !features.is_empty() {
        b.push_str(&format!(" -O {features}"));
    }
    sh(&format!(
        "img={img}; truncate -s {size}M $img; \
         sgdisk -n 1:2048:0 -t 1:8300 $img >/dev/null; \
         mkfs.ext4 -q -F {b} -E offset=1048576 $img {mib}M",
        img = img.display(),
        size = mib + 20,
    ));
    img
}

/// The free byte ranges (absolute, merged) of the image's ext4 partition as `dumpe2fs` lists
/// them group by group, and how many groups it calls `BLOCK_UNINIT`.
fn dumpe2fs_free(dir: &Path, img: &Path, mib: u64) -> (Vec<(u64, u64)>, usize) {
    let part = dir.join("part.ext4");
    sh(&format!(
        "dd if={} of={} bs=1M skip=1 count={mib} status=none",
        img.display(),
        part.display()
    ));
    let out = tek_testkit::run_ok(Command::new("dumpe2fs").arg(&part), None);
    let text = String::from_utf8(out.stdout).unwrap();
    let bs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for l in text.lines() {
        // The group lines (indented); the superblock's own "Free blocks:" is a count.
        let Some(list) = l.strip_prefix("  Free blocks: ") else {
            continue;
        };
        for r in list.split(", ").filter(|r| !r.is_empty()) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            let (off, len) = ((1 << 20) + a * bs, (b - a + 1) * bs);
            match ranges.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => ranges.push((off, len)),
            }
        }
    }
    std::fs::remove_file(&part).unwrap();
    (ranges, text.matches("BLOCK_UNINIT").count())
}

#[test]
fn ext4_groups_never_allocated_from_are_free_space_exactly_as_dumpe2fs_counts_it() {
    // 1 KiB blocks (superblock backups with 256 reserved descriptor blocks in groups 1, 3, 5,
    // 7, 9, 25, 27, 49), 4 KiB blocks (flex_bg metadata in group 0), and META_BG (1 KiB: the
    // descriptor blocks in groups 0, 1, 31, 32, 33 and 63 of 32-group meta groups, none
    // after the backups).
    let d = tempfile::tempdir().unwrap();
    for (name, mib, block, features) in [
        ("k1.img", 400, 0, ""),
        ("k4.img", 1200, 4096, ""),
        ("meta.img", 520, 1024, "meta_bg,^resize_inode"),
    ] {
        let img = fresh_ext4(d.path(), name, mib, block, features);
        let (want, uninit) = dumpe2fs_free(d.path(), &img, mib);
        assert!(uninit >= 2, "{name}: {uninit} BLOCK_UNINIT groups");
        let got = image_store::scrub::image_free_ranges(&img).unwrap();
        assert_eq!(got, want, "{name}: free ranges against dumpe2fs");
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn data_left_in_a_never_used_ext4_group_is_measured_and_scrubbed() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh_ext4(d.path(), "reused.img", 400, 0, "");
    // An earlier filesystem's data in group 2 (blocks 16385-24576 of 1 KiB, BLOCK_UNINIT):
    // what a disk imaged after mkfs, not wiped, still holds there.
    let at = (1 << 20) + 20000 * 1024;
    sh(&format!(
        "head -c 1M /dev/urandom | dd of={} bs=1K seek={} conv=notrunc status=none",
        img.display(),
        at / 1024
    ));
    let report = audit_file(&img, &AuditOptions::default()).unwrap();
    let free = report.partitions[0].free.expect("measured");
    assert!(free.nonzero_bytes >= 1 << 20, "{free:?}");
    assert!(report.findings.iter().any(|f| f.rule == "fs.remnants"));

    let store = Store::open(&d.path().join("store")).unwrap();
    let (_, r2, scrubbed) = import_plain_and_scrubbed(&store, "reused", &img);
    let audit = r2.manifest.audit.clone().unwrap();
    assert_eq!(audit.partitions[0].free.unwrap().nonzero_bytes, 0);
    let out = d.path().join("out.img");
    store.export(&scrubbed, &out).unwrap();
    // Zero where the data was; the filesystem intact, and so are the backup superblock and
    // descriptor blocks of group 3 (blocks 24577-24837, beside the scrubbed ranges).
    sh(&format!(
        "o={o}; i={i}; cmp -n 1048576 <(dd if=$o bs=1K skip={k} count=1024 status=none) /dev/zero; \
         cmp <(dd if=$i bs=1K skip=$((1024 + 24577)) count=261 status=none) \
             <(dd if=$o bs=1K skip=$((1024 + 24577)) count=261 status=none); \
         dd if=$o of={d}/check.ext4 bs=1M skip=1 count=400 status=none; \
         e2fsck -fn {d}/check.ext4 >/dev/null 2>&1",
        o = out.display(),
        i = img.display(),
        k = at / 1024,
        d = d.path().display()
    ));
}
