//! Disks as sysfs describes them: which whole disks are present and what each one is.
//!
//! [`scan_disks`] lists `/sys/class/block` and [`identify`] reads one entry: bus, vendor, model,
//! serial, WWN, size, block sizes, flags, the udev-style port path (see [`crate::port_path`]) and,
//! for a loop device, its backing file. Partitions, hidden nvme paths, drives without media
//! (size 0) and detached loop devices are not disks for us. Everything is read below a sysfs root
//! passed in, so tests use fake trees; the agent passes `/sys`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::port_path::{self, Node, read_attr};

/// The sysfs tree tek reads: `/sys` on a real machine, a fake tree in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoot(PathBuf);

impl SysRoot {
    /// The machine's own `/sys`.
    pub fn system() -> SysRoot {
        SysRoot(PathBuf::from("/sys"))
    }

    /// A sysfs tree at `root` (a fake one in tests).
    pub fn at(root: impl Into<PathBuf>) -> SysRoot {
        SysRoot(root.into())
    }

    /// The tree's root directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// All whole disks present (see [`scan_disks`]).
    pub fn scan_disks(&self) -> io::Result<Vec<DiskInfo>> {
        scan_disks(&self.0)
    }

    /// Whether block device `name` has media now: `Some(false)` when its sysfs `size` is 0 (a
    /// pulled card, a detached loop device), `None` when sysfs has no such device.
    pub fn media_present(&self, name: &str) -> Option<bool> {
        let size = self.0.join("class/block").join(name).join("size");
        fs::read_to_string(size).ok().map(|s| s.trim() != "0")
    }

    /// One disk by kernel name (see [`identify`]).
    pub fn identify(&self, name: &str) -> io::Result<Option<DiskInfo>> {
        identify(&self.0, name)
    }
}

impl AsRef<Path> for SysRoot {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// How a disk is attached. Serialized as its name (`"usb"`, `"virtio"`), the words a config's
/// `allowed_buses` and a job record use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

impl Serialize for Bus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(name.parse().unwrap_or_else(|never| match never {}))
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
    /// The kernel's `diskseq` (Linux 5.15+), read with the rest: a counter bumped on every
    /// attach and media change, so it tells a re-attached loop device (same name, same backing
    /// file) from the one seen before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskseq: Option<u64>,
}

/// An I/O error met reading sysfs: what was being done, to which path, and the OS error itself
/// as the source (so its errno survives the context: see [`is_out_of_descriptors`]).
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct SysfsIoError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn with_context(e: io::Error, what: &'static str, path: &Path) -> io::Error {
    let kind = e.kind();
    let context = SysfsIoError {
        what,
        path: path.to_path_buf(),
        source: e,
    };
    io::Error::new(kind, context)
}

/// The OS error number behind `e`, also when this module wrapped it with context.
pub fn os_error(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()?
            .downcast_ref::<SysfsIoError>()?
            .source
            .raw_os_error()
    })
}

/// Whether `e` is the reader running out of file descriptors (EMFILE for the process, ENFILE for
/// the system): a state of the reader, not of the device, so every other device would fail alike.
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(os_error(e), Some(libc::EMFILE | libc::ENFILE))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One disk by kernel name; `Ok(None)` if it is absent, a partition, or a detached loop device.
pub fn identify(sys_root: &Path, name: &str) -> io::Result<Option<DiskInfo>> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "identifying disk \"{}\": not a kernel block device name",
                name.escape_debug()
            ),
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

/// Reads a number attribute that must be there (`NotFound` propagates: the device went away).
fn read_num(dir: &Path, attr: &str, name: &str) -> io::Result<u64> {
    let path = dir.join(attr);
    let text = fs::read_to_string(&path).map_err(|e| with_context(e, "reading", &path))?;
    text.trim().parse().map_err(|_| {
        invalid(format!(
            "parsing {attr} of {name}: expected a number, found \"{}\"",
            text.trim().escape_debug()
        ))
    })
}

fn opt_num(dir: &Path, attr: &str) -> Option<u64> {
    read_attr(dir, attr)?.parse().ok()
}

fn flag(dir: &Path, attr: &str) -> bool {
    read_attr(dir, attr).as_deref() == Some("1")
}

fn read_disk(sys_root: &Path, name: &str, dir: &Path) -> io::Result<Option<DiskInfo>> {
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
                "parsing dev of {name}: expected MAJOR:MINOR, found \"{}\"",
                dev.trim().escape_debug()
            ))
        })?;
    // `size` is always in 512-byte units, whatever the logical block size.
    let size_bytes = read_num(dir, "size", name)?.saturating_mul(512);
    let backing = read_attr(dir, "loop/backing_file").map(PathBuf::from);
    if size_bytes == 0 {
        // A drive without media, or a loop device with nothing attached.
        return Ok(None);
    }
    let chain = port_path::device_chain(sys_root, dir);
    let devices = sys_root.join("devices");
    let devices = fs::canonicalize(&devices).map_err(|e| with_context(e, "resolving", &devices))?;
    let is_virtual = dir
        .strip_prefix(&devices)
        .is_ok_and(|rel| rel.starts_with("virtual"));
    if name.starts_with("loop") && is_virtual && backing.is_none() {
        return Ok(None);
    }
    let device = dir.join("device");
    let device_is_scsi = port_path::subsystem_of(&device).as_deref() == Some("scsi");
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
    Ok(Some(DiskInfo {
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
            port_path::path_id(sys_root, dir).map(|p| p.id_path)
        },
        loop_backing_file: backing,
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

mod scan;
pub use scan::{Scan, Skipped, scan, scan_disks};

#[cfg(test)]
mod tests;
