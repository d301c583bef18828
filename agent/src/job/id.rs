//! A job's id: `j-` and 32 lowercase hex digits (128 random bits), drawn by [`JobId::random`].
//! Records of older versions carry `j-` and 8 hex digits and are still read.
//!
//! The id names the job's journal file (`<state>/jobs/<id>.json`) and its reports, so an id is
//! only ever ASCII letters, digits and `-` ([`JobId::from_str`] refuses anything else): an id
//! from a request or a command line can never name another path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's id (see the module docs). Serialized as its string, as job records always had it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

/// A string that is no job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id \"{}\" is not valid (only letters, digits and -)", .0.escape_debug())]
pub struct BadJobId(pub String);

impl JobId {
    /// A fresh id: `j-` and 128 random bits in hex. The journal creates a record exclusively,
    /// so even a collision never overwrites a job.
    pub fn random() -> JobId {
        let mut bytes = [0u8; 16];
        // The kernel's CSPRNG; failing to read it means the system is unusable anyway.
        getrandom::getrandom(&mut bytes).expect("reading random bytes for a job id");
        JobId(format!("j-{}", hex::encode(bytes)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = BadJobId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(BadJobId(s.to_string()));
        }
        Ok(JobId(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An id is text wherever text is asked for (`journal.load(&job.id)`, `format!`).
impl std::ops::Deref for JobId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_new_and_valid() {
        let ids: std::collections::HashSet<JobId> = (0..1000).map(|_| JobId::random()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.as_str().len(), 34);
            assert_eq!(id.as_str().parse::<JobId>().unwrap(), *id);
        }
    }

    #[test]
    fn old_short_ids_are_read_and_paths_are_refused() {
        assert!("j-0a1b2c3d".parse::<JobId>().is_ok());
        for bad in ["", "../etc/passwd", "j-1/../x", "j 1", "j-1.json", "é"] {
            let e = bad.parse::<JobId>().unwrap_err();
            assert!(e.to_string().contains("not valid"), "{bad}: {e}");
        }
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
        let id: JobId = serde_json::from_str("\"j-0a1b2c3d\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"j-0a1b2c3d\"");
    }
}
