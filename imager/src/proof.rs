//! Proofs as values: "no client data onto a disk whose image was not verified" is kept by the
//! types, as client-data's `VerifiedRestore` keeps "no wipe before a verified copy".
//!
//! A [`VerifiedImage`] is made by this crate only: [`crate::write_image`] puts one into a
//! target's [`TargetReport`] after every byte written was read back equal and the first MiB
//! went on last (`TargetReport::verified`), or [`VerifiedImage::from_recorded`] loads one from
//! a report recorded earlier (a job resumed after a restart), refusing any report that does not
//! say the target was written and verified. The agent's migrate step takes one.

use std::path::{Path, PathBuf};

use crate::report::{REPORT_FORMAT, TargetReport};

/// Proof that the image was written onto `target` and read back equal, first MiB included.
/// Fields are private: outside this crate a value exists only where that check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    target: PathBuf,
    image: String,
    bytes_verified: u64,
}

/// A recorded target report that proves no verified image (see [`VerifiedImage::from_recorded`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the recorded write report does not show a verified image: {reason}")]
pub struct NotVerified {
    /// What the record lacks.
    pub reason: String,
}

impl VerifiedImage {
    /// Made by the write after read-back and the first MiB passed.
    pub(crate) fn after_read_back(rep: &TargetReport) -> Self {
        VerifiedImage {
            target: rep.path.clone(),
            image: image_name(rep),
            bytes_verified: rep.bytes_verified,
        }
    }

    /// The proof recorded in a target report as the imager wrote it (JSON, e.g. from a job
    /// journal): refused unless the report is of a known format, says `status: ok` and counts
    /// verified bytes. The target is the one recorded (a re-plugged disk may have another
    /// name now; which disk it is, is the caller's identity check).
    pub fn from_recorded(report: &serde_json::Value) -> Result<Self, NotVerified> {
        let refuse = |reason: &str| NotVerified {
            reason: reason.to_string(),
        };
        let format = report.get("format").and_then(|v| v.as_u64());
        if format != Some(u64::from(REPORT_FORMAT)) {
            return Err(refuse("no report of a known format"));
        }
        let status = report.pointer("/result/status").and_then(|v| v.as_str());
        if status != Some("ok") {
            return Err(NotVerified {
                reason: format!("its result is {}", status.unwrap_or("missing")),
            });
        }
        let bytes_verified = report
            .get("bytes_verified")
            .and_then(|v| v.as_u64())
            .filter(|&b| b > 0)
            .ok_or_else(|| refuse("no bytes were read back"))?;
        let target = report
            .get("path")
            .and_then(|v| v.as_str())
            .ok_or_else(|| refuse("no target path"))?;
        let name = report.pointer("/image/name").and_then(|v| v.as_str());
        let version = report.pointer("/image/version").and_then(|v| v.as_str());
        let image = match (name, version) {
            (Some(n), Some(v)) => format!("{n}@{v}"),
            (Some(n), None) => n.to_string(),
            (None, _) => String::new(),
        };
        Ok(VerifiedImage {
            target: PathBuf::from(target),
            image,
            bytes_verified,
        })
    }

    /// The target written (its path at the time).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The image: `NAME@VERSION` for a store image, the file name for a one-off file (empty
    /// when the report did not name it).
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Bytes read back and found equal.
    pub fn bytes_verified(&self) -> u64 {
        self.bytes_verified
    }
}

fn image_name(rep: &TargetReport) -> String {
    rep.image
        .as_ref()
        .map(|i| match &i.version {
            Some(v) => format!("{}@{v}", i.name),
            None => i.name.clone(),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(status: &str, bytes: u64) -> serde_json::Value {
        serde_json::json!({
            "format": REPORT_FORMAT,
            "path": "/dev/loop9",
            "image": {"name": "win11", "version": "1"},
            "bytes_verified": bytes,
            "result": {"status": status},
        })
    }

    #[test]
    fn a_recorded_verified_write_is_a_proof() {
        let p = VerifiedImage::from_recorded(&recorded("ok", 4096)).unwrap();
        assert_eq!(p.target(), Path::new("/dev/loop9"));
        assert_eq!(p.bytes_verified(), 4096);
        assert_eq!(p.image(), "win11@1");
    }

    #[test]
    fn failed_refused_unverified_or_foreign_records_are_no_proof() {
        for bad in [
            recorded("failed", 4096),
            recorded("refused", 0),
            recorded("ok", 0),
            serde_json::json!({"verified": true, "bytes": 100}),
            serde_json::json!(null),
        ] {
            let e = VerifiedImage::from_recorded(&bad).unwrap_err();
            assert!(!e.reason.is_empty(), "{bad}");
        }
        let mut other = recorded("ok", 4096);
        other["format"] = serde_json::json!(REPORT_FORMAT + 1);
        assert!(VerifiedImage::from_recorded(&other).is_err());
    }

    #[test]
    fn a_fresh_report_is_no_proof_until_the_write_says_so() {
        let rep = TargetReport::new("/dev/loop9".into(), None);
        assert!(rep.ok(), "a new report starts out ok");
        assert!(
            rep.verified().is_none(),
            "but only the finished write makes the proof"
        );
    }
}
