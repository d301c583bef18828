//! Restores onto real filesystems: ext4 on a loop device, and the data partition of a GPT image
//! reached through `PartitionMount` (loop device with offset, as these kernels have no partition
//! nodes). Needs root; skips with a printed reason otherwise (CI runs as root).

use std::fs;
use std::process::Command;

use client_data::loopdev::{LoopDevice, can_attach};
use client_data::{DataError, DatasetId, DatasetState, PartitionMount};

use crate::common::*;

#[test]
fn restore_onto_gpt_partition_via_partition_mount() {
    if !can_attach() {
        tek_testkit::skip!("needs root and loop devices");
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let img = gpt_image(d.dir.path());
    assert!(matches!(
        PartitionMount::mount(&img, "nope", None),
        Err(DataError::NoPartition { .. })
    ));
    let m = PartitionMount::mount(&img, "data", None).unwrap();
    let mnt = m.path().to_path_buf();
    let res = d.custody.restore(&info.id, m.path(), &dest()).unwrap();
    assert!(res.ok(), "{res:?}");
    assert_same_tree(&src, m.path());
    m.unmount().unwrap();
    assert!(!mnt.exists());
    // Mount again (through a plain loop device over the whole image this time, as the agent does
    // on a real disk) and check the data persisted.
    let lo = LoopDevice::attach(&img).unwrap();
    let m = PartitionMount::mount(lo.path(), "data", Some("ext4")).unwrap();
    assert_same_tree(&src, m.path());
    drop(m);
    drop(lo);
}

#[test]
fn restore_onto_ext4_loop_device() {
    if !can_attach() {
        tek_testkit::skip!("needs root and loop devices");
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let img = d.dir.path().join("fs.img");
    fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .unwrap()
            .success()
    );
    let lo = LoopDevice::attach(&img).unwrap();
    let m = PartitionMount::mount_device(lo.path(), None).unwrap();
    let res = d.custody.restore(&info.id, m.path(), &dest()).unwrap();
    assert!(res.ok(), "{res:?}");
    assert_same_tree(&src, m.path());
    m.unmount().unwrap();
    lo.detach().unwrap();
    let id: DatasetId = info.id.to_string().parse().unwrap();
    assert_eq!(
        d.custody.dataset(&id).unwrap().state,
        DatasetState::Migrated
    );
}
