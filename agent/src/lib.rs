//! The tek bench agent daemon as a library: hotplug and disk identity, bays and matching
//! ([`daemon`]), jobs and their persisted journal ([`job`]), and the control socket
//! ([`server`]). The `tek` binary (`main.rs` and its private `cli/` modules) is a thin layer
//! over this library and the `image-store`, `imager` and `client-data` libraries.

#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod depot;
pub mod errors;
pub mod job;
pub mod letterhead;
pub mod library;
pub mod sample;
pub mod sample_windows;
pub mod server;
pub mod settings;
pub mod stale;
mod start;

pub use depot::Depot;
pub use start::run;
