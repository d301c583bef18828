//! Helpers shared by the `tek` command-line tests in this directory: a temporary state root to run
//! the real binary against, and a small GPT image built with sgdisk.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// The `tek` binary with its own temporary state root and trusted-keys directory.
pub struct Tek {
    state: tempfile::TempDir,
}

impl Tek {
    /// A fresh, empty depot.
    pub fn new() -> Tek {
        Tek {
            state: tempfile::tempdir().unwrap(),
        }
    }
    /// The scratch directory holding `state/` and `trusted/`.
    pub fn dir(&self) -> &Path {
        self.state.path()
    }
    /// Makes the maintainer key `maint` under `keys/` with `tek image keygen`, trusts its public
    /// half, and returns the secret key's path.
    pub fn trusted_maintainer_key(&self) -> std::path::PathBuf {
        let keys = self.dir().join("keys");
        self.ok(&["image", "keygen", "maint", "--dir", keys.to_str().unwrap()]);
        std::fs::create_dir_all(self.dir().join("trusted")).unwrap();
        std::fs::copy(keys.join("maint.pub"), self.dir().join("trusted/maint.pub")).unwrap();
        keys.join("maint.key")
    }
    /// `tek --state STATE --trusted-keys TRUSTED`, not yet run.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tek"));
        c.arg("--state")
            .arg(self.dir().join("state"))
            .arg("--trusted-keys")
            .arg(self.dir().join("trusted"))
            .env_remove("TEK_STORE");
        c
    }
    /// Runs `tek ARGS` against this depot.
    pub fn run(&self, args: &[&str]) -> Output {
        tek_testkit::run(self.cmd().args(args))
    }
    /// Runs `tek ARGS` with `cwd` as the current directory.
    pub fn run_in(&self, cwd: &Path, args: &[&str]) -> Output {
        tek_testkit::run(self.cmd().current_dir(cwd).args(args))
    }
    /// Runs `tek ARGS`, asserts success (else panics with both streams and the scratch
    /// listing), returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = tek_testkit::run_ok(self.cmd().args(args), Some(self.dir()));
        String::from_utf8(o.stdout).unwrap()
    }
    /// Runs `tek ARGS`, asserts failure (else panics with both streams and the scratch
    /// listing), returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = tek_testkit::run_fails(self.cmd().args(args), Some(self.dir()));
        String::from_utf8(o.stderr).unwrap()
    }
}

/// True when sgdisk is installed (tests that need it say so when they skip).
pub fn have_sgdisk() -> bool {
    Command::new("sgdisk").arg("--version").output().is_ok()
}

/// A 16 MiB GPT image (ROOT 6 MiB, DATA 4 MiB) whose ROOT starts with a 2 MiB ext4 holding a
/// file of pseudo-random bytes, so it has chunks as well as holes, and its privacy audit is
/// clean (bytes in no filesystem would be a finding).
pub fn gpt_image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
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
    let tree = dir.join("gpt-image-tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut rng = tek_testkit::Rng::new(99);
    let bytes: Vec<u8> = (0..3 * MIB / 2).map(|_| rng.below(7) as u8).collect();
    std::fs::write(tree.join("payload.bin"), bytes).unwrap();
    let part = dir.join("gpt-image-root.ext4");
    tek_testkit::run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024", "-O", "^has_journal", "-d"])
            .arg(&tree)
            .arg(&part)
            .arg("2M"),
        None,
    );
    let mut data = std::fs::read(&img).unwrap();
    let fs = std::fs::read(&part).unwrap();
    data[MIB as usize..MIB as usize + fs.len()].copy_from_slice(&fs);
    std::fs::write(&img, data).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
    std::fs::remove_file(&part).unwrap();
    img
}
