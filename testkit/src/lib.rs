//! tek's test kit, shared by every crate's integration tests (as a dev-dependency) and by the
//! fuzz driver. It is a leaf crate (std and nix only), so `image-store`'s tests can use it without
//! building the agent; the end-to-end `Bench` (which needs the agent and its sample image) lives
//! in `tek-e2e`'s library on top of this kit.
//!
//! - [`run`]: a command runner whose failure message carries the command, its status, stdout,
//!   stderr and the scratch directory's listing (after ripgrep's `tests/util.rs`).
//! - [`skip`], [`require_root`], [`require_tool`]: a test that cannot run says `SKIP` and why;
//!   under `CI=true` a skip panics, so CI can never pass by skipping.
//! - [`browser`]: printing an HTML document with headless Chromium: pages, widths, screenshot.
//! - [`gpt`]: GPT image builders (sgdisk, mkfs.ext4 at a partition's offset).
//! - [`Rng`], [`bytes`]: the one seeded, reproducible byte generator.

#![forbid(unsafe_code)]

pub mod browser;
pub mod gpt;
mod rng;
mod run;
pub mod servers;
mod skip;
pub mod tar;

pub use rng::{Rng, bytes};
pub use run::{listing, run, run_fails, run_ok, snapshot, text};
pub use skip::{have, in_ci, require, require_root, require_tool, skip};

/// One MiB.
pub const MIB: u64 = 1 << 20;
