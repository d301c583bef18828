//! Who a disk is, across re-plugs, kernel names and restarts: [`DiskInfo::identity`] (serial >
//! WWN > loop backing file > kernel name) and the line a technician reads for it.

use std::path::{Path, PathBuf};

use crate::sysfs::{Bus, DiskInfo};

impl DiskInfo {
    /// A hand-made 64 MiB virtual disk at `/dev/NAME` with no identity but its name (tests of
    /// the code that consumes disks, the demo's plain-file disk): change the fields that matter.
    pub fn hand_made(name: &str) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            dev_path: PathBuf::from(format!("/dev/{name}")),
            major: 0,
            minor: 0,
            bus: Bus::Virtual,
            vendor: None,
            model: None,
            serial: None,
            wwn: None,
            size_bytes: 64 << 20,
            logical_block_size: 512,
            physical_block_size: 512,
            rotational: false,
            removable: false,
            read_only: false,
            port_path: None,
            loop_backing_file: None,
            diskseq: None,
        }
    }

    /// Stable identity for recognising the same disk when it comes back after being pulled:
    /// `serial:S`, else `wwn:W`, else `backing:FILE` (a loop device), else (weakest)
    /// `name:NAME`.
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
        let id = self.identity();
        id.starts_with("serial:") || id.starts_with("wwn:")
    }

    /// Vendor and model in one line (`unknown model` without either).
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

    /// The loop backing file as it was attached (see [`clean_backing`]).
    pub fn backing_file(&self) -> Option<PathBuf> {
        self.loop_backing_file.as_deref().map(clean_backing)
    }
}

/// The kernel appends " (deleted)" to a loop device's backing file name once the file was
/// unlinked; this is the original path.
pub fn clean_backing(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str) -> DiskInfo {
        DiskInfo::hand_made(name)
    }

    #[test]
    fn identity_prefers_serial_then_wwn_then_backing() {
        let mut d = disk("loop3");
        d.loop_backing_file = Some("/x/a.img (deleted)".into());
        assert_eq!(d.identity(), "backing:/x/a.img");
        assert!(!d.has_hardware_identity());
        d.wwn = Some("naa.5000".into());
        assert_eq!(d.identity(), "wwn:naa.5000");
        d.serial = Some(" S123 ".into());
        assert_eq!(d.identity(), "serial:S123");
        assert!(d.has_hardware_identity());
        assert_eq!(disk("sdz").identity(), "name:sdz");
    }

    #[test]
    fn model_line_joins_vendor_and_model() {
        let mut d = disk("sdb");
        assert_eq!(d.model_line(), "unknown model");
        d.vendor = Some("ATA ".into());
        d.model = Some(" Samsung SSD".into());
        assert_eq!(d.model_line(), "ATA Samsung SSD");
    }
}
