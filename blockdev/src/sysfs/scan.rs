//! Scanning all block devices at once: [`scan`] and [`scan_disks`], and what a scan does with a
//! device it cannot read (leaves it out, says so once) or with a reader out of descriptors (fails).

use std::fs;
use std::io;
use std::path::Path;

use super::{DiskInfo, identify, is_out_of_descriptors, with_context};

/// A block device a scan left out because sysfs could not describe it.
#[derive(Debug)]
pub struct Skipped {
    /// Kernel name.
    pub name: String,
    /// Why it could not be read.
    pub error: io::Error,
}

/// What one pass over `/sys/class/block` found: the disks, and the devices it had to leave out.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whole disks present, sorted by name.
    pub disks: Vec<DiskInfo>,
    /// Devices that failed to read (one odd device must not hide the others).
    pub skipped: Vec<Skipped>,
}

/// How many skipped devices one summary line names before it says "and N more".
const SKIPPED_NAMED: usize = 4;

impl Scan {
    /// One line about the skipped devices (`None` when there are none): the count and the first
    /// few names with their errors, so a scan logs once however many devices fail.
    pub fn skipped_summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let named: Vec<String> = self
            .skipped
            .iter()
            .take(SKIPPED_NAMED)
            .map(|s| format!("{} ({})", s.name, s.error))
            .collect();
        let more = self.skipped.len().saturating_sub(SKIPPED_NAMED);
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        let n = self.skipped.len();
        let noun = if n == 1 { "device" } else { "devices" };
        Some(format!(
            "skipping {n} block {noun} sysfs could not describe: {}{tail}",
            named.join("; ")
        ))
    }
}

/// All whole disks present, sorted by name (no partitions; loop devices only when attached: a
/// size above 0 and a backing file). A device that vanishes while being read is left out;
/// devices that fail to read are left out with one warning per scan (see [`scan`]).
pub fn scan_disks(sys_root: &Path) -> io::Result<Vec<DiskInfo>> {
    let found = scan(sys_root)?;
    if let Some(line) = found.skipped_summary() {
        tracing::warn!("{line}");
    }
    Ok(found.disks)
}

/// One pass over the block devices. Fails as a whole when the reader is out of file descriptors
/// ([`is_out_of_descriptors`]): then no device can be read, and a scan that left them all out
/// would tell the watcher every present disk had gone.
pub fn scan(sys_root: &Path) -> io::Result<Scan> {
    let class = sys_root.join("class/block");
    let entries = fs::read_dir(&class).map_err(|e| with_context(e, "listing", &class))?;
    let mut out = Scan::default();
    for entry in entries {
        let entry = entry.map_err(|e| with_context(e, "listing", &class))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match identify(sys_root, &name) {
            Ok(Some(d)) => out.disks.push(d),
            Ok(None) => {}
            Err(e) if is_out_of_descriptors(&e) => return Err(e),
            Err(error) => out.skipped.push(Skipped { name, error }),
        }
    }
    out.disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_path::fake::FakeSys;

    #[test]
    fn many_unreadable_devices_make_one_summary_line() {
        let sys = FakeSys::new();
        sys.loop_disk(0, Some("/srv/good.img"), 8);
        for n in 1..=6 {
            let d = sys.loop_disk(n, Some("/srv/bad.img"), 8);
            sys.attr(&d, "dev", "seven\n");
        }
        let found = scan(&sys.root()).unwrap();
        let names: Vec<_> = found.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0"]);
        assert_eq!(found.skipped.len(), 6);
        let line = found.skipped_summary().unwrap();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("skipping 6 block devices sysfs could not describe: loop"),
            "{line}"
        );
        assert!(line.contains("dev of loop"), "{line}");
        assert!(line.ends_with("; and 2 more"), "{line}");
    }

    #[test]
    fn a_clean_scan_has_no_summary() {
        let sys = FakeSys::new();
        sys.loop_disk(0, Some("/srv/good.img"), 8);
        assert!(scan(&sys.root()).unwrap().skipped_summary().is_none());
    }

    #[test]
    fn the_errno_survives_the_context() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let e = with_context(emfile, "reading", Path::new("/sys/class/block/sda/dev"));
        assert!(is_out_of_descriptors(&e), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "reading /sys/class/block/sda/dev: {}",
                io::Error::from_raw_os_error(libc::EMFILE)
            )
        );
        let enfile = with_context(
            io::Error::from_raw_os_error(libc::ENFILE),
            "listing",
            Path::new("/sys/class/block"),
        );
        assert!(is_out_of_descriptors(&enfile));
        let eacces = with_context(
            io::Error::from_raw_os_error(libc::EACCES),
            "reading",
            Path::new("/x"),
        );
        assert!(!is_out_of_descriptors(&eacces));
        assert!(!is_out_of_descriptors(&io::Error::other("EMFILE")));
    }
}
