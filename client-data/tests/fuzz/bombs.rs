//! Archive bombs against ingest, made at test time (nothing big is committed): sizes claiming
//! more than staging holds, an extension header claiming gigabytes of zeros, a directory
//! claiming a terabyte of data to skip. Each is refused within seconds, with bounded memory,
//! and leaves no dataset, partial dataset or key behind.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use client_data::{Custody, DataError, DatasetInfo};

use client_data::CustodyPaths;
use tek_testkit::tar::{file_entry, header};

/// A depot of its own in a temp dir.
struct Depot {
    dir: tempfile::TempDir,
    custody: Custody,
}

fn depot() -> Depot {
    let dir = tempfile::tempdir().unwrap();
    let custody = Custody::open(CustodyPaths::under(dir.path())).unwrap();
    Depot { dir, custody }
}

const MIB: usize = 1 << 20;

/// A zstd frame of `blocks` RLE blocks of 128 KiB of zeros (4 input bytes per 128 KiB).
fn zstd_zeros(blocks: usize) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 7 << 3];
    for i in 0..blocks {
        let header = u32::from(i + 1 == blocks) | (1 << 1) | ((128 << 10) << 3);
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// `header` (tar bytes) as one zstd frame, followed by a frame of zeros: a small .tar.zst whose
/// decoded stream goes on for `zero_blocks` x 128 KiB.
fn tar_zst(header: &[u8], zero_blocks: usize) -> Vec<u8> {
    let mut out = zstd::encode_all(header, 3).unwrap();
    out.extend_from_slice(&zstd_zeros(zero_blocks));
    out
}

/// A tar size field: octal when it fits 11 digits, else GNU base-256 (12 bytes).
fn size_field(n: u64) -> Vec<u8> {
    if n < 1 << 33 {
        return format!("{n:011o}").into_bytes();
    }
    let mut f = vec![0x80, 0, 0, 0];
    f.extend_from_slice(&n.to_be_bytes());
    f
}

/// Ingests `bytes` as an archive; returns the result, the time it took and the peak heap.
fn ingest(
    d: &Depot,
    name: &str,
    bytes: &[u8],
) -> (Result<DatasetInfo, DataError>, Duration, usize) {
    ingest_with(&d.custody, &d.dir.path().join(name), bytes)
}

fn ingest_with(
    c: &Custody,
    file: &Path,
    bytes: &[u8],
) -> (Result<DatasetInfo, DataError>, Duration, usize) {
    fs::write(file, bytes).unwrap();
    let t = Instant::now();
    let (r, peak) = tek_fuzzkit::peak_heap(|| c.ingest("C-1", "T-1", file));
    (r, t.elapsed(), peak)
}

fn assert_nothing_left(c: &Custody) {
    let staged: Vec<_> = fs::read_dir(&c.paths().staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ds-"))
        .collect();
    assert!(staged.is_empty(), "staging holds {staged:?}");
    let keys = c.paths().keys.join("datasets");
    let left: Vec<_> = fs::read_dir(&keys)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "keys left: {left:?}");
    let audit = fs::read_to_string(c.audit().path()).unwrap();
    assert!(!audit.contains("\"ingest\""), "an ingest was audited");
}

#[test]
fn a_size_claiming_more_than_staging_holds_is_refused_before_reading() {
    let d = depot();
    // One file claiming 1 PiB, then 32 GiB of zeros.
    let h = header(b"big.bin", b'0', &size_field(1 << 50), b"");
    let bytes = tar_zst(&h, MIB / 4);
    assert!(bytes.len() < MIB + 4096);
    let (r, took, _) = ingest(&d, "claims.tar.zst", &bytes);
    match r {
        Err(DataError::StagingFull {
            entry,
            needed,
            available,
            ..
        }) => {
            assert_eq!(entry, 0);
            assert!(
                needed > 1 << 50 && available < needed,
                "{needed} {available}"
            );
        }
        other => panic!("expected StagingFull, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_nothing_left(&d.custody);
}

#[test]
fn a_long_name_claiming_gigabytes_is_refused_with_bounded_memory() {
    let d = depot();
    // A GNU long-name record (type L) of 4 GiB: the tar crate reads such records whole.
    let h = header(b"././@LongLink", b'L', &size_field(4 << 30), b"");
    let (r, took, peak) = ingest(&d, "longname.tar.zst", &tar_zst(&h, MIB / 4));
    match r {
        Err(DataError::BadSource { reason, .. }) => {
            assert!(reason.contains("extension headers"), "{reason}")
        }
        other => panic!("expected BadSource, got {other:?}"),
    }
    assert!(peak < 64 * MIB, "peak heap {peak} bytes");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_nothing_left(&d.custody);
}

#[test]
fn a_directory_claiming_a_terabyte_of_data_is_refused() {
    let d = depot();
    // Directory entries carry no content; the tar crate would skip (decode) 1 TiB.
    let h = header(b"dir/", b'5', &size_field(1 << 40), b"");
    let (r, took, _) = ingest(&d, "dir.tar.zst", &tar_zst(&h, MIB / 4));
    assert!(
        matches!(&r, Err(DataError::BadSource { reason, .. }) if reason.contains("skipped entry data")),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_nothing_left(&d.custody);
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn declared_sizes_summing_past_free_space_stop_before_the_entry() {
    if !nix::unistd::geteuid().is_root() {
        tek_testkit::skip!("needs root (mounts a 16 MiB tmpfs as staging)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("staging-fs");
    fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success());
    let _fs = Tmpfs(mnt.clone());
    let mut p = CustodyPaths::under(dir.path());
    p.staging = mnt.join("staging");
    let c = Custody::open(p).unwrap();
    // Two files of 6 MiB of zeros (compressed to almost nothing): the first fits, the second
    // brings the sum past the free space and is refused before it is written.
    let six = vec![0u8; 6 * MIB];
    let mut tar = file_entry(b"a.bin", &six);
    tar.extend(file_entry(b"b.bin", &six));
    tar.extend(file_entry(b"c.bin", &six));
    tar.extend([0u8; 1024]);
    let bytes = zstd::encode_all(&tar[..], 3).unwrap();
    let (r, took, _) = ingest_with(&c, &dir.path().join("sum.tar.zst"), &bytes);
    match r {
        Err(DataError::StagingFull {
            entry, available, ..
        }) => {
            assert!(entry == 1 || entry == 2, "refused at entry {entry}");
            assert!(available <= 16 << 20);
        }
        other => panic!("expected StagingFull, got {other:?}"),
    }
    assert!(took < Duration::from_secs(20));
    assert_nothing_left(&c);
    // The same archive with two files fits (12 MiB + overhead in 16 MiB), so the check is
    // not simply refusing everything.
    let mut tar = file_entry(b"a.bin", &six);
    tar.extend(file_entry(b"b.bin", &vec![0u8; MIB]));
    tar.extend([0u8; 1024]);
    let bytes = zstd::encode_all(&tar[..], 3).unwrap();
    let (r, _, _) = ingest_with(&c, &dir.path().join("fits.tar.zst"), &bytes);
    assert_eq!(r.unwrap().bytes, 7 * MIB as u64);
}
