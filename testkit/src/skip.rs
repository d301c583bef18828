//! Skipping a test that cannot run here (no root, no loop devices, a tool missing). The test
//! says `SKIP <test>: <why>` on stderr and returns; under `CI=true` a skip panics instead: CI runs
//! as root with every tool installed, so a skip there means a broken CI machine, and CI must
//! never pass by skipping. The test's name is the test thread's name (libtest names each test's
//! thread after the test).

use std::process::Command;

/// True when the `CI` environment variable is `true` (how CI runs `.ci/run`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that the current test is skipped because of `why`; panics under `CI=true`.
/// The [`skip!`](crate::skip!) macro takes a format string instead.
pub fn skip(why: &str) {
    let t = std::thread::current();
    let test = t.name().unwrap_or("this test");
    if in_ci() {
        panic!("SKIP {test}: {why}; under CI=true a skip is a failure");
    }
    eprintln!("SKIP {test}: {why}");
}

/// [`skip()`](crate::skip()) with a format string: `tek_testkit::skip!("needs {tool}")`.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {
        $crate::skip(&format!($($arg)*))
    };
}

/// True when `ok`; otherwise [`skip()`]s with `why` and returns false:
/// `if !require(can_attach(), "needs loop devices") { return; }`.
pub fn require(ok: bool, why: &str) -> bool {
    if !ok {
        skip(why);
    }
    ok
}

/// True when running as root; otherwise skips the test.
pub fn require_root() -> bool {
    require(nix::unistd::geteuid().is_root(), "needs root")
}

/// True when `tool` runs here; otherwise skips the test.
pub fn require_tool(tool: &str) -> bool {
    require(have(tool), &format!("needs {tool}"))
}

/// True when `tool` can be started (`tool --version` runs, whatever its exit status).
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_passes_through_and_have_finds_sh() {
        assert!(require(true, "unused"));
        assert!(have("sh"));
        assert!(!have("tek-no-such-tool-here"));
    }
}
