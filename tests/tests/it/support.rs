//! Helpers shared by the packaging checks (`units.rs`, `udev.rs`): the repository root, running
//! tools, and skipping with a printed reason when a tool or root is missing.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

pub fn read(rel: &str) -> String {
    let p = repo().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

pub fn skip(test: &str, why: &str) {
    tek_testkit::skip!("{test}: {why}");
}

pub fn run(cmd: &mut Command) -> Output {
    tek_testkit::run(cmd)
}

/// stdout and stderr together, for tools that log diagnostics to either.
pub fn text(out: &Output) -> String {
    tek_testkit::text(out)
}
