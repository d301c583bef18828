//! Datasets as staging holds them: ids, states, the clear-text metadata file (no personal data),
//! and the per-dataset lock.
//!
//! `<staging>/<id>/meta.json` (format 1) holds only: id, client, ticket, created, entry count,
//! total bytes, state, ciphertext size and MACs, and after a migration where it went (job, device).
//! Next to it `data.enc` and `manifest.enc` (see `stream` and `manifest`). A wiped dataset keeps
//! its `meta.json` (state `wiped` or `withdrawn`) as the record that it existed.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::audit::DeviceIdentity;
use crate::error::{DataError, io};
use crate::keystore::write_private;

/// A dataset id, e.g. `ds-20260301-5f2c9a1e0b7d4c3a9e8f1a2b3c4d5e6f` (128 random bits after
/// the date; ids made before had 32 bits, `ds-20260301-5f2c9a1e`, and still parse).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetId(pub String);

impl DatasetId {
    /// A fresh id for a dataset created now: the date, then 128 random bits, so two ingests on
    /// one day never pick the same id by chance (ingest also creates it exclusively).
    pub fn generate(now: time::OffsetDateTime) -> DatasetId {
        let mut r = [0u8; 16];
        getrandom::getrandom(&mut r).expect("getrandom failed");
        DatasetId(format!(
            "ds-{:04}{:02}{:02}-{}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            hex::encode(r)
        ))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DatasetId {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        let ok = s.starts_with("ds-")
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(DatasetId(s.to_string()))
        } else {
            Err(DataError::Invalid {
                what: "dataset id",
                value: s.to_string(),
                reason: "expected ds-YYYYMMDD-<hex>".into(),
            })
        }
    }
}

impl Serialize for DatasetId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DatasetId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a dataset is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetState {
    /// Encrypted in staging, not yet migrated.
    Staged,
    /// Restored and verified on a replacement device; staging copy still present.
    Migrated,
    /// Staging copy and key destroyed.
    Wiped,
    /// Destroyed because the client withdrew (or the contract ended).
    Withdrawn,
}

impl fmt::Display for DatasetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetState::Staged => "staged",
            DatasetState::Migrated => "migrated",
            DatasetState::Wiped => "wiped",
            DatasetState::Withdrawn => "withdrawn",
        })
    }
}

impl DatasetState {
    /// True while ciphertext and key exist.
    pub fn is_live(self) -> bool {
        matches!(self, DatasetState::Staged | DatasetState::Migrated)
    }
}

/// The clear-text metadata of a dataset (no personal data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Dataset id.
    pub id: DatasetId,
    /// Client id.
    pub client: String,
    /// Service ticket.
    pub ticket: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Number of manifest entries.
    pub entries: u64,
    /// Total content bytes.
    pub bytes: u64,
    /// State.
    pub state: DatasetState,
}

/// Where a restore writes, for the audit log and breach reports: the job and the device's
/// hardware identity, never a path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DestinationRecord")]
pub struct Destination {
    /// The agent's job id, if any.
    pub job: Option<String>,
    /// The replacement device (empty for a plain directory).
    pub device: DeviceIdentity,
}

/// `meta.json`'s migration destination as stored: before the audit format 2 change it was
/// `{job, device_serial, device: "<path>"}`; the path is not kept.
#[derive(Deserialize)]
struct DestinationRecord {
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    device_serial: Option<String>,
    #[serde(default)]
    device: Option<DeviceField>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DeviceField {
    Identity(DeviceIdentity),
    /// Format 1's free path: not kept.
    Path(serde::de::IgnoredAny),
}

impl From<DestinationRecord> for Destination {
    fn from(r: DestinationRecord) -> Destination {
        let device = match r.device {
            Some(DeviceField::Identity(d)) => d,
            _ => DeviceIdentity::new(r.device_serial.as_deref(), None, None, None, None),
        };
        Destination { job: r.job, device }
    }
}

/// Record of the verified migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// When verification passed.
    pub at: String,
    /// Where.
    pub dest: Destination,
    /// Entries verified.
    pub entries_verified: u64,
    /// Bytes verified.
    pub bytes_verified: u64,
}

/// Format of `meta.json` written by this version: 2 records a migration's device as a
/// [`DeviceIdentity`]; format 1 (`device` path + `device_serial`) is still read.
pub const META_FORMAT: u32 = 2;

/// The full `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Format version ([`META_FORMAT`]; 1 is read).
    pub format: u32,
    /// The public part.
    #[serde(flatten)]
    pub info: DatasetInfo,
    /// Ciphertext bytes of data.enc + manifest.enc.
    pub ciphertext_bytes: u64,
    /// Keyed BLAKE3 of data.enc (key derived from the dataset key).
    pub data_mac: String,
    /// Keyed BLAKE3 of manifest.enc.
    pub manifest_mac: String,
    /// Verified migrations.
    #[serde(default)]
    pub migrations: Vec<Migration>,
    /// When the staging copy was destroyed.
    #[serde(default)]
    pub wiped_at: Option<String>,
}

impl Meta {
    /// Reads `<dir>/meta.json`.
    pub fn load(dir: &Path) -> Result<Meta, DataError> {
        let p = dir.join("meta.json");
        let text = std::fs::read_to_string(&p).map_err(io("reading dataset metadata", &p))?;
        let mut m: Meta = serde_json::from_str(&text).map_err(|e| DataError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if !(1..=META_FORMAT).contains(&m.format) {
            return Err(DataError::Corrupt {
                path: p,
                reason: format!("unknown format {}", m.format),
            });
        }
        // Read into today's shape; the next save writes it in today's format.
        m.format = META_FORMAT;
        Ok(m)
    }
    /// Writes `<dir>/meta.json` durably.
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).expect("serialize meta");
        write_private(&dir.join("meta.json"), text.as_bytes())
    }
}

/// An exclusive per-dataset lock (flock on `<staging>/locks/<id>.lock`), released on drop.
#[derive(Debug)]
pub struct DatasetLock {
    _lock: Flock<File>,
    /// The lock file.
    pub path: PathBuf,
}

impl DatasetLock {
    /// Takes the lock without waiting; [`DataError::Locked`] when someone holds it.
    pub fn try_take(staging: &Path, id: &str) -> Result<DatasetLock, DataError> {
        let (f, path) = open_lock_file(staging, id)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(DatasetLock { _lock: l, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(DataError::Locked(id.to_string())),
            Err((_, e)) => Err(DataError::Io {
                action: "locking",
                path,
                source: e.into(),
            }),
        }
    }
}

/// Opens (creating, 0600 directory) `staging/locks/NAME.lock`, the file every custody lock
/// (dataset, client, depot-wide) is an `flock` on; returns it with its path for messages.
pub(crate) fn open_lock_file(staging: &Path, name: &str) -> Result<(File, PathBuf), DataError> {
    let dir = staging.join("locks");
    crate::keystore::mkdir_private(&dir)?;
    let path = dir.join(format!("{name}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("opening lock", &path))?;
    Ok((f, path))
}

/// Checks a client id or ticket: 1-64 of `[A-Za-z0-9._-]`, not starting with a dot (they become
/// file names and must not carry personal data such as names or e-mail addresses).
pub fn check_ident(what: &'static str, s: &str) -> Result<(), DataError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DataError::Invalid {
            what,
            value: s.to_string(),
            reason: "use 1-64 characters of A-Z a-z 0-9 . _ - (an id, not a name)".into(),
        })
    }
}

/// RFC 3339 text of a time.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formatting time")
}

/// Parses RFC 3339.
pub fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_serialize() {
        let id = DatasetId::generate(time::OffsetDateTime::now_utc());
        let back: DatasetId = id.to_string().parse().unwrap();
        assert_eq!(back, id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
        assert!("../x".parse::<DatasetId>().is_err());
        assert_eq!(id.as_str().len(), "ds-YYYYMMDD-".len() + 32, "{id}");
        // Ids made before 128-bit ids still parse.
        "ds-20260306-5f2c9a1e".parse::<DatasetId>().unwrap();
        assert_eq!(
            serde_json::to_string(&DatasetState::Migrated).unwrap(),
            "\"migrated\""
        );
    }

    #[test]
    fn idents() {
        check_ident("client", "C-1042").unwrap();
        assert!(check_ident("client", "../x").is_err());
        assert!(check_ident("client", "john doe@x").is_err());
        assert!(check_ident("client", "").is_err());
    }

    #[test]
    fn format_1_meta_with_a_device_path_is_read_without_the_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("meta.json"),
            r#"{"format":1,"id":"ds-20260101-00000000","client":"C","ticket":"T",
               "created":"2026-01-01T00:00:00Z","entries":1,"bytes":1,"state":"migrated",
               "ciphertext_bytes":1,"data_mac":"m","manifest_mac":"m",
               "migrations":[{"at":"2026-01-01T00:00:00Z","entries_verified":1,"bytes_verified":1,
               "dest":{"job":"j-1","device_serial":"S 1","device":"/var/tmp/jane/disk.img"}}]}"#,
        )
        .unwrap();
        let m = Meta::load(d.path()).unwrap();
        assert_eq!(m.format, META_FORMAT);
        let dest = &m.migrations[0].dest;
        assert_eq!(dest.job.as_deref(), Some("j-1"));
        assert_eq!(dest.device.serial.as_deref(), Some("S_1"));
        m.save(d.path()).unwrap();
        let text = std::fs::read_to_string(d.path().join("meta.json")).unwrap();
        assert!(
            !text.contains("jane") && text.contains("\"format\": 2"),
            "{text}"
        );
        assert_eq!(Meta::load(d.path()).unwrap(), m);
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let a = DatasetLock::try_take(d.path(), "ds-1").unwrap();
        assert!(matches!(
            DatasetLock::try_take(d.path(), "ds-1"),
            Err(DataError::Locked(_))
        ));
        drop(a);
        DatasetLock::try_take(d.path(), "ds-1").unwrap();
    }
}
