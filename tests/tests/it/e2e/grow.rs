//! Growth makes room: the sample image's DATA partition (32 MiB of ext4) written onto a 160 MiB
//! disk with `--grow-partition DATA` receives 48 MiB of client data, which would not fit in the
//! image's filesystem; the job's write report carries the old and new size and `e2fsck -fn`'s
//! verdict, and an independent `e2fsck -fn` of the partition on the disk is clean.

use std::process::Command;

use super::*;

#[test]
fn ext4_grows_so_client_data_larger_than_the_image_fits() {
    if !need_root("ext4_grows_so_client_data_larger_than_the_image_fits") {
        return;
    }
    let mut b = Bench::new("grow", &["bay1"], "");
    let img = b.image.display().to_string();
    b.import_signed(&[
        "--data-partition",
        "label:DATA",
        "--grow-partition",
        "DATA",
        "big@1",
        &img,
    ]);
    let src = b.root().join("work/big-data");
    std::fs::create_dir_all(src.join("Documents")).unwrap();
    for i in 0..3u64 {
        std::fs::write(
            src.join(format!("Documents/part{i}.bin")),
            // Incompressible, so no filesystem could make them fit by itself.
            agent::sample::pseudo_random(16 << 20, i + 1),
        )
        .unwrap();
    }
    assert!(
        tree_bytes(&src) > DATA_RANGE.1,
        "the data must not fit the image's DATA"
    );
    let info = b.custody().ingest("client-e2e", E2E_TICKET, &src).unwrap();
    b.start_agent();
    let job = b
        .tek_ok(&[
            "job",
            "add",
            "--ticket",
            E2E_TICKET,
            "--image",
            "big@1",
            "--bay",
            "bay1",
            "--data",
            &info.id.to_string(),
        ])
        .trim()
        .to_string();
    let (disk, lo) = b.plug("bay1", 1, 160 * MIB);
    let rec = b.wait_state(&job, "done", 120);
    drop(lo);
    let fsg = &rec["results"]["write"]["filesystem"];
    assert_eq!(fsg["filesystem"], "ext4", "{rec:#}");
    let (old, new) = (
        fsg["old_bytes"].as_u64().unwrap(),
        fsg["new_bytes"].as_u64().unwrap(),
    );
    assert!(old <= DATA_RANGE.1 && new > 120 * MIB, "{old} -> {new}");
    assert_eq!(fsg["checks"][0]["clean"], true, "{fsg:#}");
    assert_gpt_valid(&disk);
    // Independently: the grown ext4 on the disk is clean and holds the data.
    let part = LoopDevice::attach_with(
        &disk,
        &LoopOptions {
            offset: DATA_RANGE.0,
            // grown to the last usable LBA: before the 33 sectors of the backup GPT
            size_limit: 160 * MIB - 33 * 512 - DATA_RANGE.0,
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(part.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let mnt = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-o", "ro,noload", "-t", "ext4"])
        .arg(part.path())
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(st.success());
    let restored = hash_tree(mnt.path());
    let _ = Command::new("umount").arg(mnt.path()).status();
    assert_eq!(restored, hash_tree(&src));
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());
}
