//! Running a command in a test: on an unexpected exit status the panic shows the command, its
//! status, stdout, stderr and what is in the scratch directory, so a CI log alone explains a
//! failure (ripgrep `tests/util.rs` does the same).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `cmd` and returns its output whatever its status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {}: {e}", describe(cmd)))
}

/// Runs `cmd`, which must succeed; `scratch` (if any) is listed in the failure message.
pub fn run_ok(cmd: &mut Command, scratch: Option<&Path>) -> Output {
    let out = run(cmd);
    if !out.status.success() {
        panic!("{}", report("expected success", cmd, &out, scratch));
    }
    out
}

/// Runs `cmd`, which must fail; `scratch` (if any) is listed in the failure message.
pub fn run_fails(cmd: &mut Command, scratch: Option<&Path>) -> Output {
    let out = run(cmd);
    if out.status.success() {
        panic!("{}", report("expected failure", cmd, &out, scratch));
    }
    out
}

/// stdout and stderr as one lossy string (stdout first).
pub fn text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn report(what: &str, cmd: &Command, out: &Output, scratch: Option<&Path>) -> String {
    let mut s = format!(
        "{what}, got {}\ncommand: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        describe(cmd),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(dir) = scratch {
        let _ = write!(s, "\n--- {}\n{}", dir.display(), listing(dir));
    }
    s
}

/// Every path under `root` (recursively) with its length and modification time: equal
/// snapshots before and after a command show it changed nothing there.
pub fn snapshot(
    root: &Path,
) -> std::collections::BTreeMap<std::path::PathBuf, (u64, std::time::SystemTime)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {}: {e}", d.display()));
        for e in rd.flatten() {
            let m = e
                .metadata()
                .unwrap_or_else(|err| panic!("stat {}: {err}", e.path().display()));
            if m.is_dir() {
                stack.push(e.path());
            }
            let mtime = m.modified().expect("modification times on Linux");
            out.insert(e.path(), (m.len(), mtime));
        }
    }
    out
}

/// A recursive listing of `dir` (relative paths, sizes, symlink targets), sorted, for failure
/// messages. Unreadable entries are listed with their error instead of aborting.
pub fn listing(dir: &Path) -> String {
    let mut lines = Vec::new();
    walk(dir, dir, &mut lines, 0);
    lines.sort();
    lines.join("\n")
}

fn walk(root: &Path, dir: &Path, lines: &mut Vec<String>, depth: usize) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return lines.push(format!("{}: {e}", dir.display())),
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_symlink() => {
                let t = std::fs::read_link(&p).map(|t| t.display().to_string());
                lines.push(format!("{rel} -> {}", t.unwrap_or_else(|e| e.to_string())));
            }
            Ok(m) if m.is_dir() => {
                lines.push(format!("{rel}/"));
                if depth < 16 {
                    walk(root, &p, lines, depth + 1);
                }
            }
            Ok(m) => lines.push(format!("{rel} {}", m.len())),
            Err(e) => lines.push(format!("{rel}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_has_streams_and_listing() {
        let dir = std::env::temp_dir().join(format!("tek-testkit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"abc").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let d = dir.clone();
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            run_ok(&mut cmd, Some(&d))
        }))
        .map(|_| String::new())
        .unwrap_or_else(|p| p.downcast_ref::<String>().cloned().unwrap_or_default());
        std::fs::remove_dir_all(&dir).unwrap();
        for want in [
            "exit status: 3",
            "sh -c",
            "out\n",
            "err\n",
            "sub/\n",
            "sub/f 3",
        ] {
            assert!(msg.contains(want), "{want:?} missing in {msg}");
        }
        assert!(run_fails(&mut Command::new("false"), None).status.code() == Some(1));
    }
}
