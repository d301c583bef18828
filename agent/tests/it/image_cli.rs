//! `tek image ...` end to end: the real binary against a temporary state root and a small GPT
//! image built at test time with sgdisk (no root needed).

use std::path::Path;
use std::process::Command;

use crate::common::{Tek, gpt_image, have_sgdisk};

fn sha256sum(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(o.stdout).unwrap()[..64].to_string()
}

#[test]
fn image_lifecycle() {
    if !have_sgdisk() {
        tek_testkit::skip!("needs sgdisk");
        return;
    }
    let t = Tek::new();
    let img = gpt_image(t.dir());
    let keys = t.dir().join("keys");
    let out = t.ok(&["image", "keygen", "maint", "--dir", keys.to_str().unwrap()]);
    assert!(out.contains("maint.pub"), "{out}");
    let sk = keys.join("maint.key");
    let sk = sk.to_str().unwrap();
    let imgs = img.to_str().unwrap();

    t.ok(&[
        "image",
        "import",
        "os@1",
        imgs,
        "--sign-key",
        sk,
        "--data-partition",
        "DATA",
        "--data-path",
        "/home",
        "--grow-partition",
        "ROOT",
        "--randomize-guids",
    ]);
    // Not yet trusted: signed by an unknown key.
    let show: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "show", "os@1", "--json"])).unwrap();
    assert_eq!(show["signature"]["status"], "unknown_key");
    assert_eq!(show["manifest"]["hints"]["data_partition"], "DATA");
    assert_eq!(show["manifest"]["hints"]["randomize_guids"], true);
    assert_eq!(show["manifest"]["gpt"]["partitions"][1]["name"], "DATA");
    assert_eq!(show["manifest"]["sha256"], sha256sum(&img));
    std::fs::create_dir_all(t.dir().join("trusted")).unwrap();
    std::fs::copy(keys.join("maint.pub"), t.dir().join("trusted/maint.pub")).unwrap();
    let out = t.ok(&["image", "show", "os@1"]);
    assert!(out.contains("valid (trusted key maint)"), "{out}");
    let out = t.ok(&["image", "verify", "os@1", "--deep", "--require-signature"]);
    assert!(out.contains("OK"), "{out}");

    // Existing image, unsafe names, bad hints, missing key.
    assert!(
        t.fails(&["image", "import", "os@1", imgs])
            .contains("already exists")
    );
    assert!(
        t.fails(&["image", "import", "../x@1", imgs])
            .contains("bad image reference")
    );
    assert!(
        t.fails(&["image", "import", "os@2", imgs, "--data-partition", "NOPE"])
            .contains("NOPE")
    );
    let e = t.fails(&[
        "image",
        "import",
        "os@2",
        imgs,
        "--sign-key",
        "/nonexistent.key",
    ]);
    assert!(e.contains("no such key file"), "{e}");
    let out = t.ok(&["image", "import", "os@1", imgs, "--replace"]);
    assert!(
        out.contains("unsigned: the replaced version's signature was removed"),
        "{out}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "list", "--json"])).unwrap();
    assert_eq!(list[0]["signature"]["status"], "unsigned");

    // Export is byte-identical.
    let exp = t.dir().join("export.img");
    t.ok(&["image", "export", "os@1", exp.to_str().unwrap()]);
    assert_eq!(sha256sum(&exp), sha256sum(&img));

    // set re-signs; tampering makes verify fail.
    t.ok(&[
        "image",
        "set",
        "os@1",
        "--data-path",
        "/srv",
        "--sign-key",
        sk,
    ]);
    let show: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "show", "os@1", "--json"])).unwrap();
    assert_eq!(show["manifest"]["hints"]["data_path"], "/srv");
    assert_eq!(show["signature"]["status"], "valid");
    let mp = t.dir().join("state/store/images/os/1.json");
    let text = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(&mp, text.replace("/srv", "/etc")).unwrap();
    let e = t.fails(&["image", "verify", "--all"]);
    assert!(e.contains("failed verification"), "{e}");
    std::fs::write(&mp, text.replacen('{', "{{", 1)).unwrap();
    let e = t.fails(&["image", "show", "os@1"]);
    assert!(e.contains("line 1, column"), "{e}");
    let out = t.ok(&["image", "list"]);
    assert!(out.contains("os@1") && out.contains("ERROR"), "{out}");
    std::fs::write(&mp, text).unwrap();

    let stats: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "stats", "--json"])).unwrap();
    assert_eq!(stats["images"], 1);
    assert!(stats["stored_bytes"].as_u64().unwrap() > 0);
    t.ok(&["image", "rm", "os@1"]);
    assert!(t.fails(&["image", "show", "os@1"]).contains("not found"));
    let gc: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "gc", "--min-age", "0", "--json"])).unwrap();
    assert!(gc["removed"].as_u64().unwrap() > 0, "{gc}");
    let stats: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "stats", "--json"])).unwrap();
    assert_eq!(stats["chunks"], 0);
}

/// `image set` never drops a signature silently: no change is no rewrite, a change to a signed
/// manifest needs `--sign-key` (re-signed, valid) or `--unsign`, and is refused otherwise.
#[test]
fn set_keeps_a_signature_unless_told() {
    if !have_sgdisk() {
        tek_testkit::skip!("needs sgdisk");
        return;
    }
    let t = Tek::new();
    let img = gpt_image(t.dir());
    let sk = t.trusted_maintainer_key();
    let sk = sk.to_str().unwrap();
    t.ok(&[
        "image",
        "import",
        "os@1",
        img.to_str().unwrap(),
        "--sign-key",
        sk,
        "--data-partition",
        "DATA",
    ]);
    let sig = t.dir().join("state/store/images/os/1.sig");
    let man = t.dir().join("state/store/images/os/1.json");
    let (sig0, man0) = (std::fs::read(&sig).unwrap(), std::fs::read(&man).unwrap());
    let status = |t: &Tek| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&t.ok(&["image", "show", "os@1", "--json"]))
            .unwrap()["signature"]["status"]
            .clone()
    };

    // No options, or the hints it already has: nothing to change, nothing rewritten.
    for args in [
        &["image", "set", "os@1"][..],
        &["image", "set", "os@1", "--data-partition", "DATA"][..],
    ] {
        let out = t.ok(args);
        assert!(out.contains("nothing to change"), "{out}");
        assert_eq!(std::fs::read(&sig).unwrap(), sig0, ".sig untouched");
        assert_eq!(std::fs::read(&man).unwrap(), man0, "manifest untouched");
        assert_eq!(status(&t), "valid");
    }

    // A change without --sign-key or --unsign: refused, both files as they were.
    let e = t.fails(&["image", "set", "os@1", "--data-path", "/srv"]);
    assert!(
        e.contains("is signed") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(std::fs::read(&sig).unwrap(), sig0);
    assert_eq!(std::fs::read(&man).unwrap(), man0);
    let e = t.fails(&["image", "set", "os@1", "--unsign", "--sign-key", sk]);
    assert!(e.contains("cannot be used with"), "{e}");

    // With --sign-key: changed and validly re-signed.
    let out = t.ok(&[
        "image",
        "set",
        "os@1",
        "--data-path",
        "/srv",
        "--sign-key",
        sk,
    ]);
    assert!(out.contains("signed with maint"), "{out}");
    assert_eq!(status(&t), "valid");
    t.ok(&["image", "verify", "os@1", "--require-signature"]);

    // With --unsign: changed, and the output says the signature is gone.
    let out = t.ok(&["image", "set", "os@1", "--data-path", "/opt", "--unsign"]);
    assert!(out.contains("signature removed"), "{out}");
    assert_eq!(status(&t), "unsigned");
    assert!(!sig.exists());
    // Unsigned: a change needs no option.
    let out = t.ok(&["image", "set", "os@1", "--data-path", "/home"]);
    assert!(out.contains("unsigned, as before"), "{out}");
}

/// `verify --all --require-signature` names every image that failed and why, exits non-zero,
/// and says where shared chunks were checked instead of "0 chunks checked".
#[test]
fn verify_all_names_each_failed_image() {
    if !have_sgdisk() {
        tek_testkit::skip!("needs sgdisk");
        return;
    }
    let t = Tek::new();
    let img = gpt_image(t.dir());
    let imgs = img.to_str().unwrap();
    let sk = t.trusted_maintainer_key();
    t.ok(&[
        "image",
        "import",
        "a@1",
        imgs,
        "--sign-key",
        sk.to_str().unwrap(),
    ]);
    t.ok(&["image", "import", "b@1", imgs]);
    t.ok(&["image", "import", "c@1", imgs]);

    let out = t.ok(&["image", "verify", "--all"]);
    assert!(!out.contains("(0 chunks checked"), "{out}");
    let b = out.lines().find(|l| l.starts_with("b@1:")).unwrap();
    assert!(b.contains("all already checked for a@1"), "{b}");
    assert!(b.starts_with("b@1: OK: content OK"), "{b}");

    let o = t.run(&["image", "verify", "--all", "--require-signature"]);
    assert!(!o.status.success());
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(err.contains("2 of 3 images failed verification"), "{err}");
    assert!(
        err.contains("b@1 (signature unsigned, a valid one is required)"),
        "{err}"
    );
    assert!(err.contains("c@1 (signature unsigned"), "{err}");
    assert!(!err.contains("a@1 ("), "a@1 passed: {err}");
    let a = out.lines().find(|l| l.starts_with("a@1:")).unwrap();
    assert!(a.starts_with("a@1: OK"), "{a}");
    let c = out.lines().find(|l| l.starts_with("c@1:")).unwrap();
    assert!(c.starts_with("c@1: FAILED: content OK"), "{c}");

    // An unreadable manifest fails that image, named, and the others are still verified.
    let mp = t.dir().join("state/store/images/c/1.json");
    std::fs::write(&mp, "{").unwrap();
    let o = t.run(&["image", "verify", "--all"]);
    assert!(!o.status.success());
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        err.contains("1 of 3 images failed verification: c@1 (loading c@1: parsing"),
        "{err}"
    );
    assert!(out.contains("a@1: OK") && out.contains("b@1: OK"), "{out}");
}

/// Two `tek image set` processes on one image at once, changing different hints: both
/// changes land every round (before, the later rewrite dropped the earlier "updated" change).
#[test]
fn concurrent_set_processes_both_land() {
    if !have_sgdisk() {
        tek_testkit::skip!("needs sgdisk");
        return;
    }
    let t = Tek::new();
    let img = gpt_image(t.dir());
    t.ok(&["image", "import", "os@1", img.to_str().unwrap()]);
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(t.dir().join("state"))
            .arg("--trusted-keys")
            .arg(t.dir().join("trusted"))
            .args(["image", "set", "os@1"])
            .args(args)
            .env_remove("TEK_STORE")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    for round in 0..8 {
        t.ok(&[
            "image",
            "set",
            "os@1",
            "--data-path",
            "",
            "--grow-partition",
            "",
        ]);
        let path = format!("/r{round}");
        let mut a = spawn(&["--data-path", &path]);
        let mut b = spawn(&["--grow-partition", "ROOT"]);
        assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
        let show: serde_json::Value =
            serde_json::from_str(&t.ok(&["image", "show", "os@1", "--json"])).unwrap();
        let h = &show["manifest"]["hints"];
        assert_eq!(h["data_path"], path.as_str(), "round {round}: {h}");
        assert_eq!(h["grow_partition"], "ROOT", "round {round}: {h}");
    }
}

#[test]
fn import_refuses_a_size_past_max_image_size() {
    // A zstd frame whose header declares 1 PiB (followed by one empty RLE block): refused
    // before any decoding, by default and by a lower --max-image-size.
    let t = Tek::new();
    let bomb = t.dir().join("claims-1PiB.zst");
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0xC0, 7 << 3];
    f.extend_from_slice(&(1u64 << 50).to_le_bytes());
    f.extend_from_slice(&[0x03, 0x00, 0x00, 0x00]);
    std::fs::write(&bomb, f).unwrap();
    let err = t.fails(&["image", "import", "bomb@1", bomb.to_str().unwrap()]);
    assert!(
        err.contains("declares 1125899906842624 bytes, more than the maximum image size"),
        "{err}"
    );
    let raw = t.dir().join("big.img");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let args = ["image", "import", "big@1", raw.to_str().unwrap()];
    let err = t.fails(&[&args[..], &["--max-image-size", "2M"]].concat());
    assert!(
        err.contains("more than the maximum image size of 2097152"),
        "{err}"
    );
    let out = t.run(&["image", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("bomb"));
}

/// A BitLocker volume in an image: import warns on stderr, `image show` says so under the
/// partition, and naming it as the data partition is refused with the reason.
#[test]
fn bitlocker_partition_is_warned_shown_and_refused_as_data_target() {
    if !have_sgdisk() {
        tek_testkit::skip!("needs sgdisk");
        return;
    }
    let t = Tek::new();
    let img = gpt_image(t.dir());
    // DATA (partition 2, from 7 MiB) becomes a BitLocker volume: its boot sector's OEM id.
    let mut bytes = std::fs::read(&img).unwrap();
    let at = (7 << 20) + 3;
    bytes[at..at + 8].copy_from_slice(b"-FVE-FS-");
    std::fs::write(&img, &bytes).unwrap();
    let imgs = img.to_str().unwrap();
    let err = t.fails(&[
        "image",
        "import",
        "bl@1",
        imgs,
        "--data-partition",
        "number:2",
    ]);
    assert!(
        err.contains("BitLocker") && err.contains("data_partition"),
        "{err}"
    );
    let o = t.run(&["image", "import", "bl@1", imgs]);
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("warning: partition 2 (\"DATA\") is BitLocker-encrypted"),
        "{stderr}"
    );
    let show = t.ok(&["image", "show", "bl@1"]);
    assert!(
        show.contains("filesystem bitlocker (BitLocker-encrypted"),
        "{show}"
    );
    let json = t.ok(&["image", "show", "bl@1", "--json"]);
    assert!(
        json.contains("\"filesystem\": \"bitlocker\"")
            || json.contains("\"filesystem\":\"bitlocker\""),
        "{json}"
    );
}
