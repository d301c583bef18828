//! `tek write` stopped by a signal, and killed outright. A real `tek write` process writes a
//! store image onto a loop device; one chunk file of the image is a FIFO that nobody writes, so
//! the write stalls mid-image, deterministically, after the spans before it reached the disk.
//! Then: SIGINT / SIGTERM / SIGHUP must stop it, reset the partition table and say so, exit
//! non-zero; `kill -9` must leave no partition table and a marker the next `tek write` reports.
//! Checked with `sgdisk -p`, `wipefs` and `cmp`. Needs root (prints SKIP otherwise).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client_data::loopdev::{LoopDevice, can_attach};

use crate::common::{MIB, Tek, have_sgdisk};

fn need(test: &str) -> bool {
    if can_attach() && have_sgdisk() {
        return true;
    }
    tek_testkit::skip!("{test}: needs root, loop devices and sgdisk");
    false
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A 24 MiB GPT image, one partition ROOT, 19 MiB of incompressible data: several 4 MiB spans.
fn big_image(dir: &Path) -> PathBuf {
    let p = dir.join("big.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(24 * MIB)
        .unwrap();
    let out = sh("sgdisk", &["-n1:2048:0", "-c1:ROOT", p.to_str().unwrap()]);
    assert!(out.contains("operation has completed"), "{out}");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let data = tek_testkit::bytes(0x9E37_79B9_7F4A_7C15, 19 * MIB as usize);
    f.write_all_at(&data, MIB).unwrap();
    p
}

/// The old disk: an earlier client's partition table (ESP, ROOT, DATA) and data.
fn old_disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk");
    std::fs::write(&p, vec![0xEEu8; 32 * MIB as usize]).unwrap();
    let out = sh(
        "sgdisk",
        &[
            "-n1:2048:+4M",
            "-c1:ESP",
            "-n2:0:+8M",
            "-c2:ROOT",
            "-n3:0:0",
            "-c3:DATA",
            p.to_str().unwrap(),
        ],
    );
    assert!(out.contains("operation has completed"), "{out}");
    assert!(sh("sgdisk", &["-p", p.to_str().unwrap()]).contains("DATA"));
    p
}

struct Setup {
    tek: Tek,
    img: PathBuf,
    disk: PathBuf,
    lo: LoopDevice,
    /// The stalled chunk: its path (now a FIFO) and real bytes.
    chunk: (PathBuf, Vec<u8>),
}

fn setup() -> Setup {
    let tek = Tek::new();
    let img = big_image(tek.dir());
    tek.ok(&["image", "import", "big@1", img.to_str().unwrap()]);
    let show: serde_json::Value =
        serde_json::from_str(&tek.ok(&["image", "show", "big@1", "--json"])).unwrap();
    let last = show["manifest"]["extents"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "chunk")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = tek
        .dir()
        .join("state/store/chunks")
        .join(&last[..2])
        .join(format!("{last}.zst"));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success()
    );
    let disk = old_disk(tek.dir());
    let lo = LoopDevice::attach(&disk).unwrap();
    Setup {
        tek,
        img,
        disk,
        lo,
        chunk: (path, bytes),
    }
}

impl Setup {
    fn write_cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tek"));
        c.arg("--state")
            .arg(self.tek.dir().join("state"))
            .arg("--trusted-keys")
            .arg(self.tek.dir().join("trusted"))
            .args(["write", "big@1"])
            .arg(self.lo.path())
            .arg("--allow-unsigned")
            // The image's bytes lie in no filesystem, so its privacy audit is not clean.
            .arg("--allow-unaudited")
            .env_remove("TEK_STORE");
        c
    }

    /// Starts `tek write --yes` and waits until image data is on the disk past the first MiB
    /// (the stream then stalls at the FIFO chunk).
    fn start_write(&self) -> Child {
        let child = self
            .write_cmd()
            .arg("--yes")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let want = std::fs::read(&self.img).unwrap()[4 * MIB as usize..][..4096].to_vec();
        let f = std::fs::File::open(&self.disk).unwrap();
        let start = Instant::now();
        let mut got = vec![0u8; 4096];
        loop {
            f.read_exact_at(&mut got, 4 * MIB).unwrap();
            if got == want {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "never mid-write");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn no_partition_table(&self) {
        let dev = self.lo.path().to_str().unwrap();
        let p = sh("sgdisk", &["-p", dev]);
        for name in ["ESP", "ROOT", "DATA"] {
            assert!(!p.contains(name), "sgdisk -p still lists {name}:\n{p}");
        }
        let w = sh("wipefs", &["-n", dev]);
        assert!(!w.contains("gpt") && !w.contains("PMBR"), "wipefs -n: {w}");
        let all = std::fs::read(&self.disk).unwrap();
        assert_ne!(&all[512..520], b"EFI PART");
        assert!(all[510..512] != [0x55, 0xAA], "no protective MBR");
    }
}

fn wait_exit(child: &mut Child) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st, err);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("tek write did not stop within 20 s of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_sigterm_sighup_stop_the_write_and_reset_the_table() {
    if !need("sigint_sigterm_sighup_stop_the_write_and_reset_the_table") {
        return;
    }
    for sig in ["INT", "TERM", "HUP"] {
        let s = setup();
        let mut child = s.start_write();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let (status, err) = wait_exit(&mut child);
        eprintln!("SIG{sig}:\n{err}");
        assert!(!status.success(), "SIG{sig}: exit {status}\n{err}");
        assert!(
            status.code().is_some(),
            "SIG{sig} must be handled, not fatal: {status}"
        );
        assert!(
            err.contains(&format!("INTERRUPTED by SIG{sig} while writing")),
            "SIG{sig}: {err}"
        );
        assert!(
            err.contains("partition table reset") && err.contains("no partition table"),
            "SIG{sig}: {err}"
        );
        assert!(
            err.contains(&format!(
                "interrupted by SIG{sig}: 1 of 1 target(s) not written"
            )),
            "SIG{sig}: {err}"
        );
        s.no_partition_table();
    }
}

#[test]
fn kill9_leaves_no_table_and_the_next_write_reports_the_unfinished_one() {
    if !need("kill9_leaves_no_table_and_the_next_write_reports_the_unfinished_one") {
        return;
    }
    let s = setup();
    let mut child = s.start_write();
    child.kill().unwrap(); // SIGKILL
    let (status, _) = wait_exit(&mut child);
    assert_eq!(status.code(), None, "killed by a signal");
    s.no_partition_table();

    // The prompt (no --yes, no terminal: it lists the targets, then refuses) says so.
    let o = s.write_cmd().stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("this disk holds an unfinished tek write from 20")
            && err.contains("image big@1"),
        "{err}"
    );
    assert!(err.contains("refusing to write without --yes"), "{err}");

    // With the chunk back, the next write succeeds, says what it found, and removes the marker.
    std::fs::remove_file(&s.chunk.0).unwrap();
    std::fs::write(&s.chunk.0, &s.chunk.1).unwrap();
    let o = s.write_cmd().arg("--yes").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("before this write it held an unfinished tek write from"),
        "{err}"
    );
    let again = s.write_cmd().stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!err.contains("unfinished tek write"), "marker gone: {err}");
    let v = sh("sgdisk", &["-v", s.lo.path().to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    // The image's bytes between the GPT structures are there exactly.
    let img = std::fs::read(&s.img).unwrap();
    let all = std::fs::read(&s.disk).unwrap();
    assert!(img[34 * 512..20 * MIB as usize] == all[34 * 512..20 * MIB as usize]);
}
