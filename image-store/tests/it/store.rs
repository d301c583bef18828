//! End-to-end tests of the store on real small GPT images built at test time (sgdisk +
//! `mkfs.ext4 -E offset=... -d DIR`, no mounting), checked with independent tools (`sha256sum`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use image_store::{
    Extent, GcOptions, ImageRef, ImportOptions, Piece, SignatureStatus, SigningKey, Store,
    StoreError, generate_keypair,
};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pseudo(n: usize, seed: u64) -> Vec<u8> {
    tek_testkit::bytes(seed, n)
}

/// A 24 MiB GPT disk: ROOT (ext4 populated from a directory) and DATA (empty), rest unused.
/// `variant` changes one file, so two variants share most chunks.
fn make_image(dir: &Path, name: &str, variant: u64) -> PathBuf {
    let files = dir.join(format!("{name}-files"));
    std::fs::create_dir_all(files.join("usr/lib")).unwrap();
    for i in 0..12u64 {
        // Half-compressible content: random bytes interleaved with text.
        let mut data = pseudo(200_000, 100 + i);
        data.extend(format!("file {i} ").repeat(20_000).as_bytes());
        std::fs::write(files.join(format!("usr/lib/f{i}.bin")), data).unwrap();
    }
    std::fs::write(
        files.join("usr/lib/changed.bin"),
        pseudo(300_000, 7 + variant),
    )
    .unwrap();
    let img = dir.join(format!("{name}.img"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(24 << 20).unwrap();
    run(Command::new("sgdisk")
        .args(["-Z", "-U", "11111111-2222-3333-4444-555555555555"])
        .arg(&img));
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+12M", "-c", "1:ROOT", "-t", "1:8304"])
        .args(["-n", "2:0:+4M", "-c", "2:DATA", "-t", "2:8300"])
        .arg(&img));
    run(Command::new("mkfs.ext4")
        .args([
            "-F",
            "-q",
            "-b",
            "4096",
            "-E",
            "offset=1048576",
            "-U",
            "0b1c2d3e-0000-4000-8000-000000000001",
        ])
        .args(["-E", "hash_seed=0b1c2d3e-0000-4000-8000-000000000002"])
        .arg("-d")
        .arg(&files)
        .arg(&img)
        .arg("12M")
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    img
}

fn sha256sum(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn tools_or_skip() -> bool {
    let ok = have("sgdisk") && have("mkfs.ext4") && have("sha256sum");
    if !ok {
        tek_testkit::skip!("needs sgdisk, mkfs.ext4 and sha256sum");
    }
    ok
}

fn r(s: &str) -> ImageRef {
    s.parse().unwrap()
}

#[test]
fn import_export_roundtrip_all_formats_with_gpt() {
    if !tools_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let img = make_image(d.path(), "v1", 0);
    let want = sha256sum(&img);
    let zst = d.path().join("v1.img.zst");
    run(Command::new("zstd")
        .args(["-q", "-3"])
        .arg(&img)
        .arg("-o")
        .arg(&zst));
    let gz = d.path().join("packed.bin"); // the name says nothing: magic bytes decide
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", img.display(), gz.display())));
    let xz = d.path().join("v1.img.xz");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("xz -1 -c {} > {}", img.display(), xz.display())));
    for (i, (src, fmt)) in [(&img, "raw"), (&zst, "zstd"), (&gz, "gzip"), (&xz, "xz")]
        .into_iter()
        .enumerate()
    {
        let image = r(&format!("demo@{i}"));
        let rep = store
            .import(&image, src, &ImportOptions::default(), None)
            .unwrap();
        assert_eq!(rep.source_format.name(), fmt);
        assert_eq!(rep.manifest.sha256, want);
        if i > 0 {
            assert_eq!(rep.new_chunks, 0, "{fmt}: same content, nothing new");
        }
        let gpt = rep.manifest.gpt.as_ref().expect("gpt summary");
        assert_eq!(gpt.logical_sector_size, 512);
        assert_eq!(gpt.disk_guid, "11111111-2222-3333-4444-555555555555");
        let names: Vec<_> = gpt.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ROOT", "DATA"]);
        assert_eq!(gpt.partitions[0].first_lba, 2048);
        // Unused space became holes, never chunks.
        assert!(rep.hole_bytes > 4 << 20, "holes: {}", rep.hole_bytes);
        let out = d.path().join(format!("out{i}.img"));
        store.export(&image, &out).unwrap();
        assert_eq!(sha256sum(&out), want, "{fmt} export differs");
    }
    // Streaming reader API gives the same bytes.
    let (m, _) = store.load_manifest(&r("demo@0")).unwrap();
    let mut bytes = vec![0u8; m.size as usize];
    for p in store.pieces(m.extents.clone(), image_store::Reader::default()) {
        if let Piece::Data(c) = p.unwrap() {
            let o = c.offset() as usize;
            bytes[o..o + c.data().len()].copy_from_slice(c.data());
        }
    }
    assert_eq!(bytes, std::fs::read(&img).unwrap());
}

#[test]
fn second_version_dedups_and_gc_is_safe() {
    if !tools_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let v1 = make_image(d.path(), "v1", 0);
    let v2 = make_image(d.path(), "v2", 1);
    let a = store
        .import(&r("os@1"), &v1, &ImportOptions::default(), None)
        .unwrap();
    let b = store
        .import(&r("os@2"), &v2, &ImportOptions::default(), None)
        .unwrap();
    assert!(
        b.new_stored_bytes * 3 < a.new_stored_bytes,
        "v2 added {} of {}",
        b.new_stored_bytes,
        a.new_stored_bytes
    );
    let st = store.stats().unwrap();
    assert_eq!(st.images, 2);
    assert!(st.dedup_ratio > 1.5, "{st:?}");

    // Nothing unreferenced yet.
    let g = store
        .gc(&GcOptions {
            dry_run: false,
            min_age: Default::default(),
        })
        .unwrap();
    assert_eq!(g.removed, 0);
    // Remove v1: its private chunks are young (just imported) and kept with the default margin...
    store.remove(&r("os@1")).unwrap();
    let g = store.gc(&GcOptions::default()).unwrap();
    assert_eq!(g.removed, 0);
    assert!(g.kept_recent > 0);
    // ...and removed without it; dry-run first removes nothing.
    let zero = GcOptions {
        dry_run: true,
        min_age: Default::default(),
    };
    let dry = store.gc(&zero).unwrap();
    assert!(dry.removed > 0);
    assert_eq!(store.gc(&zero).unwrap().removed, dry.removed);
    let g = store
        .gc(&GcOptions {
            dry_run: false,
            ..zero
        })
        .unwrap();
    assert_eq!(g.removed, dry.removed);
    let mut skip = HashMap::new();
    assert!(store.verify(&r("os@2"), true, &mut skip).unwrap().ok());
}

#[test]
fn gc_keeps_chunks_of_a_running_import() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let data = pseudo(6 << 20, 42);
    let src = d.path().join("a.img");
    std::fs::write(&src, &data).unwrap();
    // Import in a thread while gc with no margin runs in a loop: the finished image must verify.
    std::thread::scope(|s| {
        let t = s.spawn(|| store.import(&r("a@1"), &src, &ImportOptions::default(), None));
        while !t.is_finished() {
            store
                .gc(&GcOptions {
                    dry_run: false,
                    min_age: Default::default(),
                })
                .unwrap();
        }
        t.join().unwrap().unwrap();
    });
    store
        .gc(&GcOptions {
            dry_run: false,
            min_age: Default::default(),
        })
        .unwrap();
    assert!(
        store
            .verify(&r("a@1"), true, &mut HashMap::new())
            .unwrap()
            .ok()
    );
}

#[test]
fn corrupt_truncated_and_deleted_chunks_are_named_and_quarantined() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let src = d.path().join("a.img");
    std::fs::write(&src, pseudo(2 << 20, 9)).unwrap();
    store
        .import(&r("a@1"), &src, &ImportOptions::default(), None)
        .unwrap();
    store
        .import(&r("b@1"), &src, &ImportOptions::default(), None)
        .unwrap();
    let (m, _) = store.load_manifest(&r("a@1")).unwrap();
    let chunks: Vec<_> = m
        .extents
        .iter()
        .filter_map(|e| match e {
            Extent::Chunk { id, offset, .. } => Some((*id, *offset)),
            _ => None,
        })
        .collect();
    assert!(chunks.len() >= 4);
    // 1: flip bytes, 2: truncate, 3: delete.
    let (c1, o1) = chunks[1];
    let p1 = store.chunk_path(c1);
    let mut b = std::fs::read(&p1).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&p1, b).unwrap();
    let p2 = store.chunk_path(chunks[2].0);
    let b = std::fs::read(&p2).unwrap();
    std::fs::write(&p2, &b[..b.len() / 2]).unwrap();
    std::fs::remove_file(store.chunk_path(chunks[3].0)).unwrap();

    let rep = store.verify(&r("a@1"), false, &mut HashMap::new()).unwrap();
    assert_eq!(rep.bad_chunks.len(), 3, "{:?}", rep.bad_chunks);
    let first = &rep.bad_chunks[0];
    assert!(first.contains(&c1.to_hex()), "{first}");
    assert!(first.contains(&format!("a@1 at offset {o1}")), "{first}");
    assert!(first.contains(&format!("b@1 at offset {o1}")), "{first}");
    assert!(first.contains("quarantined"), "{first}");
    assert!(p1.with_extension("zst.bad").exists() && !p1.exists());
    assert!(
        rep.bad_chunks[2].contains("missing"),
        "{}",
        rep.bad_chunks[2]
    );

    // Export fails naming the chunk and leaves no partial file.
    let out = d.path().join("out.img");
    let e = store.export(&r("b@1"), &out).unwrap_err();
    assert!(matches!(e, StoreError::BadChunk { .. }), "{e}");
    assert!(!out.exists());
    // gc never removes quarantined files.
    let g = store
        .gc(&GcOptions {
            dry_run: false,
            min_age: Default::default(),
        })
        .unwrap();
    assert_eq!(g.quarantined, 2);
    assert!(p1.with_extension("zst.bad").exists());
    // Re-importing the same content repairs the store.
    store
        .import(
            &r("a@1"),
            &src,
            &ImportOptions {
                replace: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert!(
        store
            .verify(&r("b@1"), true, &mut HashMap::new())
            .unwrap()
            .ok()
    );
}

#[test]
fn bad_inputs() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let o = ImportOptions::default();
    let e = store
        .import(&r("a@1"), &d.path().join("missing"), &o, None)
        .unwrap_err();
    assert!(e.to_string().contains("no such file"), "{e}");
    let e = store.import(&r("a@1"), d.path(), &o, None).unwrap_err();
    assert!(e.to_string().contains("directory"), "{e}");
    let empty = d.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(
        store
            .import(&r("a@1"), &empty, &o, None)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let data = pseudo(1 << 20, 3);
    let z = zstd::encode_all(&data[..], 3).unwrap();
    let tz = d.path().join("t.zst");
    std::fs::write(&tz, &z[..z.len() - 100]).unwrap();
    let e = store.import(&r("a@1"), &tz, &o, None).unwrap_err();
    assert!(matches!(e, StoreError::Decompress { .. }), "{e}");
    assert!(store.list().unwrap().is_empty(), "nothing committed");
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
            .count(),
        0,
        "temporaries cleaned"
    );
    let ok = d.path().join("ok");
    std::fs::write(&ok, &data).unwrap();
    store.import(&r("a@1"), &ok, &o, None).unwrap();
    let e = store.import(&r("a@1"), &ok, &o, None).unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    // No GPT: imports, gpt is null; a partition hint is refused.
    assert!(store.load_manifest(&r("a@1")).unwrap().0.gpt.is_none());
    let mut hinted = ImportOptions::default();
    hinted.hints.data_partition = Some("DATA".into());
    let e = store.import(&r("a@2"), &ok, &hinted, None).unwrap_err();
    assert!(matches!(e, StoreError::BadHint { .. }), "{e}");
}

#[test]
fn signatures_and_tampering() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let trusted = d.path().join("trusted");
    let (sk, pk) = generate_keypair(&d.path().join("keys"), "maint").unwrap();
    let key = SigningKey::load(&sk).unwrap();
    let src = d.path().join("a.img");
    std::fs::write(&src, pseudo(1 << 20, 5)).unwrap();
    store
        .import(&r("a@1"), &src, &ImportOptions::default(), Some(&key))
        .unwrap();
    let st = store.load(&r("a@1"), &trusted).unwrap().signature;
    assert_eq!(
        st,
        SignatureStatus::UnknownKey {
            key_id: "maint".into()
        }
    );
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(&pk, trusted.join("maint.pub")).unwrap();
    assert!(
        store
            .load(&r("a@1"), &trusted)
            .unwrap()
            .signature
            .is_valid()
    );
    // Tamper: change the recorded size of a hint-free field without breaking JSON.
    let mp = store.manifest_path(&r("a@1"));
    let text = std::fs::read_to_string(&mp).unwrap();
    let tampered = text.replace("\"randomize_guids\": false", "\"randomize_guids\": true");
    assert_ne!(text, tampered);
    std::fs::write(&mp, &tampered).unwrap();
    let st = store.load(&r("a@1"), &trusted).unwrap().signature;
    assert!(matches!(st, SignatureStatus::Invalid { .. }), "{st:?}");
    // Malformed: parse error with position.
    std::fs::write(&mp, text.replacen("\"size\":", "\"size\" ", 1)).unwrap();
    let e = store.load(&r("a@1"), &trusted).unwrap_err();
    assert!(
        matches!(e, StoreError::Parse { line, column, .. } if line > 1 && column > 0),
        "{e}"
    );
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn disk_full_during_import_commits_nothing() {
    if !nix::unistd::geteuid().is_root() {
        tek_testkit::skip!("mounting a small tmpfs needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let store = Store::open(&mnt.join("store")).unwrap();
    let src = d.path().join("big.img");
    std::fs::write(&src, pseudo(20 << 20, 11)).unwrap(); // incompressible, larger than the fs
    let e = store
        .import(&r("big@1"), &src, &ImportOptions::default(), None)
        .unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(store.list().unwrap().is_empty());
    let tmp_left: Vec<_> = std::fs::read_dir(mnt.join("store/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        tmp_left
            .iter()
            .all(|n| n.to_string_lossy().ends_with(".stamp")),
        "{tmp_left:?}"
    );
    // gc (no margin) reclaims the orphaned chunks; a small import then works.
    store
        .gc(&GcOptions {
            dry_run: false,
            min_age: Default::default(),
        })
        .unwrap();
    std::fs::write(&src, pseudo(1 << 20, 12)).unwrap();
    store
        .import(&r("small@1"), &src, &ImportOptions::default(), None)
        .unwrap();
}

/// An export output that sleeps on every write and keeps nothing: a USB stick at its slowest.
struct SlowSink {
    pos: u64,
    written: u64,
    len: u64,
}

impl std::io::Write for SlowSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.pos += buf.len() as u64;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for SlowSink {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let std::io::SeekFrom::Current(d) = to else {
            unreachable!("export only seeks forward")
        };
        self.pos = self.pos.checked_add_signed(d).unwrap();
        Ok(self.pos)
    }
}

impl image_store::SetLen for SlowSink {
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.len = len;
        Ok(())
    }
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

mod bounded;
