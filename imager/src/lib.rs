//! The imager: streams an image from the store (or a raw/zstd file) onto block devices or files,
//! verifying every chunk before it is written and reading everything back afterwards.
//!
//! Data flow, one stage per module: [`source`] says what the image is and opens an ordered
//! stream of pieces: [`reader`] (file I/O on one thread) feeds [`decode`] (decompress and
//! hash-check on every core, reordered, bounded). [`fanout::write_image`] fans each piece out to one
//! bounded queue per target; per target, [`writer`] gathers pieces into large aligned O_DIRECT
//! writes on a [`target::TargetDev`] (zeroing holes, holding back the first MiB), then [`verify`]
//! reads everything back, [`gptfix`] fits the GPT to the disk, and the first MiB goes last
//! ([`marker`] says so on a disk whose write never ended).
//! [`eligibility`] decides which disks may be touched at all, from what the `blockdev` crate
//! reads (sysfs, mountinfo, holders); block-device ioctls are `blockdev::ioctl`, so the imager
//! has no `unsafe` of its own.

#![forbid(unsafe_code)]

mod beyond;
mod buffer;
mod decode;
mod eligibility;
mod error;
mod fanout;
mod fsgrow;
mod gptfix;
mod layout;
mod marker;
mod options;
mod progress;
mod proof;
mod reader;
mod report;
mod source;
mod span;
mod target;
mod verify;
mod writer;

use blockdev::ioctl;

pub use eligibility::{Refusal, TargetInfo, check_target, system_disks};
pub use error::ImagerError;
pub use fanout::{write_image, write_image_with_info};
pub use fsgrow::{FsCheck, FsGrowth};
pub use gptfix::MovedPartition;
pub use layout::Layout;
pub use marker::{UnfinishedWrite, read_path as read_unfinished_marker};
pub use options::{BeyondImage, ReadBackHook, WriteOptions};
pub use progress::{Phase, ProgressEvent};
pub use proof::{NotVerified, VerifiedImage};
pub use reader::file_format;
pub use report::{BeyondAction, TargetReport, TargetResult};
pub use source::{ImageInfo, ImageSource};
pub use span::{Piece, Span, WrittenExtent};
