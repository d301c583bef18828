//! A restore never silently replaces what is in its target, keeps sparse files sparse and cleans
//! up after a failure (a full disk); a stalled ntfs-3g is `restore_stall`. On real filesystems:
//! ext4 on a loop device and NTFS through ntfs-3g. Needs root, loop devices and FUSE; skips
//! with the reason otherwise (CI runs as root).

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use client_data::{DataError, DatasetState, RestoreOptions, RestoreTarget};

use crate::common::*;

pub(crate) fn can_run(name: &str) -> bool {
    if client_data::loopdev::can_attach() && can_mount_ntfs() {
        return true;
    }
    tek_testkit::skip!("{name}: needs root, loop devices, /dev/fuse and ntfs-3g");
    false
}

/// Every entry beneath `root` (relative path, kind, file size, mtime), sorted: a target "as
/// before".
pub(crate) fn listing(root: &Path) -> Vec<(PathBuf, char, u64, i64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, char, u64, i64)>) {
        for de in fs::read_dir(dir).unwrap() {
            let p = de.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let kind = if m.is_dir() {
                'd'
            } else if m.is_symlink() {
                'l'
            } else {
                'f'
            };
            // A directory's size is the filesystem's business (NTFS indexes do not shrink).
            let size = if m.is_dir() { 0 } else { m.len() };
            out.push((p.strip_prefix(root).unwrap().into(), kind, size, m.mtime()));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A real target of each kind: (name, mount, keeps the volume alive).
pub(crate) enum Vol {
    Ext4(Ext4Volume),
    Ntfs(NtfsVolume),
}

impl Vol {
    pub(crate) fn root(&self) -> &Path {
        match self {
            Vol::Ext4(v) => v.path(),
            Vol::Ntfs(v) => &v.mnt,
        }
    }
}

pub(crate) fn volumes(dir: &Path, size: u64) -> Vec<(&'static str, Vol)> {
    vec![
        ("ext4", Vol::Ext4(Ext4Volume::new(dir, "e", size))),
        ("ntfs", Vol::Ntfs(NtfsVolume::new(dir, "n", size))),
    ]
}

pub(crate) fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

#[test]
fn a_target_holding_entries_of_the_dataset_refuses_unless_asked_to_replace() {
    if !can_run("a_target_holding_entries_of_the_dataset_refuses_unless_asked_to_replace") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    write(&src.join("Docs/a.txt"), b"new a");
    write(&src.join("Docs/b.txt"), b"new b");
    write(&src.join("top.txt"), b"top");
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let other_src = d.dir.path().join("other");
    write(&other_src.join("Docs/a.txt"), b"someone else's a");
    let other = d.custody.ingest("C-2", "T-2", &other_src).unwrap();
    for (kind, vol) in volumes(d.dir.path(), 32 << 20) {
        let t = vol.root().join("Recovered");
        // Already there: a directory the dataset has too (merged), a file where it puts a
        // file, and one of the client's own files it does not have.
        write(&t.join("Docs/a.txt"), b"old a, the technician's");
        write(&t.join("Docs/mine.txt"), b"keep me");
        let before = listing(&t);
        let e = d.custody.restore(&info.id, &t, &dest()).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, DataError::TargetNotEmpty(c) if c.count == 1),
            "{kind}: {msg}"
        );
        assert!(
            msg.contains("Docs/a.txt") && msg.contains("--replace-existing"),
            "{msg}"
        );
        assert_eq!(
            listing(&t),
            before,
            "{kind}: the refused restore wrote something"
        );
        assert_eq!(
            fs::read(t.join("Docs/a.txt")).unwrap(),
            b"old a, the technician's"
        );

        // Asked to replace: replaced, listed, the rest kept.
        let target = RestoreTarget::open(&t).unwrap();
        let opts = RestoreOptions {
            replace_existing: true,
            ..Default::default()
        };
        let res = d
            .custody
            .restore_with(&info.id, &target, &dest(), &opts)
            .unwrap();
        assert!(res.ok(), "{kind}: {res:?}");
        assert_eq!(res.replaced.len(), 1, "{kind}: {res:?}");
        assert!(res.replaced[0].contains("Docs/a.txt"), "{:?}", res.replaced);
        assert_eq!(res.merged_directories, 1);
        assert_eq!(fs::read(t.join("Docs/a.txt")).unwrap(), b"new a");
        assert_eq!(fs::read(t.join("Docs/mine.txt")).unwrap(), b"keep me");
        // The migration's audit entry counts the replacement.
        let recs: Vec<_> = d
            .custody
            .audit()
            .records()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let n = recs.iter().rev().find_map(|r| match &r.event {
            client_data::AuditEvent::Migrate { replaced, .. } => Some(*replaced),
            _ => None,
        });
        assert_eq!(n, Some(1));

        // A second dataset into the same folder: refused, nothing changed.
        let before = listing(&t);
        let e = d.custody.restore(&other.id, &t, &dest()).unwrap_err();
        assert!(matches!(e, DataError::TargetNotEmpty { .. }), "{kind}: {e}");
        assert_eq!(listing(&t), before);
        // A directory where the dataset puts a file is never replaced.
        let u = vol.root().join("Dirs");
        fs::create_dir_all(u.join("Docs/a.txt")).unwrap();
        let e = d
            .custody
            .restore_with(&other.id, &RestoreTarget::open(&u).unwrap(), &dest(), &opts)
            .unwrap_err();
        assert!(
            matches!(&e, DataError::TargetNotEmpty(c) if c.directories == 1),
            "{kind}: {e}"
        );
        assert!(e.to_string().contains("never replaced"), "{e}");
    }
}

#[test]
fn sparse_files_stay_sparse_on_ext4_and_ntfs() {
    if !can_run("sparse_files_stay_sparse_on_ext4_and_ntfs") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // 20 MiB with 4 KiB of data in the middle and 4 KiB at the end.
    let f = fs::File::create(src.join("disk.img")).unwrap();
    f.set_len(20 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5a; 4096], 8 << 20).unwrap();
    f.write_all_at(&[0xa5; 4096], (20 << 20) - 4096).unwrap();
    drop(f);
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    // 16 MiB volumes: a fully allocated copy would not even fit.
    for (kind, vol) in volumes(d.dir.path(), 16 << 20) {
        let t = vol.root().join("Recovered");
        fs::create_dir_all(&t).unwrap();
        let res = d.custody.restore(&info.id, &t, &dest()).unwrap();
        assert!(res.ok(), "{kind}: {res:?}");
        let m = fs::metadata(t.join("disk.img")).unwrap();
        assert_eq!(m.len(), 20 << 20);
        assert!(
            m.blocks() * 512 <= 1 << 20,
            "{kind}: {} bytes allocated",
            m.blocks() * 512
        );
        assert_eq!(
            fs::read(t.join("disk.img")).unwrap(),
            fs::read(src.join("disk.img")).unwrap()
        );
        // Restored again elsewhere on the same volume: fine, it is small.
        drop(vol);
    }
}

#[test]
fn a_full_target_fails_naming_the_file_and_is_left_as_it_was() {
    if !can_run("a_full_target_fails_naming_the_file_and_is_left_as_it_was") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    for i in 0..20 {
        write(&src.join(format!("Docs/small-{i:02}.txt")), b"small");
    }
    // 24 MiB that do not compress, after the small files.
    // A name Windows cannot hold: on NTFS the error names both.
    let mut big = fs::File::create(src.join("Docs/zz-big:1.bin")).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..(24 << 20) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.write_all(&x.to_le_bytes()).unwrap();
    }
    drop(big);
    write(&src.join("Docs/zzz-after.txt"), b"after");
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    for (kind, vol) in volumes(d.dir.path(), 16 << 20) {
        let t = vol.root().join("Recovered");
        write(&t.join("Docs/mine.txt"), b"was here before");
        let before = listing(&t);
        let e = d.custody.restore(&info.id, &t, &dest()).unwrap_err();
        let msg = e.to_string();
        assert!(e.is_disk_full(), "{kind}: {msg}");
        assert!(msg.contains("Docs/zz-big:1.bin"), "{kind}: {msg}");
        if kind == "ntfs" {
            assert!(msg.contains("(restored as Docs/zz-big"), "{msg}");
        }
        assert!(msg.contains("No space left on device"), "{kind}: {msg}");
        match &e {
            DataError::RestoreAborted { cleanup, .. } => {
                assert_eq!(cleanup.remaining_count, 0, "{kind}: {msg}");
                // The big file and the small ones before it (in the source's listing order).
                assert!((1..=21).contains(&cleanup.removed), "{kind}: {msg}");
                assert_eq!(cleanup.removed, cleanup.written, "{kind}: {msg}");
                let wrote = format!("wrote {} entr", cleanup.written);
                assert!(msg.contains(&wrote) && msg.contains("again"), "{msg}");
                assert!(!msg.contains("nothing was written"), "{msg}");
            }
            e => panic!("{kind}: {e}"),
        }
        assert_eq!(
            listing(&t),
            before,
            "{kind}: the failed restore left something"
        );
        assert_eq!(
            d.custody.dataset(&info.id).unwrap().state,
            DatasetState::Staged
        );
    }
    // Onto a larger target it works.
    let v = Ext4Volume::new(d.dir.path(), "large", 64 << 20);
    let res = d.custody.restore(&info.id, v.path(), &dest()).unwrap();
    assert!(res.ok(), "{res:?}");
}
