//! The crate's one integration-test binary: every test file is a module here, so the
//! crate's tests link once.

mod audit;
mod bombs;
mod custody;
mod fuzz;
mod mount;
mod privilege;
mod restore_target;
mod tar;
mod withdraw;
