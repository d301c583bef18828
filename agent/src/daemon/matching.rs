//! Which bench bay a disk sits in, whether it is the medium a job recorded, and what the
//! agent is doing with it.
//!
//! Disks are [`blockdev::DiskInfo`]s as the hotplug watcher read them (identity:
//! [`DiskInfo::identity`]), so the daemon's logic is driven in tests by hand-made ones
//! ([`test_disk`]). A disk is in a bay when its port path equals the bay's, or, for a virtual
//! bay, when it is a loop device whose backing file matches the bay's glob.

use blockdev::DiskInfo;
use serde::{Deserialize, Serialize};

use crate::config::{BayConfig, Config};
use crate::job::{DeviceRecord, JobId};

/// Whether `disk` is the very disk (the same medium) recorded by a job: same serial or WWN;
/// for a loop device, same backing file AND same `diskseq` (a re-attach is a new disk, even to
/// the same file: its content may have been replaced); otherwise (no identity at all) the same
/// kernel name and, when known, `diskseq`.
pub fn is_same_medium(disk: &DiskInfo, rec: &DeviceRecord) -> bool {
    if rec.identity != disk.identity() {
        return false;
    }
    if disk.has_hardware_identity() {
        return true;
    }
    match (disk.diskseq, rec.diskseq) {
        (Some(a), Some(b)) => a == b,
        // An old record or a sysfs without diskseq: the weaker name check.
        _ => disk.loop_backing_file.is_none() && rec.name == disk.name,
    }
}

/// Whether `disk` sits in `bay`.
pub fn in_bay(bay: &BayConfig, disk: &DiskInfo) -> bool {
    if let (Some(want), Some(have)) = (&bay.port_path, &disk.port_path) {
        return want == have;
    }
    if let (Some(glob), Some(backing)) = (&bay.loop_backing, disk.backing_file()) {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        return glob::Pattern::new(glob)
            .map(|p| p.matches_path_with(&backing, opts))
            .unwrap_or(false);
    }
    false
}

/// The bay `disk` sits in, if any (the first match in config order).
pub fn bay_of<'a>(cfg: &'a Config, disk: &DiskInfo) -> Option<&'a BayConfig> {
    cfg.bays.iter().find(|b| in_bay(b, disk))
}

/// What the agent is doing with a disk, as shown in `tek status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DiskStatus {
    /// Not in a bay and no job expects it: never touched.
    Ignored {
        /// Why.
        reason: String,
    },
    /// In a bay with nothing to do.
    Waiting {
        /// Why.
        reason: String,
    },
    /// A job wanted it but a check failed; nothing was written.
    Refused {
        /// The job that wanted it.
        job: JobId,
        /// The failed check.
        reason: String,
    },
    /// A job is running on it.
    Running {
        /// The job.
        job: JobId,
    },
    /// Its job finished.
    Done {
        /// The job.
        job: JobId,
    },
    /// Its job failed, was cancelled, or stopped.
    Stopped {
        /// The job.
        job: JobId,
        /// The job's final state and error.
        reason: String,
    },
}

impl DiskStatus {
    /// One line for a technician.
    pub fn line(&self) -> String {
        match self {
            DiskStatus::Ignored { reason } => format!("ignored: {reason}"),
            DiskStatus::Waiting { reason } => reason.clone(),
            DiskStatus::Refused { job, reason } => format!("refused for {job}: {reason}"),
            DiskStatus::Running { job } => format!("running {job}"),
            DiskStatus::Done { job } => format!("done ({job}), safe to remove"),
            DiskStatus::Stopped { job, reason } => format!("{job}: {reason}"),
        }
    }
}

/// A hand-made 64 MiB virtual disk, for tests of the daemon and of the `tek` binary's views
/// (`blockdev::DiskInfo::hand_made`).
#[doc(hidden)]
pub fn test_disk(name: &str) -> DiskInfo {
    DiskInfo::hand_made(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            "[[bay]]\nname = \"usb\"\nport_path = \"pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0\"\n\
             [[bay]]\nname = \"v\"\nloop_backing = \"/tmp/tek-t1/bay-*.img\"\n",
        )
        .unwrap()
    }

    #[test]
    fn matches_by_port_path() {
        let mut d = test_disk("sdb");
        d.port_path = Some("pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0".into());
        assert_eq!(bay_of(&cfg(), &d).unwrap().name, "usb");
        d.port_path = Some("pci-0000:00:14.0-usb-0:4:1.0-scsi-0:0:0:0".into());
        assert!(bay_of(&cfg(), &d).is_none());
    }

    #[test]
    fn matches_loop_backing_glob_only_for_own_files() {
        let mut d = test_disk("loop3");
        d.loop_backing_file = Some("/tmp/tek-t1/bay-1.img".into());
        assert_eq!(bay_of(&cfg(), &d).unwrap().name, "v");
        d.loop_backing_file = Some("/tmp/tek-t1/bay-1.img (deleted)".into());
        assert!(bay_of(&cfg(), &d).is_some());
        d.loop_backing_file = Some("/tmp/tek-t1/sub/bay-1.img".into());
        assert!(bay_of(&cfg(), &d).is_none(), "* must not cross /");
        d.loop_backing_file = Some("/tmp/other/bay-1.img".into());
        assert!(bay_of(&cfg(), &d).is_none());
    }

    fn record(d: &DiskInfo) -> DeviceRecord {
        DeviceRecord {
            name: d.name.clone(),
            dev_path: d.dev_path.display().to_string(),
            identity: d.identity(),
            bus: d.bus.clone(),
            model: d.model_line(),
            serial: d.serial.clone(),
            wwn: d.wwn.clone(),
            size_bytes: d.size_bytes,
            bay: None,
            diskseq: d.diskseq,
        }
    }

    #[test]
    fn same_medium_by_serial_whatever_the_name() {
        let mut d = test_disk("sdb");
        d.serial = Some("S1".into());
        let rec = record(&d);
        let mut back = test_disk("sdc");
        back.serial = Some("S1".into());
        back.diskseq = Some(99);
        assert!(is_same_medium(&back, &rec));
        back.serial = Some("S2".into());
        assert!(!is_same_medium(&back, &rec));
    }

    #[test]
    fn same_loop_medium_needs_the_same_diskseq() {
        let mut d = test_disk("loop3");
        d.loop_backing_file = Some("/x/a.img".into());
        d.diskseq = Some(10);
        let rec = record(&d);
        assert!(is_same_medium(&d, &rec), "unchanged after an agent restart");
        let mut again = d.clone();
        again.name = "loop4".into();
        assert!(is_same_medium(&again, &rec), "the name does not matter");
        again.diskseq = Some(11);
        assert!(!is_same_medium(&again, &rec), "re-attached: a new disk");
        again.diskseq = None;
        assert!(
            !is_same_medium(&again, &rec),
            "unknown diskseq: not provably the same"
        );
    }

    #[test]
    fn status_lines() {
        let s = DiskStatus::Done {
            job: "j-1".parse().unwrap(),
        };
        assert_eq!(s.line(), "done (j-1), safe to remove");
    }
}
