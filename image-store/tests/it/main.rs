//! The crate's one integration-test binary: every test file is a module here, so the
//! crate's tests link once.

mod bombs;
mod edits;
mod hints;
mod store;
