//! Ingest of tar archives built byte by byte, so hostile headers are possible: `..` and absolute
//! names, a symlink and then a file written through it, hardlinks to outside, device nodes,
//! absurd sizes, truncation; plus device entries skipped, hardlinks inside kept, compression.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use client_data::DataError;

use crate::common::*;

fn assert_bad_source(r: Result<client_data::DatasetInfo, DataError>, what: &str, d: &Depot) {
    match r {
        Err(DataError::BadSource { reason, .. }) => {
            assert!(reason.contains(what), "{what}: got {reason}")
        }
        other => panic!("{what}: expected BadSource, got {other:?}"),
    }
    // Nothing left behind: no dataset, no partial, no key.
    let staged: Vec<_> = fs::read_dir(&d.custody.paths().staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ds-"))
        .collect();
    assert!(staged.is_empty(), "{what}: left {staged:?}");
    let keys = d.custody.paths().keys.join("datasets");
    assert!(
        !keys.exists() || fs::read_dir(&keys).unwrap().next().is_none(),
        "{what}: key left"
    );
}

#[test]
fn hostile_tars_are_refused() {
    let d = depot();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", tar_of(&[file_entry(b"../evil", b"x")]), "`..`"),
        (
            "nested dotdot",
            tar_of(&[file_entry(b"a/../../evil", b"x")]),
            "`..`",
        ),
        (
            "absolute",
            tar_of(&[file_entry(b"/etc/evil", b"x")]),
            "absolute",
        ),
        (
            "symlink then file through it",
            tar_of(&[
                header(b"a", b'2', b"00000000000", b"/etc").to_vec(),
                file_entry(b"a/passwd", b"x"),
            ]),
            "symlink",
        ),
        (
            "hardlink outside",
            tar_of(&[header(b"h", b'1', b"00000000000", b"../../etc/shadow").to_vec()]),
            "hard link",
        ),
        (
            "hardlink absolute",
            tar_of(&[header(b"h", b'1', b"00000000000", b"/etc/shadow").to_vec()]),
            "hard link",
        ),
        (
            "absurd size",
            tar_of(&[
                header(b"big", b'0', b"77777777777", b"").to_vec(),
                vec![1u8; 512],
            ]),
            "truncated",
        ),
        (
            "truncated content",
            file_entry(b"f", &[7u8; 4000])[..2048].to_vec(),
            "truncated",
        ),
        (
            "truncated header",
            file_entry(b"f", b"abc")[..300].to_vec(),
            "",
        ),
    ];
    for (what, bytes, reason) in cases {
        assert_bad_source(ingest_bytes(&d, "hostile.tar", &bytes), reason, &d);
        eprintln!("refused: {what}");
    }
    // Base-256 (binary) size field with an absurd value.
    let mut h = header(b"huge", b'0', b"", b"");
    h[124] = 0x80;
    h[128..136].copy_from_slice(&u64::MAX.to_be_bytes()[..8]);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let r = ingest_bytes(&d, "huge.tar", &tar_of(&[h.to_vec()]));
    assert!(matches!(r, Err(DataError::BadSource { .. })), "{r:?}");
}

#[test]
fn tar_devices_skipped_hardlinks_and_compression() {
    let d = depot();
    let t = tar_of(&[
        header(b"./", b'5', b"00000000000", b"").to_vec(),
        file_entry(b"./dir/f", b"content"),
        header(b"dir/hl", b'1', b"00000000000", b"dir/f").to_vec(),
        header(b"dev/null", b'3', b"00000000000", b"").to_vec(),
        header(b"dev/sda", b'4', b"00000000000", b"").to_vec(),
        header(b"fifo", b'6', b"00000000000", b"").to_vec(),
        file_entry(b"na\xefve \xff", b"bytes"),
    ]);
    let zst = zstd::encode_all(&t[..], 3).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t).unwrap();
    let gz = gz.finish().unwrap();
    for (name, bytes) in [("a.tar", t.clone()), ("a.tar.zst", zst), ("a.tar.gz", gz)] {
        let info = ingest_bytes(&d, name, &bytes).unwrap();
        assert_eq!(info.entries, 6, "{name}");
        let target = d.dir.path().join(format!("out-{name}"));
        fs::create_dir(&target).unwrap();
        let res = d.custody.restore(&info.id, &target, &dest()).unwrap();
        assert!(res.ok(), "{res:?}");
        assert_eq!(res.skipped.len(), 3, "{:?}", res.skipped);
        assert!(
            res.skipped[0] == "character device node dev/null (entry 2)",
            "{:?}",
            res.skipped
        );
        assert_eq!(fs::read(target.join("dir/hl")).unwrap(), b"content");
        assert_eq!(
            fs::metadata(target.join("dir/hl")).unwrap().ino(),
            fs::metadata(target.join("dir/f")).unwrap().ino()
        );
        assert_eq!(
            fs::read(target.join(std::ffi::OsStr::from_bytes(b"na\xefve \xff"))).unwrap(),
            b"bytes"
        );
        assert!(!target.join("dev/null").exists());
    }
}
