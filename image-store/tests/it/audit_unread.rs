//! What the audit cannot read a tree from must read as zeros (rules 3): partitions holding a
//! filesystem it does not read (xfs, btrfs), a damaged signature, raw bytes, a BitLocker volume,
//! bytes outside every partition, and a table entry past the image's end. Each is refused as
//! not clean with what and where; a blank partition is clean.

use std::path::Path;
use std::process::Command;

use image_store::audit::{
    self, AuditOptions, AuditReport, NotClean, PartitionStatus, RULE_OUTSIDE, RULE_UNREAD,
    audit_file,
};

use super::audit::{damaged, error_of, fixture, poke, win};

fn run(sh: &str) {
    let st = Command::new("bash").args(["-c", sh]).status().unwrap();
    assert!(st.success(), "{sh}");
}

fn audited(p: &Path) -> AuditReport {
    audit_file(p, &AuditOptions::default()).unwrap()
}

/// The one `fs.unread` finding of partition `number`, and the partition's status reason.
fn unread(r: &AuditReport, number: u32) -> (String, String) {
    let p = r.partitions.iter().find(|p| p.number == number).unwrap();
    let PartitionStatus::NotAudited { reason } = &p.status else {
        panic!("partition {number}: expected not read, got {p:?}");
    };
    let f: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.rule == RULE_UNREAD && f.partition == number)
        .collect();
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert_eq!(f[0].severity, audit::Severity::Risk);
    (f[0].detail.clone(), reason.clone())
}

/// Offset in bytes of partition `n` of the win fixture (512-byte sectors).
fn start_of(img: &Path, n: u32) -> u64 {
    let mut f = std::fs::File::open(img).unwrap();
    let size = f.metadata().unwrap().len();
    let g = audit::gpt_of(&mut f, size).unwrap().unwrap();
    g.partitions
        .iter()
        .find(|p| p.number == n)
        .unwrap()
        .first_lba
        * 512
}

#[test]
fn data_in_a_partition_without_a_filesystem_blocks_until_accepted() {
    let w = win("win");
    let msr = start_of(&w, 2);
    // 1 MiB of bytes that are no filesystem, in the middle of the MSR.
    let d = damaged(&w, "raw.img", |p| {
        let junk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
        poke(p, msr + (4 << 20), &junk)
    });
    let mut r = audited(&d.path().join("raw.img"));
    let (detail, reason) = unread(&r, 2);
    assert!(
        detail.starts_with("1.0 MiB of 16.0 MiB hold non-zero bytes"),
        "{detail}"
    );
    assert!(reason.contains("no filesystem the audit reads"), "{reason}");
    assert!(!r.is_clean());
    let e = audit::require_clean(Some(&r)).unwrap_err();
    assert!(
        matches!(&e, NotClean::Findings { rule, .. } if rule == RULE_UNREAD),
        "{e}"
    );
    assert!(
        r.verdict_line()
            .starts_with("NOT clean: 1 blocking finding"),
        "{}",
        r.verdict_line()
    );
    // A maintainer who knows what it is accepts it explicitly; then it is clean.
    let id = r
        .findings
        .iter()
        .find(|f| f.rule == RULE_UNREAD)
        .unwrap()
        .id
        .clone();
    r.accepted.push(audit::Acceptance {
        finding: id,
        reason: "boot-code".into(),
        at: "2026-12-02T00:00:00Z".into(),
    });
    assert!(r.is_clean(), "{}", r.verdict_line());
    assert!(audit::require_clean(Some(&r)).is_ok());
}

#[test]
fn a_damaged_superblock_is_not_a_blank_partition() {
    // ext4 with its magic overwritten: no reader takes it, and its files are still there.
    let img = fixture("linux-clean.img", "make-linux-image.sh", &["clean"]);
    let d = damaged(&img, "nomagic.img", |p| poke(p, (1 << 20) + 1080, &[0, 0]));
    let r = audited(&d.path().join("nomagic.img"));
    let (detail, _) = unread(&r, 1);
    assert!(detail.contains("hold non-zero bytes"), "{detail}");
    assert!(!r.is_clean());
}

#[test]
fn bitlocker_volumes_are_unread_and_say_why() {
    let w = win("win");
    let p4 = start_of(&w, 4);
    let d = damaged(&w, "fve.img", |p| poke(p, p4 + 3, b"-FVE-FS-"));
    let r = audited(&d.path().join("fve.img"));
    let (_, reason) = unread(&r, 4);
    assert!(reason.contains("BitLocker"), "{reason}");
    assert_eq!(r.partitions[3].filesystem, "bitlocker");
    assert!(!r.is_clean());
}

#[test]
fn xfs_and_btrfs_partitions_are_not_passed_unread() {
    // A GPT image with an empty xfs and a btrfs holding one file (copied in by mkfs itself:
    // nothing is mounted).
    let d = tempfile::tempdir().unwrap();
    let t = d.path().display();
    run(&format!(
        "set -e; cd {t}; mkdir -p tree; echo 'a file' > tree/notes.txt; \
         truncate -s 320M xfs.part; mkfs.xfs -q -f xfs.part; \
         truncate -s 120M btrfs.part; mkfs.btrfs -q -f --rootdir tree btrfs.part >/dev/null; \
         truncate -s 450M disk.img; \
         sgdisk -Z -n 1:2048:+320M -t 1:8300 -c 1:XFS -n 2:0:+120M -t 2:8300 -c 2:BTRFS \
           disk.img >/dev/null; \
         dd if=xfs.part of=disk.img bs=1M seek=1 conv=notrunc,sparse status=none; \
         dd if=btrfs.part of=disk.img bs=1M seek=321 conv=notrunc,sparse status=none"
    ));
    let r = audited(&d.path().join("disk.img"));
    assert_eq!(r.partitions[0].filesystem, "xfs");
    assert_eq!(r.partitions[1].filesystem, "btrfs");
    for n in [1, 2] {
        let (_, reason) = unread(&r, n);
        assert!(reason.contains("which the audit does not read"), "{reason}");
    }
    assert!(!r.is_clean());
}

#[test]
fn a_partition_of_zeros_is_blank_and_clean() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().display();
    run(&format!(
        "set -e; cd {t}; truncate -s 40M disk.img; \
         sgdisk -Z -n 1:2048:+16M -t 1:ef02 -c 1:bios -n 2:0:+8M -t 2:8300 disk.img >/dev/null"
    ));
    let r = audited(&d.path().join("disk.img"));
    for p in &r.partitions {
        assert!(matches!(p.status, PartitionStatus::Blank { .. }), "{p:?}");
    }
    assert!(r.is_clean(), "{}", r.verdict_line());
    assert_eq!(
        r.verdict_line(),
        "clean (0 findings, 2 partitions blank, rules 3)"
    );
}

#[test]
fn bytes_outside_every_partition_are_found() {
    let w = win("win");
    // Between the GPT's entry array and the first partition (LBA 34..2048): written to every
    // disk, in no filesystem.
    let d = damaged(&w, "gap.img", |p| {
        poke(p, 100 * 512, b"j.doe@example.com lives here");
        poke(p, 1000 * 512, &[0xAB; 512]);
    });
    let r = audited(&d.path().join("gap.img"));
    let f: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.rule == RULE_OUTSIDE)
        .collect();
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert_eq!(f[0].partition, 0);
    assert!(
        f[0].detail.starts_with("< 0.1 MiB of the"),
        "{}",
        f[0].detail
    );
    assert!(!f[0].detail.contains("example"), "{}", f[0].detail);
    assert_eq!(r.outside.unwrap().nonzero_bytes, 2 * 4096);
    assert!(!r.is_clean());
    // The GPT's own structures are not "outside": the unchanged image measures zero there.
    assert_eq!(audited(&w).outside.unwrap().nonzero_bytes, 0);
}

#[test]
fn a_table_entry_past_the_image_end_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().display();
    // The table is made for a 64 MiB disk, then the image is cut to 32 MiB and given a backup
    // table there (sgdisk -e), so the entry for partition 1 reaches past the end.
    run(&format!(
        "set -e; cd {t}; truncate -s 64M disk.img; \
         sgdisk -Z -n 1:2048:+48M -t 1:8300 disk.img >/dev/null; \
         truncate -s 32M disk.img; sgdisk -e disk.img >/dev/null 2>&1 || true"
    ));
    let r = audited(&d.path().join("disk.img"));
    let e = error_of(&r, 1);
    assert!(e.contains("past the image's end"), "{e}");
    assert!(!r.is_clean());
    let refused = audit::require_clean(Some(&r)).unwrap_err();
    assert!(
        matches!(refused, NotClean::Unreadable { number: 1, .. }),
        "{refused}"
    );
}

#[test]
fn audits_by_older_rules_that_passed_a_partition_unread_are_refused() {
    // What rules 2 recorded for a partition it did not read: no finding, "clean" then.
    let r: AuditReport = serde_json::from_value(serde_json::json!({
        "rules_version": 2,
        "deep": false,
        "partitions": [{"number": 2, "name": "DATA", "filesystem": "none",
                        "status": "not_audited", "reason": "no filesystem the audit reads"}],
        "findings": [],
    }))
    .unwrap();
    assert!(!r.is_clean());
    assert!(
        r.verdict_line()
            .contains("1 partition never read (rules 2)"),
        "{}",
        r.verdict_line()
    );
    let e = audit::require_clean(Some(&r)).unwrap_err();
    assert!(
        matches!(
            e,
            NotClean::NeverRead {
                number: 2,
                rules: 2
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--record"), "{e}");
}

#[test]
fn bytes_after_a_filesystems_end_inside_its_partition_are_found() {
    // The fixture's ext4 ends a few KiB before its partition does (mkfs rounds down to whole
    // blocks): the partition's last sector is read by no filesystem.
    let img = fixture("linux-clean.img", "make-linux-image.sh", &["clean"]);
    let r = audited(&img);
    assert!(r.is_clean(), "{}", r.verdict_line());
    let mut f = std::fs::File::open(&img).unwrap();
    let size = f.metadata().unwrap().len();
    let g = audit::gpt_of(&mut f, size).unwrap().unwrap();
    let last = g.partitions[0].last_lba * 512;
    let d = damaged(&img, "tail.img", |p| poke(p, last, b"jane.doe@example.com"));
    let r = audited(&d.path().join("tail.img"));
    let f: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.rule == audit::RULE_BEYOND)
        .collect();
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert!(
        f[0].detail.contains("after the ext4 filesystem's end"),
        "{}",
        f[0].detail
    );
    assert!(!f[0].detail.contains("example"), "{}", f[0].detail);
    assert!(!r.is_clean());
    // And before its superblock: the first 1024 bytes of the ext4.
    let d = damaged(&img, "head.img", |p| {
        poke(p, (1 << 20) + 16, b"jane.doe@example.com")
    });
    let r = audited(&d.path().join("head.img"));
    assert!(
        r.findings.iter().any(|f| f.rule == "fs.boot-area"),
        "{:?}",
        r.findings
    );
    assert!(!r.is_clean());
}

#[test]
fn the_partition_tables_unused_bytes_must_be_zero_too() {
    let w = win("win");
    let len = std::fs::metadata(&w).unwrap().len();
    // The backup array's first slot (partition 1) renamed: the primary's is what the imager
    // writes, so the backup's bytes are data no table names.
    let backup_slot0_name = len - 33 * 512 + 56;
    for (off, place) in [
        (100, "the protective MBR's boot code"),
        (512 + 200, "the primary GPT header's reserved bytes"),
        (
            backup_slot0_name,
            "a backup GPT that differs from the primary",
        ),
    ] {
        let d = damaged(&w, "t.img", |p| poke(p, off, b"jane.doe@example.com"));
        let r = audited(&d.path().join("t.img"));
        let f: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.rule == RULE_OUTSIDE)
            .collect();
        assert_eq!(f.len(), 1, "at {off}: {:?}", r.findings);
        assert!(f[0].detail.contains(place), "at {off}: {}", f[0].detail);
        assert!(!r.is_clean());
    }
}

#[test]
fn a_fat32_mtools_misreads_is_not_taken_for_an_empty_one() {
    // mtools 4.0.32 reads a FAT32 of 4 KiB clusters and few of them as a FAT16 without root
    // entries: `mdir -/` fails, and plain `mdir` says "No files". A root holding a user's hive
    // must then end the partition with an error, never "audited, 0 entries".
    let d = tempfile::tempdir().unwrap();
    let fat = d.path().join("esp.fat");
    run(&format!(
        "truncate -s 100M {f}; mkfs.fat -F 32 -s 8 {f} >/dev/null",
        f = fat.display()
    ));
    let clean = audited(&fat);
    assert!(
        clean.is_clean(),
        "an empty one is clean: {}",
        clean.verdict_line()
    );
    let b = std::fs::read(&fat).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as u64;
    let (bps, spc, reserved, nfats, fatsz) = (
        u16_at(11),
        b[13] as u64,
        u16_at(14),
        b[16] as u64,
        u32_at(36),
    );
    let data = (reserved + nfats * fatsz) * bps;
    let cluster = |c: u64| data + (c - 2) * spc * bps;
    // Root (cluster 2), slot 0: NTUSER.DAT, 20 bytes in cluster 3; cluster 3 ends its chain.
    let mut entry = [0u8; 32];
    entry[..11].copy_from_slice(b"NTUSER  DAT");
    entry[11] = 0x20;
    entry[26..28].copy_from_slice(&3u16.to_le_bytes());
    entry[28..32].copy_from_slice(&20u32.to_le_bytes());
    poke(&fat, cluster(2), &entry);
    for f in 0..nfats {
        poke(
            &fat,
            (reserved + f * fatsz) * bps + 3 * 4,
            &0x0FFF_FFFFu32.to_le_bytes(),
        );
    }
    poke(&fat, cluster(3), b"jane.doe@example.com");
    let r = audited(&fat);
    assert!(!r.is_clean(), "{:?}", r.partitions);
    assert!(
        !matches!(
            r.partitions[0].status,
            PartitionStatus::Audited { entries: 0 }
        ),
        "{:?}",
        r.partitions[0]
    );
}
