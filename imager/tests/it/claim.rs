//! The claim proves it holds the disk that was detected (root, real loop devices; skips with a
//! reason otherwise): the kernel's `diskseq` of the claimed descriptor must match the one the
//! caller recorded, so a disk swapped at the same device node is never written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use client_data::loopdev::{LoopDevice, can_attach, detach_path};
use imager::{ImageSource, Refusal, TargetResult, WriteOptions, write_image};

/// A loop device attached by node with plain `losetup`; detached on drop.
struct Reattached(PathBuf);

impl Drop for Reattached {
    fn drop(&mut self) {
        let _ = detach_path(&self.0);
    }
}

fn diskseq(dev: &Path) -> u64 {
    let name = dev.file_name().unwrap().to_str().unwrap();
    std::fs::read_to_string(format!("/sys/class/block/{name}/diskseq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_disk_swapped_at_the_same_node_after_detection_is_refused_and_untouched() {
    if !can_attach() {
        tek_testkit::skip!("needs root and /dev/loop-control");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    for f in [&first, &second] {
        std::fs::write(f, vec![0xEEu8; 4 << 20]).unwrap();
    }
    let img = dir.path().join("image.raw");
    std::fs::write(&img, vec![0x5Au8; 2 << 20]).unwrap();

    // "Detected": the first disk at /dev/loopN, diskseq recorded.
    let dev = LoopDevice::attach(&first).unwrap();
    let node = dev.path().to_path_buf();
    let seen = diskseq(&node);
    // Swapped: another disk now answers at the same node.
    dev.detach().unwrap();
    let o = Command::new("losetup")
        .arg(&node)
        .arg(&second)
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!(
            "skipping: {} was taken by someone else before the re-attach: {}",
            node.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        return;
    }
    let _guard = Reattached(node.clone());
    assert_ne!(diskseq(&node), seen, "a re-attach gets a new diskseq");

    let opts = WriteOptions {
        expected_diskseq: HashMap::from([(node.clone(), seen)]),
        ..WriteOptions::default()
    };
    let src = ImageSource::File(img.clone());
    let r = write_image(&src, std::slice::from_ref(&node), &opts, None).remove(0);
    assert!(
        matches!(
            &r.result,
            TargetResult::Refused { refusal: Refusal::DiskChanged { expected, .. } } if *expected == seen
        ),
        "{:?}",
        r.result
    );
    let both = [
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
    ];
    assert!(
        both.iter().all(|b| b.iter().all(|&x| x == 0xEE)),
        "nothing written to either disk"
    );

    // The disk that is there now, with its own diskseq, is written.
    let opts = WriteOptions {
        expected_diskseq: HashMap::from([(node.clone(), diskseq(&node))]),
        ..WriteOptions::default()
    };
    let r = write_image(&src, std::slice::from_ref(&node), &opts, None).remove(0);
    assert!(r.ok(), "{:?}", r.result);
    assert!(
        r.direct_io,
        "O_DIRECT through the descriptor re-opened from the claim"
    );
    let got = std::fs::read(&second).unwrap();
    assert!(got[..2 << 20].iter().all(|&x| x == 0x5A));
}
