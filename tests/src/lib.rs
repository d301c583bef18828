//! Support for the end-to-end tests: scratch directories, running the `tek` binary, loop devices
//! (re-exported from `client-data`'s RAII helper).

use std::path::PathBuf;

pub use client_data::loopdev::{LoopDevice, LoopOptions, can_attach};

/// Path of the `tek` binary built in this workspace (`TEK_BIN` overrides). The test command is
/// `cargo build --workspace && cargo test --workspace`, so it exists beside the test binary.
pub fn tek_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TEK_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/e2e-HASH -> target/<profile>/tek
    let exe = std::env::current_exe().expect("locating the test binary");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary in target/<profile>/deps");
    let bin = dir.join("tek");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}
