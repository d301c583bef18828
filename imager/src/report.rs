//! The per-target report (JSON, format version [`REPORT_FORMAT`]): who the disk was, what image
//! went onto it, what was written, zeroed, skipped and verified, what happened beyond the image
//! and to the GPT, how long each step took, and the result.

use std::path::PathBuf;

use serde::Serialize;

use crate::eligibility::{Refusal, TargetInfo};
use crate::gptfix::GptChanges;
use crate::progress::Phase;
use crate::source::ImageInfo;

/// Version of the report's JSON shape.
pub const REPORT_FORMAT: u32 = 1;

/// What was done past the image's end.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BeyondAction {
    /// Not reached (the job failed before) or nothing beyond (disk as large as the image).
    None,
    /// Zeroed by the device (BLKZEROOUT; `offloaded`: the device has WRITE ZEROES).
    Zeroed {
        /// Bytes.
        bytes: u64,
        /// True when the device zeroes without data transfer.
        offloaded: bool,
    },
    /// Discarded on a device whose discard returns zeros.
    Discarded {
        /// Bytes.
        bytes: u64,
    },
    /// Holes punched in a file target.
    Punched {
        /// Bytes.
        bytes: u64,
    },
    /// Left as it was.
    Skipped {
        /// Bytes left.
        bytes: u64,
        /// Why.
        reason: String,
    },
}

impl BeyondAction {
    fn bytes(&self) -> u64 {
        match self {
            BeyondAction::None => 0,
            BeyondAction::Zeroed { bytes, .. }
            | BeyondAction::Discarded { bytes }
            | BeyondAction::Punched { bytes }
            | BeyondAction::Skipped { bytes, .. } => *bytes,
        }
    }

    /// One action for two ranges: bytes summed; a range left alone makes the whole `skipped`
    /// (with its reason), two different ways of zeroing report `zeroed`.
    pub fn merge(self, other: BeyondAction) -> BeyondAction {
        let bytes = self.bytes() + other.bytes();
        match (self, other) {
            (BeyondAction::None, o) | (o, BeyondAction::None) => o,
            (BeyondAction::Skipped { bytes: b1, reason }, o)
            | (o, BeyondAction::Skipped { bytes: b1, reason }) => {
                // Only the bytes left alone are "skipped"; the others were cleared.
                let (skipped, cleared) = match o {
                    BeyondAction::Skipped { bytes: b2, .. } => (b1 + b2, 0),
                    o => (b1, o.bytes()),
                };
                let reason = if cleared > 0 {
                    format!("{reason} ({cleared} other bytes were cleared)")
                } else {
                    reason
                };
                debug_assert_eq!(skipped + cleared, bytes);
                BeyondAction::Skipped {
                    bytes: skipped,
                    reason,
                }
            }
            (BeyondAction::Discarded { .. }, BeyondAction::Discarded { .. }) => {
                BeyondAction::Discarded { bytes }
            }
            (BeyondAction::Punched { .. }, BeyondAction::Punched { .. }) => {
                BeyondAction::Punched { bytes }
            }
            (a, b) => {
                let off = |x: &BeyondAction| {
                    !matches!(
                        x,
                        BeyondAction::Zeroed {
                            offloaded: false,
                            ..
                        }
                    )
                };
                BeyondAction::Zeroed {
                    bytes,
                    offloaded: off(&a) && off(&b),
                }
            }
        }
    }
}

/// How a target's job ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TargetResult {
    /// Written and verified.
    Ok,
    /// Not written: the eligibility check refused it.
    Refused {
        /// Why.
        refusal: Refusal,
    },
    /// Failed during `phase`; the partition table was reset when `table_reset`.
    Failed {
        /// Phase it failed in.
        phase: Phase,
        /// The error, one line.
        error: String,
        /// Image/target offset of the failure, when known.
        offset: Option<u64>,
        /// Both GPT headers were zeroed afterwards.
        table_reset: bool,
    },
}

/// Seconds spent in each step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Durations {
    /// Writing the image (decode included).
    pub write_secs: f64,
    /// Clearing beyond the image.
    pub beyond_secs: f64,
    /// Flushing and read-back verification.
    pub verify_secs: f64,
    /// GPT fix-ups and the first MiB.
    pub finish_secs: f64,
    /// The whole job.
    pub total_secs: f64,
}

/// One target's report.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Always [`REPORT_FORMAT`].
    pub format: u32,
    /// The target path.
    pub path: PathBuf,
    /// Its identity, when the check got that far.
    pub identity: Option<TargetInfo>,
    /// The image.
    pub image: Option<ImageInfo>,
    /// Bytes written with write calls (data, small holes, the first MiB, GPT structures).
    pub bytes_written: u64,
    /// Bytes zeroed by the device or punched inside the image.
    pub bytes_zeroed: u64,
    /// Bytes not written because the target already held them.
    pub bytes_skipped: u64,
    /// Bytes read back and compared.
    pub bytes_verified: u64,
    /// True when the bulk I/O went through O_DIRECT.
    pub direct_io: bool,
    /// True when this target got its own decode stream because it fell behind the others.
    pub split_off: bool,
    /// What was done past the image's end.
    pub beyond: BeyondAction,
    /// GPT changes, when the image has a GPT and fix-ups ran.
    pub gpt: Option<GptChanges>,
    /// The grown partition's filesystem: old and new size, the checks after growing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<crate::fsgrow::FsGrowth>,
    /// What BLKRRPART answered.
    pub reread_partitions: Option<String>,
    /// Timings.
    pub durations: Durations,
    /// RFC 3339 start time.
    pub started: String,
    /// Result.
    pub result: TargetResult,
    /// Image offsets of extents that read back wrong (at most 1000).
    pub mismatch_offsets: Vec<u64>,
    /// The marker of an earlier tek write that never finished (`kill -9`, power cut), found on
    /// the target before this write began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_write: Option<crate::marker::UnfinishedWrite>,
    /// The proof, set by the write only when the target was written and verified.
    #[serde(skip)]
    pub(crate) verified: Option<crate::proof::VerifiedImage>,
}

impl TargetReport {
    /// True when the target was written and verified.
    pub fn ok(&self) -> bool {
        matches!(self.result, TargetResult::Ok)
    }

    /// The proof that the target was written and read back equal: only in a report the write
    /// finished with every check passed.
    pub fn verified(&self) -> Option<&crate::proof::VerifiedImage> {
        self.verified.as_ref().filter(|_| self.ok())
    }

    pub(crate) fn new(path: PathBuf, image: Option<ImageInfo>) -> Self {
        TargetReport {
            format: REPORT_FORMAT,
            path,
            identity: None,
            image,
            bytes_written: 0,
            bytes_zeroed: 0,
            bytes_skipped: 0,
            bytes_verified: 0,
            direct_io: false,
            split_off: false,
            beyond: BeyondAction::None,
            gpt: None,
            filesystem: None,
            reread_partitions: None,
            durations: Durations::default(),
            started: now_rfc3339(),
            result: TargetResult::Ok,
            unfinished_write: None,
            mismatch_offsets: Vec::new(),
            verified: None,
        }
    }
}

/// Current UTC time in RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_serialises_with_tagged_result() {
        let mut r = TargetReport::new("/dev/loop9".into(), None);
        assert!(r.ok());
        r.result = TargetResult::Failed {
            phase: Phase::Writing,
            error: "boom".into(),
            offset: Some(4096),
            table_reset: true,
        };
        assert!(!r.ok());
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["result"]["status"], "failed");
        assert_eq!(j["result"]["phase"], "writing");
        assert_eq!(j["beyond"]["action"], "none");
        assert_eq!(j["format"], 1);
    }
}
