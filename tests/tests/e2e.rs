//! End-to-end tests: the real `tek` binary against real loop devices.

use tek_e2e::tek_bin;

#[test]
fn tek_prints_version() {
    let out = std::process::Command::new(tek_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tek "));
}
