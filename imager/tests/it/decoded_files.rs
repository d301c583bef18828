//! `tek write` of a compressed image file writes the *decoded* image, and read-back compares the
//! disk with the decoded image's hashes, computed before the bytes reach the writer (so it can
//! fail). Real loop devices (root; skips with a printed reason otherwise), checked with `cmp`.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use client_data::loopdev::{LoopDevice, can_attach};
use imager::{ImageSource, Phase, ReadBackHook, TargetReport, TargetResult, WriteOptions};

const MIB: u64 = 1 << 20;

macro_rules! need_root {
    ($name:expr) => {
        if !can_attach() {
            tek_testkit::skip!("{}: needs root and /dev/loop-control", $name);
            return;
        }
    };
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    tek_testkit::bytes(seed.into(), len)
}

/// A 6 MiB non-GPT image (no fix-ups, so the disk must equal it byte for byte): data, a 2 MiB
/// hole, data.
fn raw_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut data = pattern(6 * MIB as usize, 11);
    data[2 * MIB as usize..4 * MIB as usize].fill(0);
    let p = dir.join("raw.img");
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    match kind {
        "zst" => zstd::encode_all(data, 3).unwrap(),
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "xz" => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "bz2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        _ => unreachable!(),
    }
}

fn old_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0xEEu8; size as usize]).unwrap();
    p
}

/// `cmp -n LEN A B`: the independent check.
fn cmp(a: &Path, b: &Path, len: u64) -> bool {
    Command::new("cmp")
        .args(["-n", &len.to_string()])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

fn one(src: &ImageSource, target: &Path, opts: &WriteOptions) -> TargetReport {
    let mut r = imager::write_image(src, &[target.to_path_buf()], opts, None);
    r.remove(0)
}

#[test]
fn compressed_files_are_written_decoded() {
    need_root!("compressed_files_are_written_decoded");
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(dir.path());
    for (kind, format) in [
        ("gz", "gzip"),
        ("xz", "xz"),
        ("zst", "zstd"),
        ("bz2", "bzip2"),
    ] {
        let img = dir.path().join(format!("raw.img.{kind}"));
        std::fs::write(&img, compress(kind, &data)).unwrap();
        let disk = old_disk(dir.path(), &format!("disk-{kind}"), 8 * MIB);
        let dev = LoopDevice::attach(&disk).unwrap();
        let r = one(
            &ImageSource::File(img),
            dev.path(),
            &WriteOptions::default(),
        );
        assert!(r.ok(), "{kind}: {:?}", r.result);
        // The proof the agent's migrate step needs, made by the finished write only.
        let proof = r.verified().expect("a verified write carries its proof");
        assert_eq!(proof.target(), dev.path());
        assert_eq!(proof.bytes_verified(), r.bytes_verified);
        let info = r.image.as_ref().unwrap();
        assert_eq!(info.size, 6 * MIB, "{kind}: the decoded size");
        assert_eq!(info.file_format, Some(format));
        assert!(r.bytes_verified >= 4 * MIB, "{kind}: {}", r.bytes_verified);
        assert!(
            cmp(&raw, dev.path(), 6 * MIB),
            "{kind}: disk == decoded image"
        );
        let head = std::fs::read(dev.path()).unwrap();
        assert_ne!(head[..2], [0x1f, 0x8b], "{kind}: no gzip bytes on the disk");
    }
}

/// A gzip file that does not decode is refused before the disk is opened: the scan that learns
/// the decoded size decodes the whole stream. The error names the format and the offset.
#[test]
fn corrupt_gzip_is_refused_with_its_offset_and_the_disk_untouched() {
    need_root!("corrupt_gzip_is_refused_with_its_offset_and_the_disk_untouched");
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = raw_image(dir.path());
    let mut gz = compress("gz", &data);
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let img = dir.path().join("bad.img.gz");
    std::fs::write(&img, &gz).unwrap();
    let disk = old_disk(dir.path(), "disk", 8 * MIB);
    let before = dir.path().join("disk.before");
    std::fs::copy(&disk, &before).unwrap();
    let dev = LoopDevice::attach(&disk).unwrap();
    let r = one(
        &ImageSource::File(img),
        dev.path(),
        &WriteOptions::default(),
    );
    assert!(r.verified().is_none(), "a failed write proves nothing");
    match &r.result {
        TargetResult::Failed {
            phase,
            error,
            offset,
            ..
        } => {
            assert_eq!(*phase, Phase::Checking, "{error}");
            let off = offset.expect("an offset");
            assert!(off < 6 * MIB, "{error}");
            assert!(error.contains(&format!("at image offset {off}")), "{error}");
            assert!(error.contains("gzip stream"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    drop(dev);
    assert!(cmp(&before, &disk, 8 * MIB), "disk untouched");
}

/// Read-back compares the disk with hashes of the decoded image taken before the write: a byte
/// changed on the target between writing and read-back fails the job at that extent, and the
/// partition table is reset. (Were the expected values taken from the bytes written, this could
/// never fail.)
#[test]
fn read_back_fails_when_the_target_changes_after_the_write() {
    need_root!("read_back_fails_when_the_target_changes_after_the_write");
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = raw_image(dir.path());
    let img = dir.path().join("raw.img.gz");
    std::fs::write(&img, compress("gz", &data)).unwrap();
    let disk = old_disk(dir.path(), "disk", 8 * MIB);
    let dev = LoopDevice::attach(&disk).unwrap();
    let backing = disk.clone();
    let at = 5 * MIB + 12345;
    let opts = WriteOptions {
        before_read_back: Some(ReadBackHook(Arc::new(move |_target: &Path| {
            // Behind the imager's back, through the loop device's backing file.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&backing)
                .unwrap();
            let b = data[at as usize] ^ 0xff;
            f.write_all_at(&[b], at).unwrap();
            f.sync_all().unwrap();
        }))),
        ..WriteOptions::default()
    };
    let r = one(&ImageSource::File(img), dev.path(), &opts);
    match &r.result {
        TargetResult::Failed {
            phase,
            error,
            table_reset,
            ..
        } => {
            assert_eq!(*phase, Phase::Verifying, "{error}");
            assert!(error.contains("mismatching extent"), "{error}");
            assert!(*table_reset);
        }
        other => panic!("{other:?}"),
    }
    // Raw files are hashed in 4 MiB blocks: the extent holding the flipped byte starts at 4 MiB.
    assert_eq!(r.mismatch_offsets, vec![4 * MIB]);
}
