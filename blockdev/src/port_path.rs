//! Physical port paths, built the way udev's `path_id` builtin builds `ID_PATH`.
//!
//! A bay on the bench is a physical connector: a USB port on a given controller, a SATA port, an
//! NVMe slot. The kernel name (`sdb`) of whatever is plugged in changes from boot to boot, but the
//! chain of parent devices in sysfs does not, so we walk that chain from the block device up to the
//! PCI root and name each hop exactly like systemd's `src/udev/udev-builtin-path_id.c` does. A
//! technician can then compare our port path with `/dev/disk/by-path/` on any machine that runs
//! udev. Covered: pci, usb, ata (`ata-N.T`, and `ata-N.B.0` behind a port multiplier, plus the
//! old `ata-N` form as [`PathId::ata_compat`]), plain scsi (host numbers rebased per adapter),
//! virtio (skipped, as udev does: a virtio disk is `pci-0000:00:02.0`; udev's `by-path` symlink
//! adds a `virtio-` prefix), nvme (`-nvme-NSID`, also through a multipath `nvme-subsystem`),
//! platform and acpi. SAS, fibre channel, iSCSI and Hyper-V transports are not covered: for them
//! we return no port path rather than one udev would not agree with.
//!
//! Everything here only reads files under a sysfs root passed in, so tests build fake trees in a
//! temporary directory.

use std::fs;
use std::path::{Path, PathBuf};

/// One hop of the device chain: a sysfs directory that has a `uevent` file.
#[derive(Debug, Clone)]
pub struct Node {
    /// The directory (canonical).
    pub path: PathBuf,
    /// Its last path component (`2-3:1.0`, `host6`, `0000:00:14.0`).
    pub sysname: String,
    /// The subsystem its `subsystem` link points at (`usb`, `scsi`, `pci`, `block`).
    pub subsystem: Option<String>,
    /// `DEVTYPE` from its `uevent` file (`usb_interface`, `scsi_device`, `disk`).
    pub devtype: Option<String>,
}

/// The result of [`path_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathId {
    /// udev's `ID_PATH`, e.g. `pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0`.
    pub id_path: String,
    /// udev's `ID_PATH_ATA_COMPAT` (`pci-0000:00:1f.2-ata-1`), only for ATA disks.
    pub ata_compat: Option<String>,
}

/// Reads a sysfs attribute, trimmed; `None` when missing, unreadable or empty.
pub fn read_attr(dir: &Path, name: &str) -> Option<String> {
    let raw = fs::read(dir.join(name)).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let t = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty()).then(|| t.to_string())
}

/// The subsystem of a sysfs device directory (the name its `subsystem` link points at).
pub fn subsystem_of(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join("subsystem")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// A value from a sysfs device's `uevent` file (`DEVTYPE`, `DEVNAME`, ...).
pub fn uevent_value(dir: &Path, key: &str) -> Option<String> {
    let text = fs::read_to_string(dir.join("uevent")).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

impl Node {
    fn read(path: &Path) -> Node {
        Node {
            path: path.to_path_buf(),
            sysname: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            subsystem: subsystem_of(path),
            devtype: uevent_value(path, "DEVTYPE"),
        }
    }

    fn is(&self, subsystem: &str) -> bool {
        self.subsystem.as_deref() == Some(subsystem)
    }

    fn is_devtype(&self, devtype: &str) -> bool {
        self.devtype.as_deref() == Some(devtype)
    }
}

/// The chain of devices from `dev_dir` (canonicalised) up to, not including, `<sys_root>/devices`.
///
/// Like libudev's `sd_device_get_parent`, a directory counts as a device only when it has a
/// `uevent` file: glue directories such as `.../nvme/` or `.../block/` are skipped.
pub fn device_chain(sys_root: &Path, dev_dir: &Path) -> Vec<Node> {
    let devices = fs::canonicalize(sys_root.join("devices")).unwrap_or(sys_root.join("devices"));
    let start = fs::canonicalize(dev_dir).unwrap_or_else(|_| dev_dir.to_path_buf());
    let mut chain = Vec::new();
    let mut cur = Some(start.as_path());
    while let Some(dir) = cur {
        if !dir.starts_with(&devices) || dir == devices {
            break;
        }
        if dir.join("uevent").exists() {
            chain.push(Node::read(dir));
        }
        cur = dir.parent();
    }
    chain
}

/// The last index at or after `i` whose node is still in `subsystem`, like path_id's
/// `skip_subsystem` (which walks up while the parent stays in the same subsystem).
fn skip_subsystem(chain: &[Node], i: usize, subsystem: &str) -> usize {
    let mut j = i;
    while j + 1 < chain.len() && chain[j + 1].is(subsystem) {
        j += 1;
    }
    j
}

/// Parses `H:B:T:L` (a scsi_device's sysname).
fn parse_hbtl(name: &str) -> Option<[u32; 4]> {
    let mut it = name.split(':').map(|p| p.parse::<u32>().ok());
    let out = [it.next()??, it.next()??, it.next()??, it.next()??];
    it.next().is_none().then_some(out)
}

/// Index of the nearest `scsi_host` above `i`.
fn scsi_host_above(chain: &[Node], i: usize) -> Option<usize> {
    (i + 1..chain.len()).find(|&j| chain[j].is("scsi") && chain[j].is_devtype("scsi_host"))
}

struct Builder<'a> {
    sys_root: &'a Path,
    /// Parts in the order found (device first); joined in reverse at the end.
    parts: Vec<String>,
    compat: Vec<String>,
    ata: bool,
    supported_parent: bool,
    supported_transport: bool,
}

impl Builder<'_> {
    fn push(&mut self, part: String, compat_too: bool) {
        if compat_too {
            self.compat.push(part.clone());
        }
        self.parts.push(part);
    }

    /// path_id's `handle_scsi`: returns the index to continue from, `None` to stop.
    fn scsi(&mut self, chain: &[Node], i: usize) -> Option<usize> {
        let node = &chain[i];
        if !node.is_devtype("scsi_device") {
            return Some(i);
        }
        if let Some(id) = read_attr(&node.path, "ieee1394_id") {
            self.push(format!("ieee1394-0x{id}"), false);
            self.supported_parent = true;
            return Some(skip_subsystem(chain, i, "scsi"));
        }
        let syspath = node.path.to_string_lossy();
        if ["/rport-", "/end_device-", "/session", "/vmbus_", "/VMBUS"]
            .iter()
            .any(|t| syspath.contains(t))
        {
            // Fibre channel, SAS, iSCSI, Hyper-V: not covered (see the module docs).
            return None;
        }
        if syspath.contains("/ata") {
            return self.scsi_ata(chain, i);
        }
        self.scsi_default(chain, i)
    }

    /// path_id's `handle_scsi_ata`: `ata-PORT.TARGET`, or `ata-PORT.BUS.0` behind a port
    /// multiplier; the port number comes from the `ata_port` class device of the host's parent.
    fn scsi_ata(&mut self, chain: &[Node], i: usize) -> Option<usize> {
        let [_, bus, target, _] = parse_hbtl(&chain[i].sysname)?;
        let host = scsi_host_above(chain, i)?;
        let ata_dev = chain.get(host + 1)?;
        let port_no = read_attr(
            &ata_dev.path.join("ata_port").join(&ata_dev.sysname),
            "port_no",
        )
        .or_else(|| {
            read_attr(
                &self.sys_root.join("class/ata_port").join(&ata_dev.sysname),
                "port_no",
            )
        })?;
        if bus != 0 {
            self.parts.push(format!("ata-{port_no}.{bus}.0"));
        } else {
            self.parts.push(format!("ata-{port_no}.{target}"));
        }
        self.compat.push(format!("ata-{port_no}"));
        self.ata = true;
        Some(i)
    }

    /// path_id's `handle_scsi_default`: `scsi-H:B:T:L` with the host number rebased on the lowest
    /// `hostN` under the same adapter, so a second adapter's probe order does not shift it.
    fn scsi_default(&mut self, chain: &[Node], i: usize) -> Option<usize> {
        let host_i = scsi_host_above(chain, i)?;
        let [host, bus, target, lun] = parse_hbtl(&chain[i].sysname)?;
        let adapter_dir = chain[host_i].path.parent()?;
        let base = fs::read_dir(adapter_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("host")?.parse::<u32>().ok()
            })
            .min();
        let Some(base) = base else {
            return Some(host_i);
        };
        let host = host.checked_sub(base)?;
        self.parts.push(format!("scsi-{host}:{bus}:{target}:{lun}"));
        Some(host_i)
    }

    /// path_id's `handle_usb`: `usb-0:PORT` from an interface (`2-3:1.0`) or device (`2-3`).
    fn usb(&mut self, chain: &[Node], i: usize) -> usize {
        let node = &chain[i];
        if !node.is_devtype("usb_interface") && !node.is_devtype("usb_device") {
            return i;
        }
        let Some((_, port)) = node.sysname.split_once('-') else {
            return i;
        };
        self.parts.push(format!("usb-0:{port}"));
        skip_subsystem(chain, i, "usb")
    }
}

/// The nsid of an nvme namespace: its `nsid` attribute, else the number after `n` in its name.
fn nvme_nsid(dev: &Node) -> Option<String> {
    read_attr(&dev.path, "nsid").or_else(|| {
        let rest = dev.sysname.strip_prefix("nvme")?;
        let (_, ns) = rest.rsplit_once('n')?;
        ns.parse::<u32>().ok().map(|n| n.to_string())
    })
}

/// Builds udev's `ID_PATH` for the device at `dev_dir` (a `/sys/class/block/X` entry or its
/// target), or `None` when path_id would not give one (virtual devices, unknown transports).
pub fn path_id(sys_root: &Path, dev_dir: &Path) -> Option<PathId> {
    let mut chain = device_chain(sys_root, dev_dir);
    let dev = chain.first()?.clone();
    let mut b = Builder {
        sys_root,
        parts: Vec::new(),
        compat: Vec::new(),
        ata: false,
        supported_parent: false,
        supported_transport: false,
    };
    let mut i = 0;
    while i < chain.len() {
        let sysname = chain[i].sysname.clone();
        match chain[i].subsystem.as_deref() {
            Some("scsi") => {
                b.supported_transport = true;
                match b.scsi(&chain, i) {
                    Some(next) => i = next,
                    None => break,
                }
            }
            Some("usb") => {
                b.supported_transport = true;
                i = b.usb(&chain, i);
            }
            Some("pci") => {
                b.push(format!("pci-{sysname}"), true);
                b.supported_parent = true;
                i = skip_subsystem(&chain, i, "pci");
            }
            Some("platform") => {
                b.push(format!("platform-{sysname}"), true);
                b.supported_parent = true;
                b.supported_transport = true;
                i = skip_subsystem(&chain, i, "platform");
            }
            Some("acpi") => {
                b.push(format!("acpi-{sysname}"), true);
                b.supported_parent = true;
                i = skip_subsystem(&chain, i, "acpi");
            }
            Some("virtio") => {
                b.supported_transport = true;
                i = skip_subsystem(&chain, i, "virtio");
            }
            Some(sub @ ("nvme" | "nvme-subsystem")) => {
                if let Some(nsid) = nvme_nsid(&dev) {
                    b.push(format!("nvme-{nsid}"), true);
                    if sub == "nvme-subsystem" {
                        // Native nvme multipathing puts the namespace under
                        // /sys/devices/virtual/nvme-subsystem/; continue from the first
                        // controller (`nvme0` for `nvme0n1`) like path_id's
                        // find_real_nvme_parent does.
                        let rest = dev.sysname.strip_prefix("nvme")?;
                        let digits: String =
                            rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        let ctrl = sys_root.join("class/nvme").join(format!("nvme{digits}"));
                        chain = device_chain(sys_root, &ctrl);
                        i = 0;
                        if chain.is_empty() {
                            break;
                        }
                    }
                    b.supported_parent = true;
                    b.supported_transport = true;
                    i = skip_subsystem(&chain, i, "nvme");
                }
            }
            _ => {}
        }
        i += 1;
    }
    if b.parts.is_empty() || !b.supported_parent {
        return None;
    }
    if dev.is("block") && !b.supported_transport {
        return None;
    }
    let join = |parts: &[String]| parts.iter().rev().cloned().collect::<Vec<_>>().join("-");
    Some(PathId {
        id_path: join(&b.parts),
        ata_compat: b.ata.then(|| join(&b.compat)),
    })
}

/// Test support: fake sysfs trees in a temporary directory.
#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::fake::FakeSys;
    use super::*;

    #[test]
    fn usb_stick_gets_udev_id_path() {
        let sys = FakeSys::new();
        let d = sys.usb_disk("sdb");
        let id = path_id(&sys.root(), &d).unwrap();
        assert_eq!(id.id_path, "pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0");
        assert_eq!(id.ata_compat, None);
        // Resolving through the class link gives the same answer.
        let via_class = path_id(&sys.root(), &sys.root().join("class/block/sdb")).unwrap();
        assert_eq!(via_class, id);
    }

    #[test]
    fn sata_disk_uses_ata_port_number_and_target() {
        let sys = FakeSys::new();
        // Global print id ata3, but it is port 2 of its controller: udev names the port.
        let d = sys.sata_disk("sda", 3, 2, "2:0:0:0");
        let id = path_id(&sys.root(), &d).unwrap();
        assert_eq!(id.id_path, "pci-0000:00:1f.2-ata-2.0");
        assert_eq!(id.ata_compat.as_deref(), Some("pci-0000:00:1f.2-ata-2"));
    }

    #[test]
    fn sata_disk_behind_port_multiplier() {
        let sys = FakeSys::new();
        let d = sys.sata_disk("sdc", 5, 1, "4:3:0:0");
        let id = path_id(&sys.root(), &d).unwrap();
        assert_eq!(id.id_path, "pci-0000:00:1f.2-ata-1.3.0");
    }

    #[test]
    fn ata_port_found_through_class_when_not_nested() {
        let sys = FakeSys::new();
        let d = sys.sata_disk("sda", 1, 1, "0:0:0:0");
        // Move the ata_port device out of the ata dir and expose it only through the class.
        let pci = sys.root().join("devices/pci0000:00/0000:00:1f.2");
        fs::rename(pci.join("ata1/ata_port/ata1"), pci.join("ata1-port")).unwrap();
        sys.class_link("ata_port", "ata1", &pci.join("ata1-port"));
        assert_eq!(
            path_id(&sys.root(), &d).unwrap().id_path,
            "pci-0000:00:1f.2-ata-1.0"
        );
    }

    #[test]
    fn nvme_namespace() {
        let sys = FakeSys::new();
        let d = sys.nvme_disk();
        let id = path_id(&sys.root(), &d).unwrap();
        // Only the innermost PCI device counts (bridges are skipped).
        assert_eq!(id.id_path, "pci-0000:3d:00.0-nvme-1");
    }

    #[test]
    fn nvme_multipath_subsystem_uses_first_controller() {
        let sys = FakeSys::new();
        sys.nvme_disk();
        let ctrl = sys
            .root()
            .join("devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0");
        sys.class_link("nvme", "nvme0", &ctrl);
        sys.device(
            "virtual/nvme-subsystem/nvme-subsys0",
            Some("nvme-subsystem"),
            "",
        );
        let ns = sys.disk("virtual/nvme-subsystem/nvme-subsys0/nvme0n2", "259:1", 100);
        sys.attr(&ns, "nsid", "2\n");
        assert_eq!(
            path_id(&sys.root(), &ns).unwrap().id_path,
            "pci-0000:3d:00.0-nvme-2"
        );
    }

    #[test]
    fn virtio_disk_is_its_pci_function() {
        let sys = FakeSys::new();
        sys.device("pci0000:00", None, "");
        sys.device("pci0000:00/0000:00:02.0", Some("pci"), "");
        sys.device("pci0000:00/0000:00:02.0/virtio1", Some("virtio"), "");
        let d = sys.disk("pci0000:00/0000:00:02.0/virtio1/block/vda", "254:0", 10);
        assert_eq!(
            path_id(&sys.root(), &d).unwrap().id_path,
            "pci-0000:00:02.0"
        );
    }

    #[test]
    fn virtio_scsi_rebases_host_number() {
        let sys = FakeSys::new();
        let v = "pci0000:00/0000:00:03.0/virtio2";
        sys.device("pci0000:00", None, "");
        sys.device("pci0000:00/0000:00:03.0", Some("pci"), "");
        sys.device(v, Some("virtio"), "");
        // Two hosts on this adapter; the disk sits on the second one.
        sys.device(&format!("{v}/host2"), Some("scsi"), "DEVTYPE=scsi_host\n");
        sys.device(&format!("{v}/host3"), Some("scsi"), "DEVTYPE=scsi_host\n");
        sys.device(
            &format!("{v}/host3/target3:0:1"),
            Some("scsi"),
            "DEVTYPE=scsi_target\n",
        );
        sys.device(
            &format!("{v}/host3/target3:0:1/3:0:1:0"),
            Some("scsi"),
            "DEVTYPE=scsi_device\n",
        );
        let d = sys.disk(
            &format!("{v}/host3/target3:0:1/3:0:1:0/block/sdd"),
            "8:48",
            10,
        );
        assert_eq!(
            path_id(&sys.root(), &d).unwrap().id_path,
            "pci-0000:00:03.0-scsi-1:0:1:0"
        );
    }

    #[test]
    fn loop_device_has_no_port_path() {
        let sys = FakeSys::new();
        let d = sys.loop_disk(3, Some("/tmp/x.img"), 2048);
        assert_eq!(path_id(&sys.root(), &d), None);
    }

    #[test]
    fn sas_transport_is_not_guessed() {
        let sys = FakeSys::new();
        let p = "pci0000:00/0000:01:00.0/host0/port-0:0/end_device-0:0";
        sys.device("pci0000:00", None, "");
        sys.device("pci0000:00/0000:01:00.0", Some("pci"), "");
        sys.device(
            "pci0000:00/0000:01:00.0/host0",
            Some("scsi"),
            "DEVTYPE=scsi_host\n",
        );
        sys.device(
            &format!("{p}/target0:0:0"),
            Some("scsi"),
            "DEVTYPE=scsi_target\n",
        );
        sys.device(
            &format!("{p}/target0:0:0/0:0:0:0"),
            Some("scsi"),
            "DEVTYPE=scsi_device\n",
        );
        let d = sys.disk(&format!("{p}/target0:0:0/0:0:0:0/block/sde"), "8:64", 10);
        assert_eq!(path_id(&sys.root(), &d), None);
    }

    #[test]
    fn hbtl_parsing_rejects_garbage() {
        assert_eq!(parse_hbtl("6:0:0:0"), Some([6, 0, 0, 0]));
        assert_eq!(parse_hbtl("6:0:0"), None);
        assert_eq!(parse_hbtl("6:0:0:0:1"), None);
        assert_eq!(parse_hbtl("a:0:0:0"), None);
    }
}
