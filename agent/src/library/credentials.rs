//! The library's credentials file (format 1, see the module docs of `library`): refused unless
//! it is a regular file of mode 0600 (no group or other bits) owned by root or by the user the
//! agent runs as, so a secret another user can read or replace is never used. Errors name the
//! file and the reason, never a byte of its content.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Result, bail};
use image_library::Secret;
use serde::Deserialize;

/// What the file holds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

/// An S3 access key read from a checked credentials file.
pub struct Credentials {
    /// The access key id (not secret: S3 servers log it).
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: Secret,
    /// A session token going with temporary credentials.
    pub session_token: Option<Secret>,
}

/// Reads and checks the credentials file at `path`.
pub fn read_credentials(path: &Path) -> Result<Credentials> {
    let shown = path.display();
    // Not followed: a link's target could be any file.
    let md = std::fs::symlink_metadata(path)
        .map_err(|e| anyhow::anyhow!("library credentials {shown}: {e}"))?;
    if !md.file_type().is_file() {
        bail!("library credentials {shown}: not a regular file (a link or a directory)");
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "library credentials {shown}: mode {mode:04o} lets other users read or change it; \
             it must be 0600 (chmod 600 {shown})"
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != 0 && md.uid() != me {
        bail!(
            "library credentials {shown}: owned by uid {}, not by root or the agent's user \
             (uid {me})",
            md.uid()
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("library credentials {shown}: {e}"))?;
    // toml's messages quote the offending line: it may hold the secret, so only the position
    // is kept.
    let f: File = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!(" at line {line}")
            })
            .unwrap_or_default();
        anyhow::anyhow!(
            "library credentials {shown}: not a credentials file{at} (expected TOML with \
             access_key_id and secret_access_key, and optionally session_token)"
        )
    })?;
    if f.access_key_id.trim().is_empty() || f.secret_access_key.is_empty() {
        bail!("library credentials {shown}: access_key_id and secret_access_key must not be empty");
    }
    Ok(Credentials {
        access_key_id: f.access_key_id,
        secret_access_key: Secret::new(f.secret_access_key),
        session_token: f.session_token.map(Secret::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    const GOOD: &str = "access_key_id = \"AKIDTEST\"\nsecret_access_key = \"s3cr3t-value\"\n";

    #[test]
    fn a_0600_file_of_ours_is_read() {
        let d = tempfile::tempdir().unwrap();
        let c = read_credentials(&write(d.path(), "c.toml", GOOD, 0o600)).unwrap();
        assert_eq!(c.access_key_id, "AKIDTEST");
        assert_eq!(format!("{:?}", c.secret_access_key), "***");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason_and_never_the_secret() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let link = p.join("link.toml");
        std::os::unix::fs::symlink(write(p, "t.toml", GOOD, 0o600), &link).unwrap();
        let other = write(p, "o.toml", GOOD, 0o600);
        nix::unistd::chown(&other, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        let cases = [
            (write(p, "a.toml", GOOD, 0o644), "mode 0644"),
            (write(p, "b.toml", GOOD, 0o640), "mode 0640"),
            (link, "not a regular file"),
            (p.join("absent.toml"), "No such file"),
            (other, "owned by uid 4242"),
            (
                write(p, "c.toml", "secret_access_key = \"s3cr3t-value\n", 0o600),
                "not a credentials file at line 1",
            ),
            (
                write(
                    p,
                    "e.toml",
                    "access_key_id = \"A\"\nsecret_access_key = \"s3cr3t-value\"\nx = 1\n",
                    0o600,
                ),
                "not a credentials file",
            ),
            (
                write(
                    p,
                    "f.toml",
                    "access_key_id = \"\"\nsecret_access_key = \"s3cr3t-value\"\n",
                    0o600,
                ),
                "must not be empty",
            ),
        ];
        for (path, want) in cases {
            let e = format!("{:#}", read_credentials(&path).err().unwrap());
            assert!(e.contains(want), "{}: {e}", path.display());
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }
}
