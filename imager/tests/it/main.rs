//! The crate's one integration-test binary: every test file is a module here, so the
//! crate's tests link once.

mod claim;
mod decoded_files;
mod eligibility;
mod loop_faults;
