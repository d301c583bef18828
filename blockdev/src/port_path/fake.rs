//! Test support: fake sysfs trees in a temporary directory, shaped like the real ones (device
//! directories with `uevent` files and `subsystem` links, `class/block` links, attributes).

use std::fs;
use std::path::{Path, PathBuf};

/// A fake `/sys` under a temporary directory.
pub struct FakeSys {
    pub dir: tempfile::TempDir,
}

impl FakeSys {
    pub fn new() -> FakeSys {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sys/devices")).unwrap();
        fs::create_dir_all(dir.path().join("sys/class/block")).unwrap();
        FakeSys { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    /// Creates device `rel` (under `devices/`) with a subsystem link and a uevent file.
    pub fn device(&self, rel: &str, subsystem: Option<&str>, uevent: &str) -> PathBuf {
        let p = self.root().join("devices").join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("uevent"), uevent).unwrap();
        if let Some(s) = subsystem {
            let _ = fs::remove_file(p.join("subsystem"));
            std::os::unix::fs::symlink(self.root().join("bus").join(s), p.join("subsystem"))
                .unwrap();
        }
        p
    }

    /// Writes an attribute file.
    pub fn attr(&self, dir: &Path, name: &str, value: &str) {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, value).unwrap();
    }

    /// Creates `class/CLASS/NAME` -> the device directory, like the kernel's class links.
    pub fn class_link(&self, class: &str, name: &str, target: &Path) {
        let dir = self.root().join("class").join(class);
        fs::create_dir_all(&dir).unwrap();
        let _ = fs::remove_file(dir.join(name));
        std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    }

    /// A whole block disk at `rel` with the usual attributes; returns its directory.
    pub fn disk(&self, rel: &str, major_minor: &str, sectors: u64) -> PathBuf {
        let name = rel.rsplit('/').next().unwrap();
        let (major, minor) = major_minor.split_once(':').unwrap();
        let p = self.device(
            rel,
            Some("block"),
            &format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE=disk\n"),
        );
        self.attr(&p, "dev", &format!("{major_minor}\n"));
        self.attr(&p, "size", &format!("{sectors}\n"));
        self.attr(&p, "removable", "0\n");
        self.attr(&p, "ro", "0\n");
        self.attr(&p, "queue/rotational", "0\n");
        self.attr(&p, "queue/logical_block_size", "512\n");
        self.attr(&p, "queue/physical_block_size", "4096\n");
        // sysfs `device` link: the nearest parent device.
        let mut parent = p.parent();
        while let Some(d) = parent {
            if d.join("uevent").exists() {
                std::os::unix::fs::symlink(d, p.join("device")).unwrap();
                break;
            }
            parent = d.parent();
        }
        self.class_link("block", name, &p);
        p
    }

    /// A USB stick at `/sys/devices/pci0000:00/0000:00:14.0/usb2/2-3/2-3:1.0/host6/...`.
    pub fn usb_disk(&self, name: &str) -> PathBuf {
        let pci = "pci0000:00/0000:00:14.0";
        self.device("pci0000:00", None, "");
        self.device(pci, Some("pci"), "DRIVER=xhci_hcd\n");
        self.device(&format!("{pci}/usb2"), Some("usb"), "DEVTYPE=usb_device\n");
        let dev = self.device(
            &format!("{pci}/usb2/2-3"),
            Some("usb"),
            "DEVTYPE=usb_device\n",
        );
        self.attr(&dev, "serial", "4C530001230512109334\n");
        let intf = format!("{pci}/usb2/2-3/2-3:1.0");
        self.device(&intf, Some("usb"), "DEVTYPE=usb_interface\n");
        self.device(
            &format!("{intf}/host6"),
            Some("scsi"),
            "DEVTYPE=scsi_host\n",
        );
        self.device(
            &format!("{intf}/host6/target6:0:0"),
            Some("scsi"),
            "DEVTYPE=scsi_target\n",
        );
        let sdev = self.device(
            &format!("{intf}/host6/target6:0:0/6:0:0:0"),
            Some("scsi"),
            "DEVTYPE=scsi_device\n",
        );
        self.attr(&sdev, "vendor", "SanDisk \n");
        self.attr(&sdev, "model", "Ultra           \n");
        self.disk(
            &format!("{intf}/host6/target6:0:0/6:0:0:0/block/{name}"),
            "8:16",
            60_063_744,
        )
    }

    /// A SATA disk on AHCI port `port_no` (`ataN` device, `hostH`).
    pub fn sata_disk(&self, name: &str, ata: u32, port_no: u32, hbtl: &str) -> PathBuf {
        let pci = "pci0000:00/0000:00:1f.2";
        self.device("pci0000:00", None, "");
        self.device(pci, Some("pci"), "DRIVER=ahci\n");
        self.device(&format!("{pci}/ata{ata}"), None, "");
        let port = self.device(
            &format!("{pci}/ata{ata}/ata_port/ata{ata}"),
            Some("ata_port"),
            "",
        );
        self.attr(&port, "port_no", &format!("{port_no}\n"));
        let h = hbtl.split(':').next().unwrap();
        let t = hbtl.rsplit_once(':').unwrap().0;
        let host = format!("{pci}/ata{ata}/host{h}");
        self.device(&host, Some("scsi"), "DEVTYPE=scsi_host\n");
        self.device(
            &format!("{host}/target{t}"),
            Some("scsi"),
            "DEVTYPE=scsi_target\n",
        );
        let sdev = self.device(
            &format!("{host}/target{t}/{hbtl}"),
            Some("scsi"),
            "DEVTYPE=scsi_device\n",
        );
        self.attr(&sdev, "vendor", "ATA     \n");
        self.attr(&sdev, "model", "Samsung SSD 870\n");
        self.attr(&sdev, "wwid", "naa.5002538f4150a3b2\n");
        // VPD page 0x80: 4-byte header then the serial, space padded.
        let mut pg80 = vec![0u8, 0x80, 0, 20];
        pg80.extend_from_slice(b"S5STNF0R123456W     ");
        fs::write(sdev.join("vpd_pg80"), pg80).unwrap();
        self.disk(
            &format!("{host}/target{t}/{hbtl}/block/{name}"),
            "8:0",
            1_953_525_168,
        )
    }

    /// An NVMe namespace `nvme0n1` at PCI 0000:3d:00.0 (non-multipath layout).
    pub fn nvme_disk(&self) -> PathBuf {
        let pci = "pci0000:00/0000:00:1d.0/0000:3d:00.0";
        self.device("pci0000:00", None, "");
        self.device("pci0000:00/0000:00:1d.0", Some("pci"), "");
        self.device(pci, Some("pci"), "DRIVER=nvme\n");
        let ctrl = self.device(&format!("{pci}/nvme/nvme0"), Some("nvme"), "");
        self.attr(&ctrl, "model", "WD Blue SN570 1TB   \n");
        self.attr(&ctrl, "serial", "22123A456789        \n");
        let d = self.disk(&format!("{pci}/nvme/nvme0/nvme0n1"), "259:0", 1_953_525_168);
        self.attr(&d, "nsid", "1\n");
        self.attr(&d, "wwid", "eui.e8238fa6bf530001001b448b4a1b2c3d\n");
        d
    }

    /// A loop device; attached when `backing` is given.
    pub fn loop_disk(&self, n: u32, backing: Option<&str>, sectors: u64) -> PathBuf {
        let d = self.disk(
            &format!("virtual/block/loop{n}"),
            &format!("7:{n}"),
            sectors,
        );
        if let Some(b) = backing {
            self.attr(&d, "loop/backing_file", &format!("{b}\n"));
        }
        d
    }
}
