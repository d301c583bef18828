//! image-store's integration tests: import, edits, hints, the store's read paths.
//!
//! One test binary per crate (one link, one process that runs every test in parallel).

mod audit;
mod audit_remnants;
mod audit_unread;
mod bombs;
mod edits;
mod hints;
mod partitions;
mod progress;
mod store;
