//! Client data onto NTFS, on real volumes (`mkntfs` images mounted with ntfs-3g): names Windows
//! cannot hold are mapped, listed and verified; NTFS-to-NTFS keeps times, creation time, DOS
//! attributes and alternate data streams; restored entries get the descriptor inherited from
//! the target folder. Everything is checked again through a fresh mount. Needs root and FUSE;
//! skips with the reason otherwise (CI runs as root).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use client_data::ntfs::{from_ntfs_time, inherit, sd};
use client_data::winnames::unmap;
use client_data::{RestoreTarget, TargetFs};

use crate::common::*;

const DATA_PATH: &str = "/Users/Public/Documents/Recovered";

fn skip(name: &str) -> bool {
    if can_mount_ntfs() {
        return false;
    }
    tek_testkit::skip!("{name}: needs root, /dev/fuse and ntfs-3g");
    true
}

fn xget(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(p, name).unwrap()
}

fn xset(p: &Path, name: &str, v: &[u8]) {
    xattr::set(p, name, v).unwrap_or_else(|e| panic!("setting {name} on {}: {e}", p.display()));
}

#[test]
fn names_windows_cannot_hold_are_mapped_listed_and_verified() {
    if skip("names_windows_cannot_hold_are_mapped_listed_and_verified") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    fs::create_dir_all(src.join("Docs")).unwrap();
    fs::create_dir_all(src.join("docs")).unwrap();
    let names: &[&[u8]] = &[
        b"a:b.txt",
        b"what?",
        b"<less>",
        b"pipe|star*quote\"back\\slash",
        b"tab\tname",
        b"trailing.",
        b"trailing ",
        b"CON",
        b"con.txt",
        b"LPT9.log",
        b"Com1",
        b"Report.txt",
        b"report.TXT",
        b"caf\xe9.bin",
        b"plain.txt",
        b"Docs/inner:one",
        b"docs/inner:one",
    ];
    for (i, n) in names.iter().enumerate() {
        fs::write(src.join(OsStr::from_bytes(n)), format!("content {i}")).unwrap();
    }
    // Symlinks to a renamed file, and with a text that is not UTF-8 (ntfs-3g refuses that).
    std::os::unix::fs::symlink("a:b.txt", src.join("link-to-ab")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9.bin"), src.join("odd-link")).unwrap();
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();

    let mut vol = NtfsVolume::new(d.dir.path(), "Windows", 32 << 20);
    let target = RestoreTarget::beneath(&vol.mnt, DATA_PATH).unwrap();
    assert_eq!(target.fs(), TargetFs::Ntfs3g);
    let res = d.custody.restore_into(&info.id, &target, &dest()).unwrap();
    drop(target);
    assert!(res.ok(), "{res:?}");
    assert_eq!(res.target_filesystem, "ntfs (ntfs-3g)");
    assert_eq!(res.entries_verified, names.len() as u64 + 4);
    assert_eq!(
        res.link_targets_mapped.len(),
        2,
        "{:?}",
        res.link_targets_mapped
    );

    // Every mapping is listed, in --json too, and reverses to the staged name.
    let json = serde_json::to_value(&res).unwrap();
    assert_eq!(
        json["name_mappings"].as_array().unwrap().len(),
        res.name_mappings.len()
    );
    let by_from: HashMap<&str, &str> = res
        .name_mappings
        .iter()
        .map(|m| (m.from.as_str(), m.to.as_str()))
        .collect();
    assert!(!by_from.contains_key("plain.txt"));
    assert!(
        !by_from.contains_key("Report.txt"),
        "the first of a case pair keeps its name"
    );
    assert!(!by_from.contains_key("Docs"));
    assert_eq!(by_from["a:b.txt"], "a\u{F03A}b.txt");
    assert_eq!(by_from["CON"], "CO\u{F04E}");
    assert_eq!(by_from["report.TXT"], "report\u{F100}2.TXT");
    assert_eq!(by_from["docs"], "docs\u{F100}2");
    assert_eq!(by_from["docs/inner:one"], "docs\u{F100}2/inner\u{F03A}one");
    assert_eq!(by_from["caf\\xe9.bin"], "caf\u{F0E9}.bin");
    for m in &res.name_mappings {
        let last = m.to.rsplit('/').next().unwrap();
        let from_last = m.from.rsplit('/').next().unwrap();
        let back = unmap(last);
        assert_eq!(client_data::winnames::show(&back), from_last, "{m:?}");
        // Only characters Windows accepts in the mapped name.
        assert!(
            !last
                .chars()
                .any(|c| "<>:\"\\|?*".contains(c) || (c as u32) < 0x20),
            "{m:?}"
        );
        assert!(!last.ends_with('.') && !last.ends_with(' '), "{m:?}");
    }

    // The audit log counts the renames, and holds no name.
    let recs: Vec<_> = d
        .custody
        .audit()
        .records()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let renamed = recs.iter().find_map(|r| match &r.event {
        client_data::AuditEvent::Migrate { renamed, .. } => Some(*renamed),
        _ => None,
    });
    assert_eq!(renamed, Some(res.name_mappings.len() as u64));
    let log = fs::read(d.custody.audit().path()).unwrap();
    assert!(
        !String::from_utf8_lossy(&log).contains("report"),
        "no file names in the log"
    );

    // Independently, through a fresh mount: each file under its mapped name with its own
    // content, nothing overwritten or dropped.
    vol.remount();
    let root = vol.mnt.join(DATA_PATH.trim_start_matches('/'));
    for (i, n) in names.iter().enumerate() {
        let shown = client_data::winnames::show(n);
        let rel = by_from
            .get(shown.as_str())
            .map_or(shown.clone(), |t| t.to_string());
        let got = fs::read(root.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(got, format!("content {i}").as_bytes(), "{rel}");
    }
    let count = |p: &Path| fs::read_dir(p).unwrap().count();
    assert_eq!(count(&root), names.len() - 2 + 2 + 2);
    assert_eq!(
        fs::read(root.join("link-to-ab")).unwrap(),
        b"content 0",
        "the link still leads to its file"
    );
    assert_eq!(fs::read(root.join("odd-link")).unwrap(), b"content 13");
    vol.unmount();
}

#[test]
fn a_name_too_long_once_mapped_refuses_the_restore_before_writing() {
    if skip("a_name_too_long_once_mapped_refuses_the_restore_before_writing") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    // Two 255-byte names that differ only by case: the second gets the case-clash number,
    // which takes it past NTFS's 255 UTF-16 units.
    fs::write(src.join(format!("{}.txt", "R".repeat(251))), b"x").unwrap();
    fs::write(src.join(format!("{}.txt", "r".repeat(251))), b"y").unwrap();
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let vol = NtfsVolume::new(d.dir.path(), "Windows", 16 << 20);
    let target = RestoreTarget::beneath(&vol.mnt, DATA_PATH).unwrap();
    let err = d
        .custody
        .restore_into(&info.id, &target, &dest())
        .unwrap_err();
    assert!(
        matches!(err, client_data::DataError::NameTooLong { .. }),
        "{err}"
    );
    assert_eq!(fs::read_dir(target.label()).unwrap().count(), 0);
}

/// A Windows-like descriptor for Public Documents: SYSTEM and Administrators full control,
/// INTERACTIVE users modify, CREATOR OWNER full control on what they create.
fn public_documents_sd() -> Vec<u8> {
    let system = sd::sid(5, &[18]);
    let admins = sd::sid(5, &[32, 544]);
    let interactive = sd::sid(5, &[4]);
    let creator = sd::sid(3, &[0]);
    sd::descriptor(
        &system,
        &system,
        &[
            sd::allow(&system, 0x1f01ff, 0x03),
            sd::allow(&admins, 0x1f01ff, 0x03),
            sd::allow(&interactive, 0x1301bf, 0x03),
            sd::allow(&creator, 0x1f01ff, 0x0b),
        ],
    )
}

#[test]
fn ntfs_to_ntfs_keeps_times_attributes_streams_and_inherits_descriptors() {
    if skip("ntfs_to_ntfs_keeps_times_attributes_streams_and_inherits_descriptors") {
        return;
    }
    let d = depot();
    // The faulty laptop's volume: files with a stream, DOS attributes, a creation time.
    let mut old = NtfsVolume::new(d.dir.path(), "Old", 32 << 20);
    let src = old.mnt.join("Users/jane/Documents");
    fs::create_dir_all(src.join("Private")).unwrap();
    let inv = src.join("invoice.pdf");
    fs::write(&inv, vec![0x25; 100_000]).unwrap();
    let zone = b"[ZoneTransfer]\r\nZoneId=3\r\nHostUrl=about:internet\r\n";
    xset(&inv, "user.Zone.Identifier", zone);
    let crtime: u64 = 132_000_000_001_234_567; // 2019-04-18, 100 ns units since 1601
    xset(&inv, "system.ntfs_crtime_be", &crtime.to_be_bytes());
    nix::sys::stat::utimensat(
        None,
        &inv,
        &nix::sys::time::TimeSpec::new(1_650_000_000, 123_456_700),
        &nix::sys::time::TimeSpec::new(1_600_000_000, 987_654_300),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    // Read-only + hidden + archive on the file, hidden + system on a folder.
    xset(&inv, "system.ntfs_attrib_be", &0x23u32.to_be_bytes());
    let secret = src.join("Private/desktop.ini");
    fs::write(&secret, b"[.ShellClassInfo]").unwrap();
    xset(
        &src.join("Private"),
        "system.ntfs_attrib_be",
        &0x16u32.to_be_bytes(),
    );
    xset(&secret, "system.ntfs_attrib_be", &0x26u32.to_be_bytes());
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    old.unmount();

    let mut new = NtfsVolume::new(d.dir.path(), "Windows", 32 << 20);
    let folder = new.mnt.join(DATA_PATH.trim_start_matches('/'));
    fs::create_dir_all(&folder).unwrap();
    let folder_sd = public_documents_sd();
    xset(&folder, "system.ntfs_acl", &folder_sd);
    let target = RestoreTarget::beneath(&new.mnt, DATA_PATH).unwrap();
    let res = d.custody.restore_into(&info.id, &target, &dest()).unwrap();
    drop(target);
    assert!(res.ok(), "{res:?}");
    assert!(
        res.security_note
            .as_deref()
            .unwrap()
            .contains("inherited from the target folder"),
        "{res:?}"
    );
    assert_eq!(
        res.owners_not_restored, 0,
        "no pretence of POSIX owners on NTFS"
    );

    new.remount();
    let out = &folder;
    let inv2 = out.join("invoice.pdf");
    let m = fs::metadata(&inv2).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 987_654_300));
    assert_eq!((m.atime(), m.atime_nsec()), (1_650_000_000, 123_456_700));
    assert_eq!(
        xget(&inv2, "system.ntfs_crtime_be").unwrap(),
        crtime.to_be_bytes()
    );
    assert_eq!(xget(&inv2, "user.Zone.Identifier").unwrap(), zone);
    let attrib = |p: &Path| {
        u32::from_be_bytes(
            xget(p, "system.ntfs_attrib_be")
                .unwrap()
                .try_into()
                .unwrap(),
        )
    };
    assert_eq!(attrib(&inv2) & 0x27, 0x23, "read-only, hidden, archive");
    assert_eq!(
        attrib(&out.join("Private")) & 0x07,
        0x06,
        "hidden, system folder"
    );
    assert_eq!(attrib(&out.join("Private/desktop.ini")) & 0x27, 0x26);
    assert_eq!(fs::read(&inv2).unwrap(), vec![0x25; 100_000]);
    assert_eq!(
        from_ntfs_time(crtime).sec,
        1_555_526_400,
        "the creation time is 2019-04-18"
    );

    // Descriptors: inherited from the target folder, as Windows gives copied files, and
    // usable by a standard (interactive) user on first boot.
    let interactive = sd::sid(5, &[4]);
    let want_file = inherit(&folder_sd, false).unwrap();
    let want_dir = inherit(&folder_sd, true).unwrap();
    let got = xget(&inv2, "system.ntfs_acl").unwrap();
    assert_eq!(got, want_file);
    assert_eq!(
        sd::allowed(&got, &interactive),
        Some(0x1301bf),
        "read, write, execute, delete"
    );
    assert_eq!(
        xget(&out.join("Private"), "system.ntfs_acl").unwrap(),
        want_dir
    );
    let deep = xget(&out.join("Private/desktop.ini"), "system.ntfs_acl").unwrap();
    assert_eq!(deep, inherit(&want_dir, false).unwrap());
    assert_eq!(sd::allowed(&deep, &interactive), Some(0x1301bf));
    new.unmount();
    // ntfs-3g's own auditor finds the volume's security data consistent.
    let out = std::process::Command::new("ntfssecaudit")
        .arg("-a")
        .arg(&new.image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No errors were found"), "{text}");
}

#[test]
fn hard_links_survive_onto_ntfs() {
    if skip("hard_links_survive_onto_ntfs") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"1").unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let vol = NtfsVolume::new(d.dir.path(), "Windows", 16 << 20);
    let target = RestoreTarget::beneath(&vol.mnt, DATA_PATH).unwrap();
    let res = d.custody.restore_into(&info.id, &target, &dest()).unwrap();
    assert!(res.ok(), "{res:?}");
    let root = target.label();
    assert_eq!(
        fs::metadata(root.join("a")).unwrap().ino(),
        fs::metadata(root.join("b")).unwrap().ino(),
        "hard links survive on NTFS too"
    );
}

/// Restored with the options tek mounts NTFS with (`noatime`: the read-back checks the times
/// in one request instead of setting them again), in files whose sizes straddle the data
/// stream's 64 KiB segments and the writer's 1 MiB gathering: content and all three times as
/// staged, through a fresh mount.
#[test]
fn tek_mount_options_restore_verifies_content_and_times() {
    if skip("tek_mount_options_restore_verifies_content_and_times") {
        return;
    }
    let d = depot();
    let src = d.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let sizes = [0usize, 1, 4095, 65_539, (1 << 20) + 5, (3 << 20) + 77];
    for (i, size) in sizes.iter().enumerate() {
        let p = src.join(format!("f{i}"));
        let body: Vec<u8> = (0..*size)
            .map(|k| (k * 31 + i * 7 + k / 4099) as u8)
            .collect();
        fs::write(&p, body).unwrap();
        nix::sys::stat::utimensat(
            None,
            &p,
            &nix::sys::time::TimeSpec::new(1_650_000_000 + i as i64, 123_456_700),
            &nix::sys::time::TimeSpec::new(1_600_000_000 + i as i64, 987_654_300),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let opts = client_data::NTFS_3G_OPTIONS;
    let mut vol = NtfsVolume::with_options(d.dir.path(), "Windows", 64 << 20, opts);
    let flags = nix::sys::statvfs::statvfs(&vol.mnt).unwrap().flags();
    assert!(
        flags.contains(nix::sys::statvfs::FsFlags::ST_NOATIME),
        "{opts}"
    );
    let target = RestoreTarget::beneath(&vol.mnt, DATA_PATH).unwrap();
    assert_eq!(target.fs(), TargetFs::Ntfs3g);
    let res = d.custody.restore_into(&info.id, &target, &dest()).unwrap();
    assert!(res.ok(), "{res:?}");
    assert_eq!(res.bytes_verified, sizes.iter().sum::<usize>() as u64);
    drop(target);
    vol.remount();
    let out = vol.mnt.join(DATA_PATH.trim_start_matches('/'));
    for i in 0..sizes.len() {
        let (a, b) = (src.join(format!("f{i}")), out.join(format!("f{i}")));
        assert_eq!(fs::read(&b).unwrap(), fs::read(&a).unwrap(), "f{i}");
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        // As set on the source (whose own access time the ingest's read moved since).
        let at = (1_650_000_000 + i as i64, 123_456_700);
        assert_eq!((mb.atime(), mb.atime_nsec()), at, "f{i}: access time");
        let mt = (1_600_000_000 + i as i64, 987_654_300);
        assert_eq!((mb.mtime(), mb.mtime_nsec()), mt, "f{i}: modification time");
        let crtime = xget(&b, "system.ntfs_crtime_be").unwrap();
        let want = ma
            .created()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let got = from_ntfs_time(u64::from_be_bytes(crtime.try_into().unwrap()));
        let want = (want.as_secs() as i64, want.subsec_nanos() / 100 * 100);
        assert_eq!((got.sec, got.nsec), want, "f{i}: creation time");
    }
}
