//! Everything tek knows about disks, once (after coreos-installer's `blockdev.rs`, split by noun).
//!
//! - [`sysfs`]: which whole disks are present and what each one is ([`DiskInfo`]: bus, identity,
//!   size, `diskseq`), read below a [`SysRoot`] that tests point at a fake tree.
//! - `identity`: who a disk is across re-plugs ([`DiskInfo::identity`]: serial > WWN > loop
//!   backing file > name).
//! - [`port_path`]: the udev-style physical port path of a disk (which bench bay it is in).
//! - [`mountinfo`]: the one `/proc/self/mountinfo` parser, and which block devices a mount lives
//!   on (btrfs and overlay included).
//! - [`holders`]: who else uses a disk: sysfs `holders/`, swap, loop devices backed by a file,
//!   the disks under `/`.
//! - [`uevent`] reads kernel uevents; [`watch`] turns them (and a rescan) into disk arrivals and
//!   departures.
//! - [`partition`]: one partition as a block device: the kernel's node, else a loop device
//!   with the partition's offset and size.
//! - [`fstype`]: what a partition holds, from its signatures (NTFS, BitLocker, ext4, ...);
//!   [`ntfs`]: the `$Volume` dirty flag; [`selector`]: `number:`/`name:`/`label:`/`type:` hints.
//! - [`loopdev`]: attaching and detaching loop devices (RAII), for staging and tests.
//! - [`ioctl`]: block-device ioctls and `flock`, the crate's only `unsafe`.
//!
//! Nothing here writes to a disk; the imager and client-data decide what to do with one.

pub mod fstype;
pub mod holders;
mod identity;
pub mod ioctl;
pub mod loopdev;
pub mod mountinfo;
pub mod ntfs;
pub mod partition;
pub mod port_path;
pub mod selector;
pub mod sysfs;
pub mod uevent;
pub mod watch;

pub use fstype::FsKind;
pub use identity::clean_backing;
pub use loopdev::{LoopDevice, LoopError, LoopOptions};
pub use sysfs::{Bus, DiskInfo, SysRoot};
