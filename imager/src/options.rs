//! The options of a write: what to do past the image's end ([`BeyondImage`]), the read-back
//! hook tests use, and [`WriteOptions`] itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What to do past the image's end: the one type for it, in the agent's config
/// (`policy.beyond_image`, serde names) and `tek write --beyond` (the same names, [`FromStr`]).
///
/// [`FromStr`]: std::str::FromStr
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BeyondImage {
    /// Clear it where the device zeroes fast (WRITE ZEROES offload, discard that zeroes, file
    /// hole punch); otherwise leave it and say so in the report.
    #[default]
    Auto,
    /// Always clear it, writing zeros if the device cannot zero by itself.
    Overwrite,
    /// Leave it.
    Skip,
}

impl BeyondImage {
    /// Every value, in the order `--help` lists them.
    pub const ALL: [BeyondImage; 3] =
        [BeyondImage::Auto, BeyondImage::Overwrite, BeyondImage::Skip];

    /// The name in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BeyondImage::Auto => "auto",
            BeyondImage::Overwrite => "overwrite",
            BeyondImage::Skip => "skip",
        }
    }
}

impl std::fmt::Display for BeyondImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BeyondImage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BeyondImage::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("unknown value {s}: use auto, overwrite or skip"))
    }
}

/// Runs on each target after its writes and before the flush and read-back, with the target's
/// path: a fault drill. Whatever it changes on the target must make read-back fail, which is how
/// the tests prove the read-back compares the disk with the image and not with itself.
#[derive(Clone)]
pub struct ReadBackHook(pub Arc<dyn Fn(&Path) + Send + Sync>);

impl std::fmt::Debug for ReadBackHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadBackHook")
    }
}

/// Options of a write job.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// What to do past the image's end (default [`BeyondImage::Auto`]).
    pub beyond: BeyondImage,
    /// Skip writes where the target already holds the bytes.
    pub reuse_existing: bool,
    /// GPT fix-ups driven by the manifest hints (default true).
    pub fixups: bool,
    /// Set to stop at the next piece; the partition table is then reset.
    pub cancel: Arc<AtomicBool>,
    /// Read large zeroed holes back completely instead of sampling them.
    pub verify_holes_fully: bool,
    /// Fault drill between writing and read-back (tests); `None` in production.
    pub before_read_back: Option<ReadBackHook>,
    /// The kernel `diskseq` each target had when it was detected (by path): a target whose
    /// device node now reaches another disk is refused ([`Refusal::DiskChanged`]).
    pub expected_diskseq: HashMap<PathBuf, u64>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            beyond: BeyondImage::Auto,
            reuse_existing: false,
            fixups: true,
            cancel: Arc::new(AtomicBool::new(false)),
            verify_holes_fully: false,
            before_read_back: None,
            expected_diskseq: HashMap::new(),
        }
    }
}
