//! The crate's allocation-counting test binary. The fuzz harnesses measure heap use with
//! `tek_fuzzkit::CountingAlloc`, a global allocator that counts every thread of the process, so
//! they cannot share a binary with tests running in parallel: those tests' allocations would
//! count against each input's memory budget. Every other test is in `tests/it/`.

#[path = "it/fuzz.rs"]
mod fuzz;
