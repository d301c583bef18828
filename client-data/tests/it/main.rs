//! The crate's one integration-test binary: every test file is a module here, so the
//! crate's tests link once.

mod audit;
mod common;
mod custody;
mod mount;
mod privilege;
mod restore_target;
mod tar;
mod withdraw;
