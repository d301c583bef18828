//! `NAME@VERSION`: how images are named on the command line and laid out in the store
//! (`images/NAME/VERSION.json`). Both parts are restricted to characters that are safe as a single
//! path component and in a URL, so a reference can never escape the store directory.

use std::fmt;
use std::str::FromStr;

use crate::error::StoreError;

/// Longest name or version accepted.
pub const MAX_PART_LEN: usize = 128;

/// "NAME@VERSION"; name and version: `[A-Za-z0-9._+-]`, 1..=128 chars, not starting with '.' or '-'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
}

impl ImageRef {
    /// Builds a reference from its parts, checking both.
    pub fn new(name: &str, version: &str) -> Result<ImageRef, StoreError> {
        let input = format!("{name}@{version}");
        check_part(&input, "name", name)?;
        check_part(&input, "version", version)?;
        Ok(ImageRef {
            name: name.to_string(),
            version: version.to_string(),
        })
    }
}

fn check_part(input: &str, what: &str, part: &str) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError::BadImageRef {
        input: input.to_string(),
        reason,
    };
    if part.is_empty() {
        return Err(bad(format!("{what} is empty")));
    }
    if part.len() > MAX_PART_LEN {
        return Err(bad(format!(
            "{what} is {} characters, at most {MAX_PART_LEN} allowed",
            part.len()
        )));
    }
    if part.starts_with('.') || part.starts_with('-') {
        return Err(bad(format!("{what} must not start with '.' or '-'")));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        return Err(bad(format!(
            "{what} contains '{}'; only letters, digits and . _ + - are allowed",
            c.escape_debug()
        )));
    }
    Ok(())
}

impl FromStr for ImageRef {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, version)) = s.split_once('@') else {
            return Err(StoreError::BadImageRef {
                input: s.to_string(),
                reason: "expected NAME@VERSION".to_string(),
            });
        };
        ImageRef::new(name, version)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Written as `"NAME@VERSION"` (a config's `default_image`, a job record's `image`).
impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read from `"NAME@VERSION"`, checked as [`ImageRef::from_str`] checks it.
impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let r: ImageRef = "win11-pro@2024.06+1_a".parse().unwrap();
        assert_eq!(r.name, "win11-pro");
        assert_eq!(r.version, "2024.06+1_a");
        assert_eq!(r.to_string(), "win11-pro@2024.06+1_a");
    }

    #[test]
    fn rejects_unsafe() {
        for bad in [
            "noversion",
            "@1",
            "a@",
            "../x@1",
            "a/b@1",
            "a@1/2",
            ".hidden@1",
            "a@..",
            "-opt@1",
            "a@1@2",
            "a b@1",
            "a@1\n",
            "ä@1",
        ] {
            let e = bad.parse::<ImageRef>().unwrap_err();
            assert!(
                matches!(e, StoreError::BadImageRef { .. }),
                "{bad:?} gave {e}"
            );
        }
        let long = format!("{}@1", "a".repeat(129));
        assert!(long.parse::<ImageRef>().is_err());
        let ok = format!("{}@1", "a".repeat(128));
        assert!(ok.parse::<ImageRef>().is_ok());
    }

    #[test]
    fn serde_is_the_name_at_version_string_and_checks_it() {
        let r: ImageRef = serde_json::from_str("\"win11@2024.10\"").unwrap();
        assert_eq!(r, ImageRef::new("win11", "2024.10").unwrap());
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"win11@2024.10\"");
        let e = serde_json::from_str::<ImageRef>("\"noversion\"").unwrap_err();
        assert!(e.to_string().contains("NAME@VERSION"), "{e}");
        assert!(serde_json::from_str::<ImageRef>("\"a@../x\"").is_err());
    }
}
