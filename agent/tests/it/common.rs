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

/// A 16 MiB GPT image (ROOT 6 MiB, DATA 4 MiB) with 2 MiB of pseudo-random bytes in ROOT, so
/// it has chunks as well as holes.
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
    let mut data = std::fs::read(&img).unwrap();
    let mut rng = tek_testkit::Rng::new(99);
    for b in &mut data[MIB as usize..3 * MIB as usize] {
        *b = rng.below(7) as u8;
    }
    std::fs::write(&img, data).unwrap();
    img
}
