//! Disks as sysfs describes them: which whole disks are present and what each one is.
//!
//! [`scan_disks`] lists `/sys/class/block` and [`identify`] reads one entry: bus, vendor, model,
//! serial, WWN, size, block sizes, flags, the udev-style port path (see [`crate::portpath`]) and,
//! for a loop device, its backing file. Partitions, hidden nvme paths, drives without media
//! (size 0) and detached loop devices are not disks for us. Everything is read below a sysfs root
//! passed in, so tests use fake trees; the agent passes `/sys`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::portpath::{self, Node, read_attr};

/// How a disk is attached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    /// USB mass storage or UAS (a USB dock or stick; the SCSI layer above it does not count).
    Usb,
    /// SATA/PATA through libata.
    Ata,
    /// NVMe.
    Nvme,
    /// Any other SCSI transport (SAS HBA, virtio-scsi, iSCSI, ...).
    Scsi,
    /// Loop, zram, device-mapper and other devices under `/sys/devices/virtual`.
    Virtual,
    /// Anything else, by subsystem name (`virtio` for virtio-blk, `mmc` for SD cards).
    Other(String),
}

impl std::fmt::Display for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bus::Usb => f.write_str("usb"),
            Bus::Ata => f.write_str("ata"),
            Bus::Nvme => f.write_str("nvme"),
            Bus::Scsi => f.write_str("scsi"),
            Bus::Virtual => f.write_str("virtual"),
            Bus::Other(name) => f.write_str(name),
        }
    }
}

impl std::str::FromStr for Bus {
    type Err = std::convert::Infallible;

    /// Parses a bus name as written in a config (`usb`, `ata` or `sata`, `nvme`, `scsi`,
    /// `virtual` or `loop`); anything else is `Other(name)`, so `virtio` round-trips.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "usb" => Bus::Usb,
            "ata" | "sata" => Bus::Ata,
            "nvme" => Bus::Nvme,
            "scsi" => Bus::Scsi,
            "virtual" | "loop" => Bus::Virtual,
            other => Bus::Other(other.to_string()),
        })
    }
}

/// One whole disk as identified from sysfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Kernel name: `sda`, `nvme0n1`, `loop3`.
    pub name: String,
    /// Device node, `/dev/NAME`.
    pub dev_path: PathBuf,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// How it is attached.
    pub bus: Bus,
    /// SCSI INQUIRY vendor (`ATA` for libata disks), if any.
    pub vendor: Option<String>,
    /// Model string.
    pub model: Option<String>,
    /// Serial number (USB device serial for USB disks).
    pub serial: Option<String>,
    /// World wide name: `0x5002538f...` for NAA ids, `eui.`/`nvme.` ids as the kernel gives them.
    pub wwn: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block (sector) size in bytes.
    pub logical_block_size: u32,
    /// Physical block size in bytes.
    pub physical_block_size: u32,
    /// Spinning disk.
    pub rotational: bool,
    /// Removable media (card readers, some sticks).
    pub removable: bool,
    /// Read-only (write-protect switch, `losetup -r`).
    pub read_only: bool,
    /// udev `path_id` `ID_PATH` of the physical port, e.g.
    /// `pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0`; `None` for virtual devices.
    pub port_path: Option<String>,
    /// For a loop device, the file it is attached to.
    pub loop_backing_file: Option<PathBuf>,
}

/// A disk plus its kernel `diskseq` (a counter the kernel bumps on every attach and media change;
/// the hotplug watcher uses it to tell a re-attached loop device from the same one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identified {
    pub info: DiskInfo,
    pub diskseq: Option<u64>,
}

fn with_context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// All whole disks present, sorted by name (no partitions; loop devices only when attached: size
/// > 0 and a backing file). A device that vanishes while being read is left out.
pub fn scan_disks(sys_root: &Path) -> io::Result<Vec<DiskInfo>> {
    Ok(scan(sys_root)?.into_iter().map(|d| d.info).collect())
}

pub(crate) fn scan(sys_root: &Path) -> io::Result<Vec<Identified>> {
    let class = sys_root.join("class/block");
    let entries = fs::read_dir(&class).map_err(|e| with_context(e, "listing", &class))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| with_context(e, "listing", &class))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match identify_full(sys_root, &name) {
            Ok(Some(d)) => out.push(d),
            Ok(None) => {}
            // One odd device must not hide the others from the bench.
            Err(e) => tracing::warn!("skipping block device {name}: {e}"),
        }
    }
    out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Ok(out)
}

/// One disk by kernel name; `Ok(None)` if it is absent, a partition, or a detached loop device.
pub fn identify(sys_root: &Path, name: &str) -> io::Result<Option<DiskInfo>> {
    Ok(identify_full(sys_root, name)?.map(|d| d.info))
}

/// Reads a number attribute that must be there (`NotFound` propagates: the device went away).
fn read_num(dir: &Path, attr: &str, name: &str) -> io::Result<u64> {
    let path = dir.join(attr);
    let text = fs::read_to_string(&path).map_err(|e| with_context(e, "reading", &path))?;
    text.trim().parse().map_err(|_| {
        invalid(format!(
            "parsing {attr} of {name}: expected a number, found {:?}",
            text.trim()
        ))
    })
}

fn opt_num(dir: &Path, attr: &str) -> Option<u64> {
    read_attr(dir, attr)?.parse().ok()
}

fn flag(dir: &Path, attr: &str) -> bool {
    read_attr(dir, attr).as_deref() == Some("1")
}

pub(crate) fn identify_full(sys_root: &Path, name: &str) -> io::Result<Option<Identified>> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("identifying disk {name:?}: not a kernel block device name"),
        ));
    }
    let link = sys_root.join("class/block").join(name);
    let dir = match fs::canonicalize(&link) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_context(e, "resolving", &link)),
    };
    match read_disk(sys_root, name, &dir) {
        // Removed between listing and reading: absent, not an error.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        other => other,
    }
}

fn read_disk(sys_root: &Path, name: &str, dir: &Path) -> io::Result<Option<Identified>> {
    if dir.join("partition").exists() || flag(dir, "hidden") {
        return Ok(None);
    }
    let dev_file = dir.join("dev");
    let dev = fs::read_to_string(&dev_file).map_err(|e| with_context(e, "reading", &dev_file))?;
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| {
            invalid(format!(
                "parsing dev of {name}: expected MAJOR:MINOR, found {:?}",
                dev.trim()
            ))
        })?;
    // `size` is always in 512-byte units, whatever the logical block size.
    let size_bytes = read_num(dir, "size", name)?.saturating_mul(512);
    let backing = read_attr(dir, "loop/backing_file").map(PathBuf::from);
    if size_bytes == 0 {
        // A drive without media, or a loop device with nothing attached.
        return Ok(None);
    }
    let chain = portpath::device_chain(sys_root, dir);
    let devices = sys_root.join("devices");
    let devices = fs::canonicalize(&devices).map_err(|e| with_context(e, "resolving", &devices))?;
    let is_virtual = dir
        .strip_prefix(&devices)
        .is_ok_and(|rel| rel.starts_with("virtual"));
    if name.starts_with("loop") && is_virtual && backing.is_none() {
        return Ok(None);
    }
    let device = dir.join("device");
    let device_is_scsi = portpath::subsystem_of(&device).as_deref() == Some("scsi");
    let usb_device = chain.iter().find(|n| {
        n.subsystem.as_deref() == Some("usb") && n.devtype.as_deref() == Some("usb_device")
    });
    let serial = usb_device
        .and_then(|n| read_attr(&n.path, "serial"))
        .or_else(|| read_attr(dir, "serial"))
        .or_else(|| read_attr(&device, "serial"))
        .or_else(|| vpd_serial(&device));
    let wwn = read_attr(dir, "wwid")
        .or_else(|| read_attr(&device, "wwid"))
        .and_then(|w| normalize_wwid(&w));
    let info = DiskInfo {
        name: name.to_string(),
        dev_path: PathBuf::from("/dev").join(name),
        major,
        minor,
        bus: bus_of(&chain, is_virtual),
        vendor: device_is_scsi
            .then(|| read_attr(&device, "vendor"))
            .flatten(),
        model: read_attr(&device, "model"),
        serial,
        wwn,
        size_bytes,
        logical_block_size: opt_num(dir, "queue/logical_block_size").unwrap_or(512) as u32,
        physical_block_size: opt_num(dir, "queue/physical_block_size").unwrap_or(512) as u32,
        rotational: flag(dir, "queue/rotational"),
        removable: flag(dir, "removable"),
        read_only: flag(dir, "ro"),
        port_path: if is_virtual {
            None
        } else {
            portpath::path_id(sys_root, dir).map(|p| p.id_path)
        },
        loop_backing_file: backing,
    };
    Ok(Some(Identified {
        info,
        diskseq: opt_num(dir, "diskseq"),
    }))
}

/// The bus, from the subsystems in the device chain (nearest transport wins over scsi: a USB
/// dock's disk is also a scsi device).
fn bus_of(chain: &[Node], is_virtual: bool) -> Bus {
    let has = |s: &str| chain.iter().any(|n| n.subsystem.as_deref() == Some(s));
    if has("usb") {
        Bus::Usb
    } else if has("nvme") || has("nvme-subsystem") {
        Bus::Nvme
    } else if is_virtual {
        Bus::Virtual
    } else if has("scsi") {
        let behind_libata = chain.iter().any(|n| {
            n.sysname
                .strip_prefix("ata")
                .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
        });
        if behind_libata { Bus::Ata } else { Bus::Scsi }
    } else {
        // First subsystem above the block device itself: virtio, mmc, ...
        chain
            .iter()
            .skip(1)
            .find_map(|n| n.subsystem.clone())
            .map(Bus::Other)
            .unwrap_or_else(|| Bus::Other("unknown".into()))
    }
}

/// The serial from SCSI VPD page 0x80 (unit serial number): a 4-byte header whose bytes 2..4
/// hold the length, then space-padded ASCII.
fn vpd_serial(device: &Path) -> Option<String> {
    let raw = fs::read(device.join("vpd_pg80")).ok()?;
    if raw.len() < 4 || raw[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
    let body = raw.get(4..4 + len).unwrap_or(&raw[4..]);
    let s = String::from_utf8_lossy(body);
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// Turns the kernel's `wwid` into a WWN: `naa.5002538f...` becomes `0x5002538f...` (how udev's
/// `ID_WWN` spells it); `eui.`/`nvme.` ids stay; vendor-made `t10.` ids are not WWNs.
fn normalize_wwid(wwid: &str) -> Option<String> {
    let w = wwid.trim();
    if let Some(naa) = w.strip_prefix("naa.") {
        Some(format!("0x{}", naa.to_ascii_lowercase()))
    } else if w.starts_with("t10.") || w.is_empty() {
        None
    } else {
        Some(w.to_string())
    }
}

/// A byte count in binary units with one decimal: `64.0 MiB`, `931.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A readable one-line description for `tek bays --discover`:
/// `sdb  usb  SanDisk Ultra  serial 4C53...  28.6 GiB  port pci-0000:00:14.0-usb-0:3:1.0-...`.
pub fn describe(disk: &DiskInfo) -> String {
    let mut parts = vec![disk.name.clone(), disk.bus.to_string()];
    let label = [disk.vendor.as_deref(), disk.model.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if !label.is_empty() {
        parts.push(label);
    }
    if let Some(s) = &disk.serial {
        parts.push(format!("serial {s}"));
    }
    parts.push(human_size(disk.size_bytes));
    if disk.read_only {
        parts.push("read-only".into());
    }
    match (&disk.port_path, &disk.loop_backing_file) {
        (_, Some(b)) => parts.push(format!("backing {}", b.display())),
        (Some(p), None) => parts.push(format!("port {p}")),
        (None, None) => parts.push("no port path".into()),
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portpath::fake::FakeSys;

    #[test]
    fn usb_stick_identified() {
        let sys = FakeSys::new();
        sys.usb_disk("sdb");
        let d = identify(&sys.root(), "sdb").unwrap().unwrap();
        assert_eq!(d.bus, Bus::Usb);
        assert_eq!(d.dev_path, PathBuf::from("/dev/sdb"));
        assert_eq!((d.major, d.minor), (8, 16));
        assert_eq!(d.vendor.as_deref(), Some("SanDisk"));
        assert_eq!(d.model.as_deref(), Some("Ultra"));
        assert_eq!(d.serial.as_deref(), Some("4C530001230512109334"));
        assert_eq!(d.size_bytes, 60_063_744 * 512);
        assert_eq!((d.logical_block_size, d.physical_block_size), (512, 4096));
        assert_eq!(
            d.port_path.as_deref(),
            Some("pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0")
        );
        assert_eq!(d.loop_backing_file, None);
        let line = describe(&d);
        assert!(
            line.starts_with("sdb  usb  SanDisk Ultra  serial 4C530001230512109334"),
            "{line}"
        );
        assert!(
            line.ends_with("port pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0"),
            "{line}"
        );
    }

    #[test]
    fn sata_disk_serial_from_vpd_and_wwn_from_naa() {
        let sys = FakeSys::new();
        sys.sata_disk("sda", 1, 1, "0:0:0:0");
        let d = identify(&sys.root(), "sda").unwrap().unwrap();
        assert_eq!(d.bus, Bus::Ata);
        assert_eq!(d.serial.as_deref(), Some("S5STNF0R123456W"));
        assert_eq!(d.wwn.as_deref(), Some("0x5002538f4150a3b2"));
        assert_eq!(d.port_path.as_deref(), Some("pci-0000:00:1f.2-ata-1.0"));
    }

    #[test]
    fn nvme_identified() {
        let sys = FakeSys::new();
        sys.nvme_disk();
        let d = identify(&sys.root(), "nvme0n1").unwrap().unwrap();
        assert_eq!(d.bus, Bus::Nvme);
        assert_eq!(d.vendor, None);
        assert_eq!(d.model.as_deref(), Some("WD Blue SN570 1TB"));
        assert_eq!(d.serial.as_deref(), Some("22123A456789"));
        assert_eq!(
            d.wwn.as_deref(),
            Some("eui.e8238fa6bf530001001b448b4a1b2c3d")
        );
        assert_eq!(d.port_path.as_deref(), Some("pci-0000:3d:00.0-nvme-1"));
    }

    #[test]
    fn loop_devices_only_when_attached() {
        let sys = FakeSys::new();
        sys.loop_disk(0, None, 0);
        sys.loop_disk(1, Some("/srv/bay1.img"), 131072);
        // Bound but empty backing file: size 0, not a disk yet.
        sys.loop_disk(2, Some("/srv/empty.img"), 0);
        let all = scan_disks(&sys.root()).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        let d = &all[0];
        assert_eq!(d.name, "loop1");
        assert_eq!(d.bus, Bus::Virtual);
        assert_eq!(d.port_path, None);
        assert_eq!(
            d.loop_backing_file.as_deref(),
            Some(Path::new("/srv/bay1.img"))
        );
        assert_eq!(d.size_bytes, 64 << 20);
        assert_eq!(identify(&sys.root(), "loop0").unwrap(), None);
        assert_eq!(
            describe(d),
            "loop1  virtual  64.0 MiB  backing /srv/bay1.img"
        );
    }

    #[test]
    fn partitions_and_missing_devices_are_not_disks() {
        let sys = FakeSys::new();
        let d = sys.usb_disk("sdb");
        let p = sys.device(
            d.join("sdb1")
                .strip_prefix(sys.root().join("devices"))
                .unwrap()
                .to_str()
                .unwrap(),
            Some("block"),
            "DEVTYPE=partition\n",
        );
        sys.attr(&p, "partition", "1\n");
        sys.attr(&p, "dev", "8:17\n");
        sys.attr(&p, "size", "100\n");
        sys.class_link("block", "sdb1", &p);
        assert_eq!(identify(&sys.root(), "sdb1").unwrap(), None);
        assert_eq!(identify(&sys.root(), "sdz").unwrap(), None);
        let names: Vec<_> = scan_disks(&sys.root())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["sdb"]);
    }

    #[test]
    fn bad_names_are_refused_with_the_name() {
        let sys = FakeSys::new();
        let err = identify(&sys.root(), "../sda").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("../sda"), "{err}");
        assert!(identify(&sys.root(), "").is_err());
    }

    #[test]
    fn garbage_attributes_say_what_and_where() {
        let sys = FakeSys::new();
        let d = sys.usb_disk("sdb");
        sys.attr(&d, "size", "lots\n");
        let err = identify(&sys.root(), "sdb").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("size of sdb"), "{err}");
        // A broken device is skipped by the scan, the others are still listed.
        sys.loop_disk(4, Some("/srv/x.img"), 8);
        let names: Vec<_> = scan_disks(&sys.root())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["loop4"]);
        sys.attr(&d, "size", "8\n");
        sys.attr(&d, "dev", "eight\n");
        let err = identify(&sys.root(), "sdb").unwrap_err();
        assert!(err.to_string().contains("dev of sdb"), "{err}");
    }

    #[test]
    fn scan_of_missing_sysfs_names_the_directory() {
        let err = scan_disks(Path::new("/nonexistent-sys")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-sys/class/block"),
            "{err}"
        );
    }

    #[test]
    fn wwid_and_vpd_parsing() {
        assert_eq!(
            normalize_wwid("naa.5000C500A1B2C3D4"),
            Some("0x5000c500a1b2c3d4".into())
        );
        assert_eq!(normalize_wwid("t10.ATA     QEMU HARDDISK"), None);
        assert_eq!(normalize_wwid("nvme.1b4b-31"), Some("nvme.1b4b-31".into()));
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vpd_pg80"), [0u8, 0x83, 0, 2, b'a', b'b']).unwrap();
        assert_eq!(vpd_serial(dir.path()), None, "wrong page code");
        fs::write(dir.path().join("vpd_pg80"), [0u8, 0x80, 0, 9, b'a', b'b']).unwrap();
        assert_eq!(
            vpd_serial(dir.path()).as_deref(),
            Some("ab"),
            "truncated page"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(1_000_204_886_016), "931.5 GiB");
    }

    #[test]
    fn bus_names_round_trip() {
        for b in [
            Bus::Usb,
            Bus::Ata,
            Bus::Nvme,
            Bus::Scsi,
            Bus::Virtual,
            Bus::Other("virtio".into()),
        ] {
            assert_eq!(b.to_string().parse::<Bus>().unwrap(), b);
        }
        assert_eq!(" SATA ".parse::<Bus>().unwrap(), Bus::Ata);
        assert_eq!("loop".parse::<Bus>().unwrap(), Bus::Virtual);
    }

    #[test]
    fn bus_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Bus::Nvme).unwrap(), "\"nvme\"");
        assert_eq!(
            serde_json::to_string(&Bus::Other("virtio".into())).unwrap(),
            "{\"other\":\"virtio\"}"
        );
    }

    #[test]
    fn real_sysfs_scan_works() {
        // Needs no root: every listed disk has a name, a /dev path and a size.
        if !Path::new("/sys/class/block").exists() {
            tek_testkit::skip!("real_sysfs_scan_works: no /sys/class/block");
            return;
        }
        for d in scan_disks(Path::new("/sys")).unwrap() {
            eprintln!("{}", describe(&d));
            assert!(d.size_bytes > 0 && d.dev_path.starts_with("/dev"), "{d:?}");
            if d.name.starts_with("loop") {
                assert!(
                    d.loop_backing_file.is_some() && d.port_path.is_none(),
                    "{d:?}"
                );
            }
        }
    }
}
