//! What each step of a job found, as the job record keeps it (`results` of job format 1).
//!
//! Each step's result has its own type, made from the library's own value ([`WriteRecord::of`]
//! an `imager::TargetReport`, [`RestoreRecord::of`] a `client_data::RestoreResult`,
//! [`SanitizationRecord::of`] a `client_data::SanitizationRecord`), so a step cannot put one
//! step's result where another's belongs. On disk each is that value's JSON, exactly as
//! journaled before these types existed (`#[serde(transparent)]`): old records read unchanged,
//! and the report shows them as they were recorded.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Results gathered along the way, for the report and for resuming.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResults {
    /// Manifest hash, signature status and size of the image written (pinned at claim time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<serde_json::Value>,
    /// The imager's report of the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteRecord>,
    /// The restore-and-verify result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreRecord>,
    /// The staging wipe's sanitization record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitization: Option<SanitizationRecord>,
}

macro_rules! recorded {
    ($(#[$doc:meta])* $name:ident, $of:ty, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(serde_json::Value);

        impl $name {
            #[doc = concat!("The record of ", $what, ".")]
            pub fn of(value: &$of) -> Result<Self> {
                serde_json::to_value(value)
                    .map($name)
                    .context(concat!("recording ", $what))
            }

            /// A record read back as JSON (a saved file; tests).
            pub fn from_json(value: serde_json::Value) -> Self {
                $name(value)
            }

            /// The recorded JSON, as the report shows it.
            pub fn json(&self) -> &serde_json::Value {
                &self.0
            }
        }
    };
}

recorded!(
    /// The imager's `TargetReport` of a job's write.
    WriteRecord,
    imager::TargetReport,
    "the imager report"
);
recorded!(
    /// Custody's `RestoreResult` of a job's migration.
    RestoreRecord,
    client_data::RestoreResult,
    "the restore result"
);
recorded!(
    /// Custody's `SanitizationRecord` of the staging wipe.
    SanitizationRecord,
    client_data::SanitizationRecord,
    "the sanitization record"
);

impl WriteRecord {
    /// The proof this record holds that the image was written and verified (a job resuming
    /// after a restart, when the write ran in an earlier process): refused unless the report
    /// says so (`imager::VerifiedImage::from_recorded`).
    pub fn proof(&self) -> Result<imager::VerifiedImage, imager::NotVerified> {
        imager::VerifiedImage::from_recorded(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_the_json_they_were_journaled_as() {
        // Keys sorted, as `serde_json::Value` has always written them.
        let text = r#"{"write":{"bytes_verified":9,"format":1,"path":"/dev/loop1","result":{"status":"ok"}},"restore":{"entries_verified":3},"sanitization":{"method":"overwrite"}}"#;
        let r: JobResults = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        let proof = r.write.as_ref().unwrap().proof().unwrap();
        assert_eq!(proof.bytes_verified(), 9);
        assert_eq!(r.restore.unwrap().json()["entries_verified"], 3);
    }

    #[test]
    fn a_failed_write_record_is_no_proof() {
        let w = WriteRecord::from_json(serde_json::json!({
            "format": 1, "path": "/dev/loop1", "bytes_verified": 0,
            "result": {"status": "failed", "phase": "verifying"},
        }));
        assert!(w.proof().is_err());
    }
}
