//! `tek image ...` end to end: the real binary against a temporary state root and a small GPT
//! image built at test time with sgdisk (no root needed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Tek {
    state: tempfile::TempDir,
}

impl Tek {
    fn new() -> Tek {
        Tek {
            state: tempfile::tempdir().unwrap(),
        }
    }
    fn dir(&self) -> &Path {
        self.state.path()
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(self.dir().join("state"))
            .arg("--trusted-keys")
            .arg(self.dir().join("trusted"))
            .args(args)
            .env_remove("TEK_STORE")
            .output()
            .expect("running tek")
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "tek {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "tek {args:?} should have failed");
        String::from_utf8(o.stderr).unwrap()
    }
}

fn have_sgdisk() -> bool {
    Command::new("sgdisk").arg("--version").output().is_ok()
}

fn gpt_image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    let st = Command::new("sgdisk")
        .args([
            "-n",
            "1:2048:+6M",
            "-c",
            "1:ROOT",
            "-n",
            "2:0:+4M",
            "-c",
            "2:DATA",
        ])
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success());
    // Some content inside ROOT so there are chunks.
    let mut data = std::fs::read(&img).unwrap();
    let mut x = 99u64;
    for b in &mut data[(1 << 20)..(3 << 20)] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x % 7) as u8;
    }
    std::fs::write(&img, data).unwrap();
    img
}

fn sha256sum(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(o.stdout).unwrap()[..64].to_string()
}

#[test]
fn image_lifecycle() {
    if !have_sgdisk() {
        eprintln!("SKIP: needs sgdisk");
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
    t.ok(&["image", "import", "os@1", imgs, "--replace"]);
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
