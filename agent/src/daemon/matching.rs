//! Disks as the agent sees them, and which bench bay each one sits in.
//!
//! [`Disk`] is the agent's own view of a disk (built from the hotplug module's `DiskInfo`), so
//! the daemon's logic can be driven in tests by hand-made disks. A disk is in a bay when its
//! port path equals the bay's, or, for a virtual bay, when it is a loop device whose backing
//! file matches the bay's glob.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{BayConfig, Config};

/// A disk present on the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name (`sdb`, `nvme0n1`, `loop7`).
    pub name: String,
    /// Device node.
    pub dev_path: PathBuf,
    /// Bus: usb, ata, nvme, scsi, virtual, mmc, other.
    pub bus: String,
    /// Vendor, if known.
    pub vendor: Option<String>,
    /// Model, if known.
    pub model: Option<String>,
    /// Serial number, if the disk reports one.
    pub serial: Option<String>,
    /// World-wide name, if any.
    pub wwn: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size.
    pub logical_block_size: u64,
    /// Read-only at the block layer.
    pub read_only: bool,
    /// Physical port path (udev `ID_PATH` style).
    pub port_path: Option<String>,
    /// Backing file, for a loop device.
    pub loop_backing_file: Option<PathBuf>,
    /// The kernel's `diskseq`: bumped on every loop attach and media change, so it tells one
    /// attachment of a loop device from the next (same name, same backing file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskseq: Option<u64>,
}

impl Disk {
    /// Stable identity for recognising the same disk when it comes back after being pulled:
    /// serial, else WWN, else loop backing file, else (weakest) the kernel name.
    pub fn identity(&self) -> String {
        if let Some(s) = self.serial.as_ref().filter(|s| !s.trim().is_empty()) {
            return format!("serial:{}", s.trim());
        }
        if let Some(w) = self.wwn.as_ref().filter(|s| !s.trim().is_empty()) {
            return format!("wwn:{}", w.trim());
        }
        if let Some(b) = &self.loop_backing_file {
            return format!("backing:{}", clean_backing(b).display());
        }
        format!("name:{}", self.name)
    }

    /// Whether the identity is one the disk carries itself (serial or WWN), so it survives a
    /// re-plug, a new kernel name and an agent restart.
    pub fn has_hardware_identity(&self) -> bool {
        self.identity().starts_with("serial:") || self.identity().starts_with("wwn:")
    }

    /// Whether this is the very disk (the same medium) recorded by a job: same serial or WWN;
    /// for a loop device, same backing file AND same `diskseq` (a re-attach is a new disk, even
    /// to the same file: its content may have been replaced); otherwise (no identity at all)
    /// the same kernel name and, when known, `diskseq`.
    pub fn is_same_medium(&self, rec: &crate::job::DeviceRecord) -> bool {
        if rec.identity != self.identity() {
            return false;
        }
        if self.has_hardware_identity() {
            return true;
        }
        match (self.diskseq, rec.diskseq) {
            (Some(a), Some(b)) => a == b,
            // An old record or a sysfs without diskseq: the weaker name check.
            _ => self.loop_backing_file.is_none() && rec.name == self.name,
        }
    }

    /// Vendor and model in one line.
    pub fn model_line(&self) -> String {
        let parts: Vec<&str> = [self.vendor.as_deref(), self.model.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            "unknown model".into()
        } else {
            parts.join(" ")
        }
    }
}

impl From<&blockdev::sysfs::DiskInfo> for Disk {
    fn from(d: &blockdev::sysfs::DiskInfo) -> Disk {
        Disk {
            name: d.name.clone(),
            dev_path: d.dev_path.clone(),
            bus: d.bus.to_string(),
            vendor: d.vendor.clone(),
            model: d.model.clone(),
            serial: d.serial.clone(),
            wwn: d.wwn.clone(),
            size_bytes: d.size_bytes,
            logical_block_size: u64::from(d.logical_block_size),
            read_only: d.read_only,
            port_path: d.port_path.clone(),
            loop_backing_file: d.loop_backing_file.clone(),
            diskseq: d.diskseq,
        }
    }
}

/// The kernel appends " (deleted)" to a loop device's backing file name once the file was
/// unlinked; match on the original path.
fn clean_backing(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// Whether `disk` sits in `bay`.
pub fn in_bay(bay: &BayConfig, disk: &Disk) -> bool {
    if let (Some(want), Some(have)) = (&bay.port_path, &disk.port_path) {
        return want == have;
    }
    if let (Some(glob), Some(backing)) = (&bay.loop_backing, &disk.loop_backing_file) {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        return glob::Pattern::new(glob)
            .map(|p| p.matches_path_with(&clean_backing(backing), opts))
            .unwrap_or(false);
    }
    false
}

/// The bay `disk` sits in, if any (the first match in config order).
pub fn bay_of<'a>(cfg: &'a Config, disk: &Disk) -> Option<&'a BayConfig> {
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
        job: String,
        /// The failed check.
        reason: String,
    },
    /// A job is running on it.
    Running {
        /// The job.
        job: String,
    },
    /// Its job finished.
    Done {
        /// The job.
        job: String,
    },
    /// Its job failed, was cancelled, or stopped.
    Stopped {
        /// The job.
        job: String,
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

/// A hand-made 64 MiB virtual disk, for tests of the daemon and of the `tek` binary's views.
#[doc(hidden)]
pub fn test_disk(name: &str) -> Disk {
    Disk {
        name: name.into(),
        dev_path: PathBuf::from(format!("/dev/{name}")),
        bus: "virtual".into(),
        vendor: None,
        model: None,
        serial: None,
        wwn: None,
        size_bytes: 64 << 20,
        logical_block_size: 512,
        read_only: false,
        port_path: None,
        loop_backing_file: None,
        diskseq: None,
    }
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

    #[test]
    fn identity_prefers_serial_then_wwn_then_backing() {
        let mut d = test_disk("loop3");
        d.loop_backing_file = Some("/x/a.img".into());
        assert_eq!(d.identity(), "backing:/x/a.img");
        d.wwn = Some("naa.5000".into());
        assert_eq!(d.identity(), "wwn:naa.5000");
        d.serial = Some(" S123 ".into());
        assert_eq!(d.identity(), "serial:S123");
        assert_eq!(test_disk("sdz").identity(), "name:sdz");
    }

    fn record(d: &Disk) -> crate::job::DeviceRecord {
        crate::job::DeviceRecord {
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
        assert!(back.is_same_medium(&rec));
        back.serial = Some("S2".into());
        assert!(!back.is_same_medium(&rec));
    }

    #[test]
    fn same_loop_medium_needs_the_same_diskseq() {
        let mut d = test_disk("loop3");
        d.loop_backing_file = Some("/x/a.img".into());
        d.diskseq = Some(10);
        let rec = record(&d);
        assert!(d.is_same_medium(&rec), "unchanged after an agent restart");
        let mut again = d.clone();
        again.name = "loop4".into();
        assert!(again.is_same_medium(&rec), "the name does not matter");
        again.diskseq = Some(11);
        assert!(!again.is_same_medium(&rec), "re-attached: a new disk");
        again.diskseq = None;
        assert!(
            !again.is_same_medium(&rec),
            "unknown diskseq: not provably the same"
        );
    }

    #[test]
    fn status_lines() {
        let s = DiskStatus::Done { job: "j-1".into() };
        assert_eq!(s.line(), "done (j-1), safe to remove");
    }
}
