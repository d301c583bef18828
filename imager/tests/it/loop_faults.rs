//! Real loop devices: the happy paths and every fault of the imager's issue. Needs root (skips
//! with a printed reason otherwise). Results are checked with independent tools: `cmp`,
//! `sgdisk -v`, `sfdisk --json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use client_data::loopdev::{LoopDevice, LoopOptions, can_attach};
use image_store::{ChunkId, Extent, Hints, LoadedImage, Manifest, SignatureStatus, Store};
use imager::{
    BeyondAction, ImageSource, Refusal, TargetReport, TargetResult, WriteOptions, write_image,
};

const MIB: u64 = 1 << 20;

macro_rules! need_root {
    ($name:expr) => {
        if !can_attach() {
            tek_testkit::skip!("{}: needs root and /dev/loop-control", $name);
            return;
        }
    };
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    tek_testkit::bytes(seed.into(), len)
}

/// An 8 MiB GPT image: "boot" (1 MiB of data), "root" (to the end, 2 MiB of data then zeros).
fn gpt_image(dir: &Path) -> PathBuf {
    let p = dir.join("gpt.img");
    std::fs::File::create(&p).unwrap().set_len(8 * MIB).unwrap();
    let (ok, out) = run(
        "sgdisk",
        &[
            "-n1:2048:+1M",
            "-c1:boot",
            "-n2:0:0",
            "-c2:root",
            p.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let mut img = std::fs::read(&p).unwrap();
    img[MIB as usize..2 * MIB as usize].copy_from_slice(&pattern(MIB as usize, 1));
    img[2 * MIB as usize..4 * MIB as usize].copy_from_slice(&pattern(2 * MIB as usize, 2));
    std::fs::write(&p, &img).unwrap();
    p
}

/// A backing file of `size` bytes full of "old owner's data" (0xEE).
fn old_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0xEEu8; size as usize]).unwrap();
    p
}

fn cmp_range(a: &Path, b: &Path, skip: u64, len: u64) -> bool {
    run(
        "cmp",
        &[
            "-n",
            &len.to_string(),
            "-i",
            &format!("{skip}:{skip}"),
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    )
    .0
}

fn one(src: &ImageSource, target: &Path, opts: &WriteOptions) -> TargetReport {
    let mut r = write_image(src, &[target.to_path_buf()], opts, None);
    assert_eq!(r.len(), 1);
    r.remove(0)
}

#[test]
fn gpt_image_onto_a_larger_disk_is_fixed_up_and_verified() {
    need_root!("gpt_image_onto_a_larger_disk_is_fixed_up_and_verified");
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_image(dir.path());
    let disk = old_disk(dir.path(), "disk", 16 * MIB);
    let dev = LoopDevice::attach(&disk).unwrap();
    let r = one(
        &ImageSource::File(img.clone()),
        dev.path(),
        &WriteOptions::default(),
    );
    assert!(r.ok(), "{:?}", r.result);
    assert!(
        matches!(
            r.beyond,
            BeyondAction::Zeroed {
                offloaded: true,
                ..
            } | BeyondAction::Discarded { .. }
        ),
        "{:?}",
        r.beyond
    );
    let gpt = r.gpt.as_ref().unwrap();
    assert_eq!(gpt.backup_lba_after, 16 * MIB / 512 - 1);
    // The image's bytes between the GPT structures are there exactly.
    assert!(cmp_range(&img, dev.path(), 34 * 512, 8 * MIB - 67 * 512));
    let all = std::fs::read(dev.path()).unwrap();
    assert!(
        all[8 * MIB as usize..(16 * MIB - 33 * 512) as usize]
            .iter()
            .all(|&b| b == 0)
    );
    let (_, v) = run("sgdisk", &["-v", dev.path().to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let (ok, j) = run("sfdisk", &["--json", dev.path().to_str().unwrap()]);
    assert!(ok && j.contains("\"name\": \"root\""), "{j}");
}

#[test]
fn non_gpt_image_is_written_as_is() {
    need_root!("non_gpt_image_is_written_as_is");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("raw.img");
    let mut data = pattern(6 * MIB as usize, 7);
    data[2 * MIB as usize..4 * MIB as usize].fill(0);
    std::fs::write(&img, &data).unwrap();
    let zst = dir.path().join("raw.img.zst");
    std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
    for src in [img.clone(), zst] {
        let disk = old_disk(dir.path(), "disk", 8 * MIB);
        let dev = LoopDevice::attach(&disk).unwrap();
        let r = one(
            &ImageSource::File(src),
            dev.path(),
            &WriteOptions::default(),
        );
        assert!(r.ok(), "{:?}", r.result);
        assert!(r.gpt.is_none());
        assert!(
            r.bytes_zeroed >= MIB,
            "hole zeroed by the device: {}",
            r.bytes_zeroed
        );
        assert!(cmp_range(&img, dev.path(), 0, 6 * MIB));
        let all = std::fs::read(dev.path()).unwrap();
        assert!(
            all[6 * MIB as usize..].iter().all(|&b| b == 0),
            "cleared beyond"
        );
    }
}

#[test]
fn refusals_too_small_read_only_sector_size_mounted() {
    need_root!("refusals_too_small_read_only_sector_size_mounted");
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_image(dir.path());
    let src = ImageSource::File(img);
    let opts = WriteOptions::default();

    let small = old_disk(dir.path(), "small", 4 * MIB);
    let dev = LoopDevice::attach(&small).unwrap();
    let r = one(&src, dev.path(), &opts);
    assert!(
        matches!(&r.result, TargetResult::Refused { refusal: Refusal::TooSmall { need, have } } if *need == 8 * MIB && *have == 4 * MIB),
        "{:?}",
        r.result
    );
    drop(dev);
    assert!(
        std::fs::read(&small).unwrap().iter().all(|&b| b == 0xEE),
        "untouched"
    );

    let ro = old_disk(dir.path(), "ro", 16 * MIB);
    let dev = LoopDevice::attach_with(
        &ro,
        &LoopOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = one(&src, dev.path(), &opts);
    assert!(
        matches!(
            &r.result,
            TargetResult::Refused {
                refusal: Refusal::ReadOnly
            }
        ),
        "{:?}",
        r.result
    );
    drop(dev);

    let big = old_disk(dir.path(), "4k", 16 * MIB);
    let dev = LoopDevice::attach_with(
        &big,
        &LoopOptions {
            sector_size: Some(4096),
            ..Default::default()
        },
    )
    .unwrap();
    let r = one(&src, dev.path(), &opts);
    assert!(
        matches!(
            &r.result,
            TargetResult::Refused {
                refusal: Refusal::SectorSize {
                    image: 512,
                    disk: 4096
                }
            }
        ),
        "{:?}",
        r.result
    );
    drop(dev);

    let fs = old_disk(dir.path(), "fs", 16 * MIB);
    let dev = LoopDevice::attach(&fs).unwrap();
    let (ok, out) = run("mkfs.ext4", &["-q", "-F", dev.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    let mnt = tempfile::tempdir().unwrap();
    let (ok, out) = run(
        "mount",
        &[dev.path().to_str().unwrap(), mnt.path().to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let r = one(&src, dev.path(), &opts);
    run("umount", &[mnt.path().to_str().unwrap()]);
    assert!(
        matches!(
            &r.result,
            TargetResult::Refused {
                refusal: Refusal::Mounted { .. }
            }
        ),
        "{:?}",
        r.result
    );
}

#[test]
fn the_root_filesystems_disk_is_refused_without_writing() {
    let disks = imager::system_disks();
    let Some(d) = disks.iter().next() else {
        tek_testkit::skip!("/ is not on a block device here");
        return;
    };
    let p = PathBuf::from(format!("/dev/{d}"));
    let r = imager::check_target(&p, 1, None).unwrap_err();
    assert!(matches!(r, Refusal::SystemDisk { .. }), "{r}");
    assert!(r.to_string().contains("backs the root filesystem"));
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);
impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        let (ok, out) = run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                d.path().to_str().unwrap(),
            ],
        );
        assert!(ok, "{out}");
        Tmpfs(d)
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        run("umount", &[self.0.path().to_str().unwrap()]);
    }
}

/// A disk failing mid-write: `losetup -d` on an open loop device is deferred by the kernel
/// (autoclear), so the stand-in from DESIGN.md is used: a loop on a file on a 6 MiB tmpfs, which
/// fails with ENOSPC once the tmpfs is full. The other target of the same job must still succeed.
#[test]
fn a_failing_disk_fails_alone_with_its_offset() {
    need_root!("a_failing_disk_fails_alone_with_its_offset");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("dense.img");
    std::fs::write(&img, pattern(12 * MIB as usize, 3)).unwrap();
    let fs = Tmpfs::new("6M");
    let failing = fs.0.path().join("disk");
    std::fs::File::create(&failing)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let bad = LoopDevice::attach(&failing).unwrap();
    let good_file = old_disk(dir.path(), "good", 16 * MIB);
    let good = LoopDevice::attach(&good_file).unwrap();
    let reports = write_image(
        &ImageSource::File(img.clone()),
        &[bad.path().to_path_buf(), good.path().to_path_buf()],
        &WriteOptions::default(),
        None,
    );
    match &reports[0].result {
        TargetResult::Failed { error, offset, .. } => {
            assert!(offset.is_some(), "{error}");
            assert!(
                error.contains(&format!("at offset {}", offset.unwrap())),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(reports[1].ok(), "{:?}", reports[1].result);
    assert!(cmp_range(&img, good.path(), 0, 12 * MIB));
}

/// A store holding a 6 MiB image in 1 MiB chunks with a hole; returns the store, the image,
/// and the raw bytes.
fn stored_image(dir: &Path) -> (Arc<Store>, LoadedImage, Vec<u8>) {
    let store = Store::open(&dir.join("store")).unwrap();
    let mut raw = pattern(6 * MIB as usize, 9);
    raw[3 * MIB as usize..4 * MIB as usize].fill(0);
    let mut extents = Vec::new();
    for i in 0..6u64 {
        let off = i * MIB;
        if i == 3 {
            extents.push(Extent::Hole {
                offset: off,
                len: MIB,
            });
            continue;
        }
        let data = &raw[off as usize..(off + MIB) as usize];
        let id = ChunkId::of(data);
        let p = store.chunk_path(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, zstd::bulk::compress(data, 3).unwrap()).unwrap();
        extents.push(Extent::Chunk {
            offset: off,
            len: MIB,
            id,
        });
    }
    let manifest = Manifest {
        format: image_store::MANIFEST_FORMAT,
        audit: None,
        scrubbed: None,
        name: "t".into(),
        version: "1".into(),
        size: 6 * MIB,
        sha256: String::new(),
        blake3: String::new(),
        created: String::new(),
        chunking: serde_json::from_value(
            serde_json::json!({"algorithm":"fixed","min":1,"avg":1,"max":1}),
        )
        .unwrap(),
        extents,
        gpt: None,
        hints: Hints::default(),
    };
    let image = LoadedImage {
        manifest,
        manifest_hash: "00".into(),
        signature: SignatureStatus::Unsigned,
    };
    (Arc::new(store), image, raw)
}

fn chunk_id(image: &LoadedImage, i: usize) -> ChunkId {
    match &image.manifest.extents[i] {
        Extent::Chunk { id, .. } => *id,
        _ => panic!(),
    }
}

#[test]
fn stored_image_corrupt_and_missing_chunks() {
    need_root!("stored_image_corrupt_and_missing_chunks");
    let dir = tempfile::tempdir().unwrap();
    let (store, image, raw) = stored_image(dir.path());
    let img = dir.path().join("raw");
    std::fs::write(&img, &raw).unwrap();

    // Clean.
    let disk = old_disk(dir.path(), "disk", 8 * MIB);
    let dev = LoopDevice::attach(&disk).unwrap();
    let src = ImageSource::Stored {
        store: store.clone(),
        image: image.clone(),
    };
    let r = one(&src, dev.path(), &WriteOptions::default());
    assert!(r.ok(), "{:?}", r.result);
    assert_eq!(r.image.as_ref().unwrap().version.as_deref(), Some("1"));
    assert!(cmp_range(&img, dev.path(), 0, 6 * MIB));
    drop(dev);

    // Corrupt chunk 4 (offset 4 MiB): never written, named with its offset, quarantined.
    let bad_id = chunk_id(&image, 4);
    std::fs::write(
        store.chunk_path(bad_id),
        zstd::bulk::compress(&vec![1u8; MIB as usize], 3).unwrap(),
    )
    .unwrap();
    let disk = old_disk(dir.path(), "disk2", 8 * MIB);
    let dev = LoopDevice::attach(&disk).unwrap();
    let r = one(&src, dev.path(), &WriteOptions::default());
    match &r.result {
        TargetResult::Failed {
            error,
            offset,
            table_reset,
            ..
        } => {
            assert_eq!(*offset, Some(4 * MIB), "{error}");
            assert!(error.contains(&bad_id.to_hex()), "{error}");
            assert!(*table_reset);
        }
        other => panic!("{other:?}"),
    }
    let all = std::fs::read(dev.path()).unwrap();
    assert!(
        all[4 * MIB as usize..5 * MIB as usize]
            .iter()
            .all(|&b| b == 0xEE),
        "corrupt chunk not written"
    );
    assert!(!store.chunk_path(bad_id).exists(), "quarantined");
    drop(dev);

    // Missing chunk 1 (and chunk 4 quarantined above): refused before the disk is opened, both
    // named, the disk byte-identical to before.
    let gone = chunk_id(&image, 1);
    std::fs::remove_file(store.chunk_path(gone)).unwrap();
    let disk = old_disk(dir.path(), "disk3", 8 * MIB);
    let before = dir.path().join("disk3.before");
    std::fs::copy(&disk, &before).unwrap();
    let dev = LoopDevice::attach(&disk).unwrap();
    let r = one(&src, dev.path(), &WriteOptions::default());
    match &r.result {
        TargetResult::Failed {
            error,
            offset,
            phase,
            table_reset,
        } => {
            assert_eq!(*phase, imager::Phase::Checking, "{error}");
            assert_eq!(*offset, None, "{error}");
            assert!(!*table_reset);
            assert!(
                error.contains("2 chunks not in the store (1 quarantined as corrupt)"),
                "{error}"
            );
            assert!(
                error.contains(&format!("{gone} at offset {MIB}")),
                "{error}"
            );
            assert!(
                error.contains(&format!("{bad_id} at offset {} (quarantined)", 4 * MIB)),
                "{error}"
            );
            assert!(error.contains("nothing was written"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(r.identity.is_none(), "the target was never claimed");
    drop(dev);
    assert!(cmp_range(&before, &disk, 0, 8 * MIB), "disk untouched");
}

#[test]
fn reuse_skips_what_the_disk_already_holds() {
    need_root!("reuse_skips_what_the_disk_already_holds");
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_image(dir.path());
    let disk = old_disk(dir.path(), "disk", 16 * MIB);
    let dev = LoopDevice::attach(&disk).unwrap();
    let src = ImageSource::File(img);
    assert!(one(&src, dev.path(), &WriteOptions::default()).ok());
    let opts = WriteOptions {
        reuse_existing: true,
        ..Default::default()
    };
    let r = one(&src, dev.path(), &opts);
    assert!(r.ok(), "{:?}", r.result);
    assert!(r.bytes_skipped >= 3 * MIB - 512, "{}", r.bytes_skipped);
    let (_, v) = run("sgdisk", &["-v", dev.path().to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
}

/// Cancelling mid-write: the store pipeline is held inside the image (a chunk file replaced by
/// a FIFO blocks the worker reading it), the cancel flag is set, then the chunk is let through.
/// The job must stop with "cancelled" and reset the partition table that an earlier write left
/// on the target. A file target: no root needed.
#[test]
fn cancel_mid_write_resets_the_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let (store, image, _) = stored_image(dir.path());
    // The target holds a good GPT disk from an earlier job.
    let target = dir.path().join("target");
    std::fs::copy(gpt_image(dir.path()), &target).unwrap();
    assert_eq!(&std::fs::read(&target).unwrap()[512..520], b"EFI PART");
    let held = chunk_id(&image, 4);
    let path = store.chunk_path(held);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (ok, out) = run("mkfifo", &[path.to_str().unwrap()]);
    assert!(ok, "{out}");

    let opts = WriteOptions::default();
    let cancel = opts.cancel.clone();
    let src = ImageSource::Stored {
        store: store.clone(),
        image: image.clone(),
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let r = std::thread::scope(|s| {
        let job = s.spawn(|| write_image(&src, std::slice::from_ref(&target), &opts, Some(tx)));
        // Wait until the target is writing; the stream cannot pass chunk 4 yet.
        while rx.recv().unwrap().phase != imager::Phase::Writing {}
        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        std::fs::write(&path, &bytes).unwrap(); // opens the FIFO: the worker reads on
        job.join().unwrap()
    });
    std::fs::remove_file(&path).unwrap();
    match &r[0].result {
        TargetResult::Failed {
            error, table_reset, ..
        } => {
            assert!(error.contains("cancelled"), "{error}");
            assert!(*table_reset);
        }
        other => panic!("{other:?}"),
    }
    let all = std::fs::read(&target).unwrap();
    assert!(
        all[..34 * 512].iter().all(|&b| b == 0),
        "primary GPT zeroed"
    );
    let (_, v) = run("sgdisk", &["-v", target.to_str().unwrap()]);
    assert!(v.contains("Creating new GPT entries"), "no GPT left: {v}");
}
