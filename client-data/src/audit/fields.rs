//! The typed values audit entries carry instead of free text: a device's hardware identity (never
//! a path) and a wipe's reason code. The id rule for tickets, clients and operators is
//! [`check_ident`](crate::dataset::check_ident).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Longest hardware token kept (serial, WWN, model, kernel name).
const MAX_TOKEN: usize = 64;

/// Keeps a hardware-reported string as a token: trimmed, at most 64 characters, every character
/// outside `[A-Za-z0-9._:-]` (and space where `space` is set) replaced by `_`. Serials, WWNs and
/// models come from the device's firmware, not from a person, but a USB bridge can report
/// anything: the audit log must never hold a `/` (a path) or an `@` (an address).
fn token(s: &str, space: bool) -> Option<String> {
    let t: String = s
        .trim()
        .chars()
        .take(MAX_TOKEN)
        .map(|c| {
            if c.is_ascii_alphanumeric()
                || matches!(c, '.' | '_' | ':' | '-')
                || (space && c == ' ')
            {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!t.is_empty()).then_some(t)
}

/// A device as the audit log and the dataset metadata record it: what the hardware says it is,
/// never where it was reached (no device node of a mount, no loop backing file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// World-wide name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Vendor and model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Kernel name at the time (`sdb`, `loop7`), when there was a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl DeviceIdentity {
    /// Builds an identity from what the hardware reported, keeping each value as a token (see the
    /// module docs); empty values become `None`.
    pub fn new(
        serial: Option<&str>,
        wwn: Option<&str>,
        model: Option<&str>,
        size_bytes: Option<u64>,
        name: Option<&str>,
    ) -> DeviceIdentity {
        DeviceIdentity {
            serial: serial.and_then(|s| token(s, false)),
            wwn: wwn.and_then(|s| token(s, false)),
            model: model.and_then(|s| token(s, true)),
            size_bytes,
            name: name.and_then(|s| token(s, false)),
        }
    }

    /// Re-applies the token rule (for values read from an older record).
    pub fn sanitized(&self) -> DeviceIdentity {
        DeviceIdentity::new(
            self.serial.as_deref(),
            self.wwn.as_deref(),
            self.model.as_deref(),
            self.size_bytes,
            self.name.as_deref(),
        )
    }

    /// True when nothing identifies the device.
    pub fn is_empty(&self) -> bool {
        self == &DeviceIdentity::default()
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = &self.model {
            parts.push(format!("model {m}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial {s}"));
        }
        if let Some(w) = &self.wwn {
            parts.push(format!("wwn {w}"));
        }
        if let Some(b) = self.size_bytes {
            parts.push(format!("{b} bytes"));
        }
        if let Some(n) = &self.name {
            parts.push(format!("as {n}"));
        }
        if parts.is_empty() {
            f.write_str("unidentified device")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Why a dataset's staging copy was destroyed without (or besides) a verified migration: a code,
/// so no free text reaches the audit log. A free-text note goes only into the sanitization record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WipeReason {
    /// The client withdrew consent in writing.
    Withdrawal,
    /// The client's contract ended.
    Termination,
    /// The dataset was held longer than the retention allows.
    RetentionExpired,
    /// The migration was given up (device returned, job abandoned).
    MigrationAbandoned,
    /// The data was ingested by mistake (wrong client, wrong source).
    OperatorError,
    /// Anything else; say what in the note.
    Other,
}

impl WipeReason {
    /// Every code, in the order the CLI lists them.
    pub const ALL: [WipeReason; 6] = [
        WipeReason::Withdrawal,
        WipeReason::Termination,
        WipeReason::RetentionExpired,
        WipeReason::MigrationAbandoned,
        WipeReason::OperatorError,
        WipeReason::Other,
    ];

    /// The code as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            WipeReason::Withdrawal => "withdrawal",
            WipeReason::Termination => "termination",
            WipeReason::RetentionExpired => "retention-expired",
            WipeReason::MigrationAbandoned => "migration-abandoned",
            WipeReason::OperatorError => "operator-error",
            WipeReason::Other => "other",
        }
    }

    /// The reason in words, for printed records: "the client withdrew consent in writing".
    pub fn describe(self) -> &'static str {
        match self {
            WipeReason::Withdrawal => "the client withdrew consent in writing",
            WipeReason::Termination => "the client's contract ended",
            WipeReason::RetentionExpired => "it was held longer than the retention allows",
            WipeReason::MigrationAbandoned => "the migration was given up",
            WipeReason::OperatorError => "it was taken in by mistake",
            WipeReason::Other => "another reason (see the operator's note)",
        }
    }

    /// Reads a format-1 audit line's free-text reason: the two codes it had, else `other`.
    pub(crate) fn from_legacy(s: &str) -> WipeReason {
        s.parse().unwrap_or(WipeReason::Other)
    }
}

impl From<crate::withdraw::WithdrawReason> for WipeReason {
    fn from(r: crate::withdraw::WithdrawReason) -> WipeReason {
        match r {
            crate::withdraw::WithdrawReason::Withdrawal => WipeReason::Withdrawal,
            crate::withdraw::WithdrawReason::Termination => WipeReason::Termination,
        }
    }
}

impl fmt::Display for WipeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WipeReason {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        WipeReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| DataError::Invalid {
                what: "wipe reason",
                value: s.to_string(),
                reason: format!(
                    "use one of {} (put any explanation in --note)",
                    WipeReason::ALL.map(|r| r.as_str()).join(", ")
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_keeps_tokens_only() {
        let d = DeviceIdentity::new(
            Some("  S3Z/9@x "),
            Some(""),
            Some("Samsung SSD 870 <EVO>"),
            Some(10),
            Some("sdb"),
        );
        assert_eq!(d.serial.as_deref(), Some("S3Z_9_x"));
        assert_eq!(d.wwn, None);
        assert_eq!(d.model.as_deref(), Some("Samsung SSD 870 _EVO_"));
        assert_eq!(
            d.to_string(),
            "model Samsung SSD 870 _EVO_, serial S3Z_9_x, 10 bytes, as sdb"
        );
        let long = "x".repeat(200);
        assert_eq!(
            DeviceIdentity::new(Some(&long), None, None, None, None)
                .serial
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn reasons_are_codes() {
        for r in WipeReason::ALL {
            assert_eq!(r.as_str().parse::<WipeReason>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        let e = "client collected the disk"
            .parse::<WipeReason>()
            .unwrap_err();
        assert!(e.to_string().contains("operator-error"), "{e}");
        assert_eq!(WipeReason::from_legacy("whatever text"), WipeReason::Other);
        assert_eq!(
            WipeReason::from_legacy("termination"),
            WipeReason::Termination
        );
    }
}
