//! What the restore target already holds is hostile: the image's data filesystem (symlinks or
//! mount points on the data path), and entries planted at the paths the restore writes (hard
//! links to files outside, FIFOs). Real ext4 GPT image on a loop device where the test needs
//! one (root; skips with a printed reason otherwise, CI runs as root).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use client_data::loopdev::can_attach;
use client_data::{DataError, DatasetState, PartitionMount, RestoreOptions, RestoreTarget};

use crate::common::*;

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p).unwrap().next().is_none()
}

/// Exactly the reported image: an ext4 DATA partition of a GPT image holding `Users -> <host
/// dir>`, data path `/Users`. The restore must refuse, write nothing on the host, and leave the
/// dataset staged with its key.
#[test]
fn symlink_at_data_path_in_image_is_refused() {
    if !can_attach() {
        tek_testkit::skip!("needs root and loop devices");
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let host = tempfile::tempdir().unwrap();
    let img = gpt_image(d.dir.path());
    {
        let m = PartitionMount::mount(&img, "data", None).unwrap();
        std::os::unix::fs::symlink(host.path(), m.path().join("Users")).unwrap();
        m.unmount().unwrap();
    }
    // What the agent does: mount the image's data partition, resolve data_path beneath it.
    let m = PartitionMount::mount(&img, "data", None).unwrap();
    let err = RestoreTarget::beneath(m.path(), "/Users").unwrap_err();
    assert!(
        matches!(&err, DataError::UnsafeTarget { reason, .. } if reason.contains("symlink")),
        "{err}"
    );
    assert!(err.to_string().contains("/Users"), "{err}");
    // The target as a path (what the agent did before) would have gone to the host.
    assert!(m.path().join("Users").canonicalize().unwrap() == host.path().canonicalize().unwrap());
    m.unmount().unwrap();
    assert!(is_empty_dir(host.path()), "nothing written on the host");
    let now = d.custody.dataset(&info.id).unwrap();
    assert_eq!(now.state, DatasetState::Staged, "still staged");
    assert!(
        d.dir
            .path()
            .join("keys/datasets")
            .join(format!("{}.key", info.id))
            .exists()
    );
}

/// On the image's real ext4: a symlink at each component of a nested data path (absolute, and
/// relative climbing out with `..`) is refused; nothing appears on the host.
#[test]
fn symlink_at_every_component_on_ext4_is_refused() {
    if !can_attach() {
        tek_testkit::skip!("needs root and loop devices");
        return;
    }
    let d = depot();
    let host = tempfile::tempdir().unwrap();
    let img = gpt_image(d.dir.path());
    let comps = ["Users", "jane", "Documents"];
    for depth in 0..comps.len() {
        for relative in [false, true] {
            let m = PartitionMount::mount(&img, "data", None).unwrap();
            let _ = fs::remove_dir_all(m.path().join("Users"));
            let _ = fs::remove_file(m.path().join("Users"));
            let mut p = m.path().to_path_buf();
            for c in &comps[..depth] {
                p.push(c);
                fs::create_dir(&p).unwrap();
            }
            let link = if relative {
                // Enough ".." to climb out of the mount, then down to the host dir.
                Path::new(&"../".repeat(depth + 8)).join(host.path().strip_prefix("/").unwrap())
            } else {
                host.path().to_path_buf()
            };
            std::os::unix::fs::symlink(&link, p.join(comps[depth])).unwrap();
            let err = RestoreTarget::beneath(m.path(), "/Users/jane/Documents").unwrap_err();
            assert!(
                matches!(&err, DataError::UnsafeTarget { reason, .. } if reason.contains("symlink")),
                "depth {depth}, relative {relative}: {err}"
            );
            m.unmount().unwrap();
            assert!(is_empty_dir(host.path()), "nothing on the host");
        }
    }
}

/// A bind mount over the data path (or over a directory an entry goes into) leaves the image's
/// filesystem: RESOLVE_NO_XDEV refuses both.
#[test]
fn bind_mount_on_data_path_or_below_is_refused() {
    if !can_attach() {
        tek_testkit::skip!("needs root and loop devices");
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let host = tempfile::tempdir().unwrap();
    let img = gpt_image(d.dir.path());
    let m = PartitionMount::mount(&img, "data", None).unwrap();
    struct Unbind(std::path::PathBuf);
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let bind = |at: &Path| {
        fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some(host.path()),
            at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        Unbind(at.to_path_buf())
    };
    {
        let _b = bind(&m.path().join("Users"));
        let err = RestoreTarget::beneath(m.path(), "/Users").unwrap_err();
        assert!(
            matches!(&err, DataError::UnsafeTarget { reason, .. } if reason.contains("mount point")),
            "{err}"
        );
        let err = RestoreTarget::beneath(m.path(), "/Users/jane").unwrap_err();
        assert!(matches!(err, DataError::UnsafeTarget { .. }), "{err}");
    }
    {
        // Data path fine, but the dataset's Docs/ directory is a bind mount to the host.
        let t = RestoreTarget::beneath(m.path(), "/home").unwrap();
        let _b = bind(&m.path().join("home/Docs"));
        let err = d.custody.restore_into(&info.id, &t, &dest()).unwrap_err();
        assert!(
            matches!(&err, DataError::TargetNotEmpty(c) if c.count == 0 && c.unsafe_first[0].contains("Docs (it is, or is below, a mount point)")),
            "{err}"
        );
    }
    drop(m);
    assert!(is_empty_dir(host.path()), "nothing written on the host");
    assert_eq!(
        d.custody.dataset(&info.id).unwrap().state,
        DatasetState::Staged
    );
}

/// A hard link planted in the target at an entry's path, pointing at a file outside the target:
/// the outside file keeps its content, owner and mode; the restored file is a new inode.
#[test]
fn hard_link_in_target_does_not_rewrite_outside_file() {
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let outside_dir = d.dir.path().join("outside");
    fs::create_dir(&outside_dir).unwrap();
    let outside = outside_dir.join("passwd");
    fs::write(&outside, b"root:x:0:0\n").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
    let root = nix::unistd::geteuid().is_root();
    if root {
        nix::unistd::chown(&outside, Some(4321.into()), Some(4321.into())).unwrap();
    }
    let before = fs::metadata(&outside).unwrap();
    let target = d.dir.path().join("target");
    fs::create_dir_all(target.join("Docs")).unwrap();
    fs::hard_link(&outside, target.join("Docs/a.txt")).unwrap();

    // Refused unless asked to replace; asked, the link is replaced, never written through.
    assert!(matches!(
        d.custody.restore(&info.id, &target, &dest()),
        Err(DataError::TargetNotEmpty(c)) if c.count == 1
    ));
    let res = d
        .custody
        .restore_with(
            &info.id,
            &RestoreTarget::open(&target).unwrap(),
            &dest(),
            &replace(),
        )
        .unwrap();
    assert_eq!(res.replaced.len(), 1, "{res:?}");
    assert!(res.ok(), "{res:?}");
    assert_eq!(
        fs::read(&outside).unwrap(),
        b"root:x:0:0\n",
        "content unchanged"
    );
    let after = fs::metadata(&outside).unwrap();
    assert_eq!(after.mode(), before.mode(), "mode unchanged");
    assert_eq!(
        (after.uid(), after.gid()),
        (before.uid(), before.gid()),
        "owner unchanged"
    );
    assert_eq!(after.nlink(), 1, "the planted link is gone");
    assert_eq!(fs::read(target.join("Docs/a.txt")).unwrap(), b"hello");
    assert_same_tree(&src, &target);
}

/// A FIFO at an entry's path used to block the restore's open forever (holding the dataset
/// lock). Now it is replaced by the file (asked to replace), and the restore completes within
/// seconds.
#[test]
fn fifo_in_target_does_not_hang_restore() {
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let target = d.dir.path().join("target");
    fs::create_dir_all(target.join("Docs/sub")).unwrap();
    for p in ["Docs/a.txt", "Docs/sub/empty"] {
        nix::unistd::mkfifo(
            &target.join(p),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let t2 = target.clone();
    let dir = d.dir.path().to_path_buf();
    std::thread::spawn(move || {
        let c = client_data::Custody::open(paths(&dir)).unwrap();
        let t = RestoreTarget::open(&t2).unwrap();
        let _ = tx.send(c.restore_with(&info.id, &t, &dest(), &replace()));
    });
    let res = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("restore hung on a FIFO in the target")
        .unwrap();
    assert!(res.ok(), "{res:?}");
    assert!(fs::metadata(target.join("Docs/a.txt")).unwrap().is_file());
    assert_same_files(&src, &target);
    // The folders that were there before are merged: listed, their mode left as it was.
    assert_eq!(res.merged.len(), 2, "{:?}", res.merged);
    assert!(
        res.merged[1].starts_with("Docs/sub (entry"),
        "{:?}",
        res.merged
    );
    assert_eq!(
        fs::metadata(target.join("Docs/sub")).unwrap().mode() & 0o777,
        0o755
    );
    drop(d);
}

/// A directory standing where a file goes is refused with a clear reason, not emptied.
#[test]
fn directory_in_place_of_file_is_refused() {
    let d = depot();
    let src = d.dir.path().join("src");
    sample_tree(&src);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let target = d.dir.path().join("target");
    fs::create_dir_all(target.join("Docs/a.txt/keep")).unwrap();
    for opts in [RestoreOptions::default(), replace()] {
        let t = RestoreTarget::open(&target).unwrap();
        let err = d
            .custody
            .restore_with(&info.id, &t, &dest(), &opts)
            .unwrap_err();
        assert!(
            matches!(&err, DataError::TargetNotEmpty(c) if c.directories == 1),
            "{err}"
        );
        assert!(target.join("Docs/a.txt/keep").is_dir());
    }
}

fn replace() -> RestoreOptions {
    RestoreOptions {
        replace_existing: true,
        ..Default::default()
    }
}
