//! Signed checkpoints of the audit chain and the depot audit key.
//!
//! A checkpoint says "entry `seq` of this depot's log had hash `hash`", signed with ed25519 by
//! the depot audit key. The chain alone is unkeyed (anyone can edit a line and recompute every
//! hash after it); a signature over a later hash cannot be recomputed without the key, so an
//! edited-and-rechained log fails at the first checkpoint after the edit, and a log cut short
//! fails against the last checkpoint and the signed head.
//!
//! Files:
//! - `<keys>/audit.key`: `tek-ed25519-secret-v1 <base64 seed>`, mode 0600, created on first use
//!   (only while no checkpoint or head exists: a missing key next to existing checkpoints is an
//!   error, never silently replaced); `<keys>/audit.pub`: `tek-ed25519-public-v1 <base64 key>`.
//!   Same text formats as image signing keys (image-store `signature.rs`).
//! - `<audit>/audit.checkpoints`: one [`Checkpoint`] JSON line per checkpoint (every
//!   [`CHECKPOINT_EVERY`] entries and at every service report), appended and fdatasync'd.
//! - `<audit>/audit.head`: the [`Checkpoint`] of the last entry, rewritten (temp, fsync, rename,
//!   directory fsync) after every append.
//!
//! Signed message: `"tek-audit-checkpoint-v1\n" + seq + "\n" + hash + "\n" + time + "\n"`.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, io};

/// Format version of a checkpoint line and of the head file.
pub const CHECKPOINT_FORMAT: u32 = 1;
/// A checkpoint is signed whenever an append crosses a multiple of this many entries.
pub const CHECKPOINT_EVERY: u64 = 100;
const DOMAIN: &str = "tek-audit-checkpoint-v1\n";
const SECRET_TAG: &str = "tek-ed25519-secret-v1";
const PUBLIC_TAG: &str = "tek-ed25519-public-v1";

/// A signed statement of the chain's hash at one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// Sequence number of the entry covered (entries `0..=seq`).
    pub seq: u64,
    /// That entry's hash.
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub time: String,
    /// The signer's public key (base64).
    pub public_key: String,
    /// ed25519 signature (base64).
    pub signature: String,
}

fn message(seq: u64, hash: &str, time: &str) -> Vec<u8> {
    format!("{DOMAIN}{seq}\n{hash}\n{time}\n").into_bytes()
}

impl Checkpoint {
    /// Checks the signature and that it was made by `key`; says what is wrong.
    pub fn check(&self, key: &AuditPublicKey) -> Result<(), String> {
        if self.format != CHECKPOINT_FORMAT {
            return Err(format!("unknown checkpoint format {}", self.format));
        }
        if self.public_key != key.base64() {
            return Err(format!(
                "signed by key {}, not by the depot audit key {}",
                self.public_key,
                key.base64()
            ));
        }
        let sig: [u8; 64] = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("signature is not 64 bytes of base64")?;
        key.0
            .verify(
                &message(self.seq, &self.hash, &self.time),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .map_err(|_| "signature does not verify (the checkpoint was altered)".to_string())
    }
}

/// The depot audit key's public half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPublicKey(ed25519_dalek::VerifyingKey);

impl AuditPublicKey {
    /// Reads a `tek-ed25519-public-v1` file.
    pub fn load(path: &Path) -> Result<AuditPublicKey, DataError> {
        let b = decode_key_file(path, PUBLIC_TAG)?;
        ed25519_dalek::VerifyingKey::from_bytes(&b)
            .map(AuditPublicKey)
            .map_err(|e| DataError::AuditKey {
                path: path.to_path_buf(),
                reason: format!("not an ed25519 public key: {e}"),
            })
    }

    /// The key as base64 (as checkpoints carry it).
    pub fn base64(&self) -> String {
        B64.encode(self.0.as_bytes())
    }
}

/// The depot audit signing key.
pub(crate) struct AuditKey(ed25519_dalek::SigningKey);

impl AuditKey {
    /// Loads `<keys>/audit.key`; when it is missing and `may_create`, creates it (and
    /// `audit.pub`) without ever replacing an existing file. Callers hold the audit log's lock.
    pub(crate) fn load_or_create(keys: &Path, may_create: bool) -> Result<AuditKey, DataError> {
        let path = secret_path(keys);
        if path.exists() || !may_create {
            let meta = fs::metadata(&path).map_err(|e| DataError::AuditKey {
                path: path.clone(),
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "missing, but signed checkpoints exist: restore the key from its safe place \
                     (a new key would make the old checkpoints unverifiable)"
                        .into()
                } else {
                    format!("reading: {e}")
                },
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(DataError::AuditKey {
                    path,
                    reason: format!(
                        "mode {:o} lets group or others read it; chmod 600 it",
                        meta.permissions().mode() & 0o777
                    ),
                });
            }
            let seed = decode_key_file(&path, SECRET_TAG)?;
            return Ok(AuditKey(ed25519_dalek::SigningKey::from_bytes(&seed)));
        }
        crate::keystore::mkdir_private(keys)?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).expect("getrandom failed");
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = public_path(keys);
        let pub_text = format!(
            "{PUBLIC_TAG} {}\n",
            B64.encode(key.verifying_key().as_bytes())
        );
        crate::keystore::write_private(&public, pub_text.as_bytes())?;
        fs::set_permissions(&public, fs::Permissions::from_mode(0o644))
            .map_err(io("setting mode of", &public))?;
        // Written under a temporary name and linked: link(2) never replaces an existing key.
        let tmp = keys.join(format!(".audit.key.tmp{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating audit key", &tmp))?;
        writeln!(f, "{SECRET_TAG} {}", B64.encode(seed))
            .and_then(|_| f.sync_all())
            .map_err(io("writing audit key", &tmp))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        linked.map_err(io("creating audit key", &path))?;
        crate::keystore::sync_dir(keys)?;
        Ok(AuditKey(key))
    }

    /// The public half.
    pub(crate) fn public(&self) -> AuditPublicKey {
        AuditPublicKey(self.0.verifying_key())
    }

    /// Signs entry `seq` with hash `hash`, now.
    pub(crate) fn sign(&self, seq: u64, hash: &str, time: String) -> Checkpoint {
        let sig = self.0.sign(&message(seq, hash, &time));
        Checkpoint {
            format: CHECKPOINT_FORMAT,
            seq,
            hash: hash.to_string(),
            time,
            public_key: B64.encode(self.0.verifying_key().as_bytes()),
            signature: B64.encode(sig.to_bytes()),
        }
    }
}

/// `<keys>/audit.key`.
pub fn secret_path(keys: &Path) -> PathBuf {
    keys.join("audit.key")
}

/// `<keys>/audit.pub`.
pub fn public_path(keys: &Path) -> PathBuf {
    keys.join("audit.pub")
}

fn decode_key_file(path: &Path, tag: &str) -> Result<[u8; 32], DataError> {
    let bad = |reason: String| DataError::AuditKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|e| bad(format!("reading: {e}")))?;
    let mut words = text.split_whitespace();
    let found = words.next().unwrap_or("");
    if found != tag {
        return Err(bad(format!("expected a {tag} key, found {found:?}")));
    }
    let b = B64
        .decode(words.next().unwrap_or(""))
        .map_err(|e| bad(format!("base64: {e}")))?;
    b.try_into()
        .map_err(|b: Vec<u8>| bad(format!("key is {} bytes, expected 32", b.len())))
}

/// Appends one checkpoint line and fdatasyncs.
pub(crate) fn append_checkpoint(path: &Path, cp: &Checkpoint) -> Result<(), DataError> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io("opening audit checkpoints", path))?;
    let mut line = serde_json::to_string(cp).expect("serialize checkpoint");
    line.push('\n');
    f.write_all(line.as_bytes())
        .map_err(io("appending to audit checkpoints", path))?;
    f.sync_data().map_err(io("syncing audit checkpoints", path))
}

/// Every checkpoint line, in file order (line number from 1, or the parse error).
pub(crate) fn read_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, DataError> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("opening audit checkpoints", path)(e)),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io("reading audit checkpoints", path))?;
        let cp = serde_json::from_str(&line).map_err(|e| DataError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        out.push(cp);
    }
    Ok(out)
}

/// The head file, if there is one.
pub(crate) fn read_head(path: &Path) -> Result<Option<Checkpoint>, DataError> {
    match fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| DataError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading audit head", path)(e)),
    }
}

/// Rewrites the head file durably.
pub(crate) fn write_head(path: &Path, cp: &Checkpoint) -> Result<(), DataError> {
    let mut text = serde_json::to_string(cp).expect("serialize head");
    text.push('\n');
    crate::keystore::write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_check_and_tamper() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("keys");
        let k = AuditKey::load_or_create(&keys, true).unwrap();
        let pk = AuditPublicKey::load(&public_path(&keys)).unwrap();
        let cp = k.sign(7, &"ab".repeat(32), "2026-01-01T00:00:00Z".into());
        cp.check(&pk).unwrap();
        let mut bad = cp.clone();
        bad.hash = "cd".repeat(32);
        assert!(bad.check(&pk).unwrap_err().contains("altered"));
        let mut bad = cp.clone();
        bad.seq = 8;
        assert!(bad.check(&pk).is_err());
        // The same key comes back; a second "first use" does not replace it.
        let again = AuditKey::load_or_create(&keys, true).unwrap();
        again.sign(1, "x", "t".into()).check(&pk).unwrap();
        let mode = fs::metadata(secret_path(&keys))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another key's checkpoint is refused.
        let other = tempfile::tempdir().unwrap();
        let k2 = AuditKey::load_or_create(other.path(), true).unwrap();
        let e = k2.sign(7, "x", "t".into()).check(&pk).unwrap_err();
        assert!(e.contains("not by the depot audit key"), "{e}");
    }

    #[test]
    fn missing_or_loose_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = AuditKey::load_or_create(d.path(), false).err().unwrap();
        assert!(e.to_string().contains("restore the key"), "{e}");
        AuditKey::load_or_create(d.path(), true).unwrap();
        fs::set_permissions(secret_path(d.path()), fs::Permissions::from_mode(0o640)).unwrap();
        let e = AuditKey::load_or_create(d.path(), true).err().unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
