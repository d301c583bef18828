//! Hostile NTFS against the privacy audit: copies of a clean NTFS image
//! (`tests/fixtures/make-ntfs-image.sh`) with their MFT damaged here, record by record: a
//! directory that contains itself, a directory that contains its grandparent (a parent cycle),
//! a file's runlist pointing past the volume with sizes of exabytes, the `$MFT`'s and `$Bitmap`'s
//! own runlists pointing past the volume, the root's record with a broken update sequence, a
//! directory's record without its `FILE` magic. Each audit ends with an error for that
//! partition (or, where only the free-space map is unreadable, an info finding saying so), in
//! seconds, with bounded heap (this binary counts allocations), and mounts nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use image_store::audit::{AuditOptions, AuditReport, PartitionStatus, audit_file};

/// Heap one audit of the 64 MiB image may use at peak (other tests of this binary run at the
/// same time and count too): an allocation sized from a hostile length field would be GiBs.
const HEAP_LIMIT: usize = 256 << 20;
/// Time one audit may take.
const TIME_LIMIT: Duration = Duration::from_secs(30);
/// First byte of the NTFS partition in the fixture (GPT partition 1 at LBA 2048).
const PART: u64 = 1 << 20;

/// The clean fixture, built once per test binary run into `dir`.
fn fixture(dir: &Path) -> PathBuf {
    let out = dir.join("ntfs.img");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-ntfs-image.sh");
    let st = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .expect("running make-ntfs-image.sh");
    assert!(st.success(), "make-ntfs-image.sh failed");
    out
}

/// The volume's MFT layout, from its boot sector.
struct Mft {
    /// Byte offset of MFT record 0 in the image.
    start: u64,
    /// Bytes per MFT record.
    record: usize,
    /// Bytes per cluster.
    cluster: u64,
}

impl Mft {
    fn of(img: &[u8]) -> Mft {
        let b = &img[PART as usize..PART as usize + 512];
        let bps = u64::from(u16::from_le_bytes([b[11], b[12]]));
        let cluster = bps * u64::from(b[13]);
        let lcn = u64::from_le_bytes(b[0x30..0x38].try_into().unwrap());
        let cpr = b[0x40] as i8;
        let record = if cpr < 0 {
            1usize << -cpr
        } else {
            cpr as usize * cluster as usize
        };
        Mft {
            start: PART + lcn * cluster,
            record,
            cluster,
        }
    }

    fn at(&self, n: u64) -> usize {
        (self.start + n * self.record as u64) as usize
    }

    /// Record `n` with its update sequence applied (the real bytes at each sector's end).
    fn read(&self, img: &[u8], n: u64) -> Vec<u8> {
        let mut r = img[self.at(n)..self.at(n) + self.record].to_vec();
        assert_eq!(&r[..4], b"FILE", "record {n}");
        let (usa, count) = (u16_at(&r, 4), u16_at(&r, 6));
        for i in 1..count {
            let end = i * 512 - 2;
            let fix = usa + 2 * i;
            r.copy_within(fix..fix + 2, end);
        }
        r
    }

    /// Writes record `n` back, moving each sector's last two bytes into the update sequence
    /// array again and stamping the sequence number there.
    fn write(&self, img: &mut [u8], n: u64, mut r: Vec<u8>) {
        let (usa, count) = (u16_at(&r, 4), u16_at(&r, 6));
        let usn = [r[usa], r[usa + 1]];
        for i in 1..count {
            let end = i * 512 - 2;
            let fix = usa + 2 * i;
            r.copy_within(end..end + 2, fix);
            r[end..end + 2].copy_from_slice(&usn);
        }
        let at = self.at(n);
        img[at..at + self.record].copy_from_slice(&r);
    }

    /// The number of the record whose `$FILE_NAME` is `name` (in the Win32 or POSIX namespace).
    fn find(&self, img: &[u8], name: &str) -> u64 {
        let want: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        (16..256)
            .find(|&n| {
                let at = self.at(n);
                if &img[at..at + 4] != b"FILE" {
                    return false;
                }
                let r = self.read(img, n);
                attrs(&r).any(|(ty, a)| {
                    ty == 0x30 && {
                        let v = &a[u16_at(a, 0x14)..];
                        let len = v[0x40] as usize * 2;
                        v[0x42..0x42 + len] == want[..]
                    }
                })
            })
            .unwrap_or_else(|| panic!("no MFT record named {name}"))
    }

    /// The file reference (record number and sequence number) of record `n`.
    fn reference(&self, img: &[u8], n: u64) -> [u8; 8] {
        let seq = u16_at(&self.read(img, n), 0x10) as u64;
        (n | seq << 48).to_le_bytes()
    }
}

fn u16_at(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes([b[o], b[o + 1]]) as usize
}

/// The attributes of a record: (type, the attribute's bytes).
fn attrs(r: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    let mut at = u16_at(r, 0x14);
    std::iter::from_fn(move || {
        let ty = u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
        if ty == 0xFFFF_FFFF {
            return None;
        }
        let len = u32::from_le_bytes(r[at + 4..at + 8].try_into().unwrap()) as usize;
        let a = &r[at..at + len];
        at += len;
        Some((ty, a))
    })
}

/// Offset in the record of the attribute of type `ty`.
fn attr_offset(r: &[u8], ty: u32) -> usize {
    let base = r.as_ptr() as usize;
    attrs(r)
        .find(|(t, _)| *t == ty)
        .map(|(_, a)| a.as_ptr() as usize - base)
        .unwrap_or_else(|| panic!("no attribute {ty:#x}"))
}

/// Replaces the one occurrence of `from` in `r` with `to`.
fn replace_once(r: &mut [u8], from: &[u8], to: &[u8]) {
    let hits: Vec<usize> = (0..r.len() - from.len())
        .filter(|&i| &r[i..i + from.len()] == from)
        .collect();
    assert_eq!(hits.len(), 1, "{from:02x?} occurs {} times", hits.len());
    r[hits[0]..hits[0] + to.len()].copy_from_slice(to);
}

/// Rewrites the runlist of the non-resident attribute `ty` of record `n` as one run (of the
/// first run's length) starting as far past the volume as the attribute's room allows, and
/// (with `huge`) claims sizes of exabytes.
fn run_past_volume(m: &Mft, img: &mut [u8], n: u64, ty: u32, huge: bool) {
    let mut r = m.read(img, n);
    let a = attr_offset(&r, ty);
    assert_eq!(r[a + 8], 1, "attribute {ty:#x} of record {n} is resident");
    let runs = a + u16_at(&r, a + 0x20);
    let room = a + u32::from_le_bytes(r[a + 4..a + 8].try_into().unwrap()) as usize - runs;
    let len_bytes = (r[runs] & 0xF) as usize;
    // header, length, offset, terminator
    let off_bytes = (room - len_bytes - 2).min(8);
    assert!(
        off_bytes >= 3,
        "room for a {off_bytes}-byte run offset only"
    );
    r[runs] = (off_bytes << 4 | len_bytes) as u8;
    let off = runs + 1 + len_bytes;
    // The largest positive offset of that width: 2^23 clusters and more, past a 64 MiB volume.
    r[off..off + off_bytes].fill(0xFF);
    r[off + off_bytes - 1] = 0x7F;
    r[off + off_bytes] = 0;
    if huge {
        for field in [0x18, 0x28, 0x30, 0x38] {
            // last VCN, allocated, data and initialized size
            r[a + field..a + field + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        }
    }
    m.write(img, n, r);
}

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// Audits `img` (with `--deep`, so file contents are read too): the report, after checking
/// the bounds every hostile image must keep.
fn audit(img: &Path, what: &str) -> AuditReport {
    let before = mounts();
    let t = Instant::now();
    let opts = AuditOptions {
        deep: true,
        ..Default::default()
    };
    let (r, peak) = tek_fuzzkit::peak_heap(|| audit_file(img, &opts).unwrap());
    let took = t.elapsed();
    assert!(took < TIME_LIMIT, "{what}: {took:?}");
    assert!(peak < HEAP_LIMIT, "{what}: {peak} bytes of heap at peak");
    assert_eq!(mounts(), before, "{what}: the mount table changed");
    tek_fuzzkit::report(&format!(
        "ntfs hostile {what}: {took:?}, {} KiB heap at peak: {:?}",
        peak >> 10,
        r.partitions[0].status
    ));
    r
}

fn error_of(r: &AuditReport, what: &str) -> String {
    match &r.partitions[0].status {
        PartitionStatus::Error { reason } => {
            // Said in words: no error's Debug form (`Error { kind: UnexpectedEof, .. }`).
            assert!(!reason.contains("Error {"), "{what}: {reason}");
            reason.clone()
        }
        other => panic!(
            "{what}: expected an error, got {other:?} ({:?})",
            r.findings
        ),
    }
}

/// A damaged copy of `clean` in `dir`, as `name`.
fn damaged(dir: &Path, clean: &[u8], name: &str, f: impl FnOnce(&Mft, &mut Vec<u8>)) -> PathBuf {
    let mut img = clean.to_vec();
    let m = Mft::of(&img);
    f(&m, &mut img);
    let p = dir.join(name);
    std::fs::write(&p, img).unwrap();
    p
}

#[test]
fn hostile_ntfs_ends_the_audit_of_that_partition_in_bounded_time_and_memory() {
    let d = tempfile::tempdir().unwrap();
    let clean_path = fixture(d.path());
    let r = audit(&clean_path, "clean");
    assert!(
        matches!(r.partitions[0].status, PartitionStatus::Audited { entries } if entries >= 5),
        "{:?}",
        r.partitions[0]
    );
    let clean = std::fs::read(&clean_path).unwrap();
    let m = Mft::of(&clean);
    assert_eq!((m.record, m.cluster), (1024, 4096));

    // b's index entry for c names b's own record (/a/b/c is /a/b itself), or a's (/a/b/c is
    // /a: a parent cycle).
    for (what, target) in [("self-containing directory", "b"), ("parent cycle", "a")] {
        let p = damaged(d.path(), &clean, "cycle.img", |m, img| {
            let (b, c, t) = (m.find(img, "b"), m.find(img, "c"), m.find(img, target));
            let (cref, tref) = (m.reference(img, c), m.reference(img, t));
            let mut r = m.read(img, b);
            replace_once(&mut r, &cref, &tref);
            m.write(img, b, r);
        });
        let e = error_of(&audit(&p, what), what);
        assert!(e.contains("cycle"), "{e}");
    }

    // /big.txt's data runs past the volume and claims 2^60 bytes: reading it (--deep) fails.
    let p = damaged(d.path(), &clean, "runs.img", |m, img| {
        let big = m.find(img, "big.txt");
        run_past_volume(m, img, big, 0x80, true);
    });
    let e = error_of(&audit(&p, "file runlist past the volume"), "runs");
    assert!(e.contains("big.txt"), "{e}");

    // The $MFT's own runlist points past the volume: no record past the first can be read.
    let p = damaged(d.path(), &clean, "mft-runs.img", |m, img| {
        run_past_volume(m, img, 0, 0x80, true);
    });
    error_of(&audit(&p, "$MFT runlist past the volume"), "mft-runs");

    // The root directory's record fails its update sequence check (a torn or forged write).
    let p = damaged(d.path(), &clean, "root-usa.img", |m, img| {
        let at = m.at(5) + 510;
        img[at] ^= 0xFF;
    });
    error_of(
        &audit(&p, "root record with a broken update sequence"),
        "root-usa",
    );

    // Directory a's record is no MFT record at all.
    let p = damaged(d.path(), &clean, "magic.img", |m, img| {
        let at = m.at(m.find(img, "a"));
        img[at..at + 4].copy_from_slice(b"BAAD");
    });
    let e = error_of(&audit(&p, "directory record without FILE"), "magic");
    assert!(e.contains("/a"), "{e}");

    // $Bitmap's runlist past the volume: the tree is read; the free space is unknown, and
    // the report says so.
    let p = damaged(d.path(), &clean, "bitmap.img", |m, img| {
        run_past_volume(m, img, 6, 0x80, false);
    });
    let r = audit(&p, "$Bitmap runlist past the volume");
    assert!(
        matches!(r.partitions[0].status, PartitionStatus::Audited { .. }),
        "{:?}",
        r.partitions[0]
    );
    assert!(r.partitions[0].free.is_none(), "{:?}", r.partitions[0]);
    assert!(
        r.findings.iter().any(|f| f.rule == "fs.remnants-unknown"),
        "{:?}",
        r.findings
    );
}
