use super::*;
use crate::port_path::fake::FakeSys;

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
fn bus_serializes_as_its_name() {
    assert_eq!(serde_json::to_string(&Bus::Nvme).unwrap(), "\"nvme\"");
    // The name, as job records have always stored a disk's bus.
    assert_eq!(
        serde_json::to_string(&Bus::Other("virtio".into())).unwrap(),
        "\"virtio\""
    );
    for name in ["usb", "ata", "nvme", "scsi", "virtual", "virtio", "mmc"] {
        let json = format!("\"{name}\"");
        let b: Bus = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), json);
    }
}

#[test]
fn real_sysfs_scan_works() {
    // Needs no root: every listed disk has a name, a /dev path and a size.
    if !Path::new("/sys/class/block").exists() {
        tek_testkit::skip!("no /sys/class/block");
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
