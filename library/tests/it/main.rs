//! image-library's integration tests, against real servers on 127.0.0.1: `s3s-fs` for S3 and
//! nginx serving the bucket's directory for plain HTTP.

mod faults;
mod fixture;
mod ondemand;
mod proxy;
mod push_faults;
mod push_pull;
mod push_trust;
mod remote_errors;
mod server_lies;

use std::path::PathBuf;

/// Both server binaries, or None after saying SKIP (a failure under `CI=true`).
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let s3 = tek_testkit::servers::s3s_fs();
    let ng = tek_testkit::servers::nginx();
    if s3.is_none() {
        tek_testkit::skip(
            "needs s3s-fs (cargo install s3s-fs@0.14.1 --features binary --locked; tests/run does)",
        );
    }
    if ng.is_none() {
        tek_testkit::skip("needs nginx (apt-get install nginx)");
    }
    Some((s3?, ng?))
}

/// `cmp A B` succeeds (the bytes are identical).
pub fn same_bytes(a: &std::path::Path, b: &std::path::Path) {
    tek_testkit::run_ok(std::process::Command::new("cmp").arg(a).arg(b), None);
}
