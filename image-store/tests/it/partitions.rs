//! The partition summary of a Windows-like image: each partition's filesystem and label are
//! probed at import from the stored chunks (manifest format 2), a BitLocker volume is recorded
//! as such and refused as the data partition, and partition hints are selectors: an ambiguous
//! GPT name is refused with the candidates listed, `type:`/`label:`/`number:` choose one.
//! Needs `sgdisk` and `mkntfs`; skips with a printed reason otherwise.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use image_store::{Hints, ImageRef, ImportOptions, MANIFEST_FORMAT, Store, StoreError};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// ESP-less Setup-like layout: p1 NTFS "Windows" (basic data), p2 BitLocker (basic data),
/// p3 NTFS "Recovery" (WinRE); p1 and p3 share the GPT name "Basic data partition".
fn windows_like(dir: &Path) -> PathBuf {
    let img = dir.join("win.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(60 << 20)
        .unwrap();
    let o = Command::new("sgdisk")
        .args([
            "-n1:2048:+16M",
            "-t1:0700",
            "-c1:Basic data partition",
            "-n2:0:+16M",
            "-t2:0700",
            "-c2:Locked",
            "-n3:0:+16M",
            "-t3:2700",
            "-c3:Basic data partition",
        ])
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for (n, label) in [(0u64, "Windows"), (2, "Recovery")] {
        let side = dir.join(format!("p{n}"));
        std::fs::File::create(&side)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let o = Command::new("mkntfs")
            .args(["-q", "-F", "-Q", "-L", label])
            .arg(&side)
            .output()
            .unwrap();
        assert!(o.status.success());
        f.write_all_at(&std::fs::read(&side).unwrap(), (1 << 20) + n * (16 << 20))
            .unwrap();
    }
    let mut fve = vec![0x5Au8; 4096];
    fve[3..11].copy_from_slice(b"-FVE-FS-");
    f.write_all_at(&fve, (1 << 20) + (16 << 20)).unwrap();
    img
}

fn import(store: &Store, img: &Path, name: &str, hints: Hints) -> Result<(), StoreError> {
    let opts = ImportOptions {
        hints,
        ..ImportOptions::default()
    };
    let r: ImageRef = name.parse().unwrap();
    store.import(&r, img, &opts, None).map(|_| ())
}

#[test]
fn partitions_are_probed_and_hints_are_selectors() {
    if !have("sgdisk") || !have("mkntfs") {
        tek_testkit::skip!("needs sgdisk and mkntfs");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let img = windows_like(d.path());

    // The ambiguous GPT name is refused with both candidates.
    let e = import(
        &store,
        &img,
        "w@1",
        Hints {
            data_partition: Some("Basic data partition".into()),
            ..Hints::default()
        },
    )
    .unwrap_err();
    let t = e.to_string();
    assert!(t.contains("ambiguous"), "{t}");
    assert!(t.contains("number:1") && t.contains("number:3"), "{t}");
    // The BitLocker volume is no data target.
    let e = import(
        &store,
        &img,
        "w@1",
        Hints {
            data_partition: Some("name:Locked".into()),
            ..Hints::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("BitLocker"), "{e}");

    for (i, sel) in ["type:basic-data", "label:Windows", "number:1"]
        .iter()
        .enumerate()
    {
        let hints = Hints {
            data_partition: Some(sel.to_string()),
            grow_partition: Some("label:Windows".into()),
            ..Hints::default()
        };
        // type:basic-data matches p1 and p2 here (both 0700): refused like a shared name.
        let r = import(&store, &img, &format!("w@{i}"), hints);
        if *sel == "type:basic-data" {
            assert!(r.unwrap_err().to_string().contains("ambiguous"));
            continue;
        }
        r.unwrap();
    }
    let (m, bytes) = store.load_manifest(&"w@1".parse().unwrap()).unwrap();
    assert_eq!(m.format, MANIFEST_FORMAT);
    assert!(String::from_utf8_lossy(&bytes).contains("\"filesystem\": \"bitlocker\""));
    let g = m.gpt.unwrap();
    let fs: Vec<_> = g
        .partitions
        .iter()
        .map(|p| (p.number, p.filesystem.as_deref(), p.label.as_deref()))
        .collect();
    assert_eq!(
        fs,
        vec![
            (1, Some("ntfs"), Some("Windows")),
            (2, Some("bitlocker"), None),
            (3, Some("ntfs"), Some("Recovery")),
        ]
    );
}

#[test]
fn format_1_manifests_are_still_read() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let src = d.path().join("a.img");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    let r: ImageRef = "a@1".parse().unwrap();
    store
        .import(&r, &src, &ImportOptions::default(), None)
        .unwrap();
    let path = store.root().join("images/a/1.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let old = text.replacen(
        &format!("\"format\": {MANIFEST_FORMAT}"),
        "\"format\": 1",
        1,
    );
    assert_ne!(old, text);
    std::fs::write(&path, old).unwrap();
    assert_eq!(store.load_manifest(&r).unwrap().0.format, 1);
    std::fs::write(
        &path,
        text.replacen(
            &format!("\"format\": {MANIFEST_FORMAT}"),
            "\"format\": 3",
            1,
        ),
    )
    .unwrap();
    let e = store.load_manifest(&r).unwrap_err();
    assert!(
        e.to_string().contains("unsupported format version 3"),
        "{e}"
    );
}

#[test]
fn randomize_guids_is_refused_when_the_esp_holds_a_windows_bcd() {
    if !have("sgdisk") || !have("mkfs.fat") || !have("mcopy") {
        tek_testkit::skip!("needs sgdisk, mkfs.fat, mtools");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let mut images = Vec::new();
    for with_bcd in [true, false] {
        let img = d.path().join(format!("esp-{with_bcd}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(80 << 20)
            .unwrap();
        let o = Command::new("sgdisk")
            .args(["-n1:2048:+64M", "-t1:ef00", "-c1:EFI system partition"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success());
        let esp = d.path().join(format!("esp-{with_bcd}.fat"));
        std::fs::File::create(&esp)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let sh = |cmd: &str| {
            let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
            assert!(
                o.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let e = esp.display();
        sh(&format!("mkfs.fat -F 32 -n SYSTEM {e} >/dev/null"));
        sh(&format!(
            "mmd -i {e} ::/EFI ::/EFI/Microsoft ::/EFI/Microsoft/Boot ::/EFI/Boot"
        ));
        let name = if with_bcd { "BCD" } else { "bootmgfw.efi" };
        std::fs::write(d.path().join(name), b"regf").unwrap();
        sh(&format!(
            "mcopy -i {e} {} ::/EFI/Microsoft/Boot/{name}",
            d.path().join(name).display()
        ));
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&std::fs::read(&esp).unwrap(), 1 << 20)
            .unwrap();
        images.push(img);
    }
    let hints = Hints {
        randomize_guids: true,
        ..Hints::default()
    };
    let e = import(&store, &images[0], "esp@1", hints.clone()).unwrap_err();
    let t = e.to_string();
    assert!(
        t.contains("randomize_guids") && t.contains("EFI/Microsoft/Boot/BCD"),
        "{t}"
    );
    assert!(t.contains("would not boot"), "{t}");
    // The same ESP without a BCD store: allowed; and the BCD image without the hint imports and
    // records the store, so `tek image set --randomize-guids` is refused later too.
    import(&store, &images[1], "esp@2", hints).unwrap();
    import(&store, &images[0], "esp@3", Hints::default()).unwrap();
    let (m, _) = store.load_manifest(&"esp@3".parse().unwrap()).unwrap();
    let p = &m.gpt.unwrap().partitions[0];
    assert_eq!(p.filesystem.as_deref(), Some("vfat"));
    assert_eq!(p.label.as_deref(), Some("SYSTEM"));
    assert!(p.windows_bcd);
}
