//! The tek bench agent and command line: the daemon (hotplug, bays, jobs, persisted job journal,
//! control socket) and one module per `tek` subcommand under [`cli`], each a thin layer over the
//! `image-store`, `imager` and `client-data` libraries.

pub mod access;
pub mod admission;
pub mod bay;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod demo;
pub mod depot;
pub mod job;
pub mod journal;
pub mod memory;
pub mod protocol;
pub mod report;
pub mod runner;
pub mod sample;
pub mod server;
pub mod settings;
pub mod shared_write;
pub mod stale;
pub mod status;
pub mod steps;

pub use depot::Depot;
