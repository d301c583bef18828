//! Real disk bandwidth for a loop device, for one process: the cgroup v1 blkio throttle that
//! `../shared/bench/throttle.sh` uses, as an RAII guard. Tests use it to make a step take long
//! enough that "the disk vanished during it" is certain, not a race with a fast tmpfs.
//! Throttling applies to direct I/O, which is how the imager writes and reads back.

use std::path::{Path, PathBuf};

const BLKIO: &str = "/sys/fs/cgroup/blkio";

/// A blkio cgroup holding one process, with per-device limits; dropping it moves the process
/// back to the root cgroup and removes the group.
pub struct Throttle {
    dir: PathBuf,
    pid: u32,
}

impl Throttle {
    /// Whether this machine has the cgroup v1 blkio controller.
    pub fn available() -> bool {
        Path::new(BLKIO).join("cgroup.procs").exists()
    }

    /// Limits process `pid`'s direct I/O to `dev` to `write_bps` and `read_bps` bytes per second.
    pub fn new(pid: u32, dev: &Path, write_bps: u64, read_bps: u64) -> Throttle {
        let dir = Path::new(BLKIO).join(format!("tek-e2e-{}-{pid}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let t = Throttle { dir, pid };
        let rdev = nix::sys::stat::stat(dev)
            .unwrap_or_else(|e| panic!("stat {}: {e}", dev.display()))
            .st_rdev;
        let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        t.write(
            "blkio.throttle.write_bps_device",
            &format!("{maj}:{min} {write_bps}"),
        );
        t.write(
            "blkio.throttle.read_bps_device",
            &format!("{maj}:{min} {read_bps}"),
        );
        t.write("cgroup.procs", &pid.to_string());
        t
    }

    fn write(&self, file: &str, value: &str) {
        let p = self.dir.join(file);
        std::fs::write(&p, value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", p.display()));
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Every thread of the process moves with its pid; then the group is empty.
        let _ = std::fs::write(Path::new(BLKIO).join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
