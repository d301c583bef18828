//! Manifest signatures: ed25519 over the manifest file's exact bytes.
//!
//! Files (all versioned by their first word or `format` field):
//! - secret key `NAME.key`: `tek-ed25519-secret-v1 <base64 32-byte seed>` (mode 0600);
//! - public key `NAME.pub`: `tek-ed25519-public-v1 <base64 32-byte key>`; the trusted keys
//!   directory holds such files and a key's id is its file stem;
//! - signature `images/NAME/VERSION.sig`: JSON `{format, algorithm, key_id, public_key, signature}`.
//!
//! The signed message is a domain-separation prefix followed by the manifest bytes, so a signature
//! can never be replayed as a signature over some other kind of tek document.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

const SECRET_TAG: &str = "tek-ed25519-secret-v1";
const PUBLIC_TAG: &str = "tek-ed25519-public-v1";
const DOMAIN: &[u8] = b"tek-manifest-signature-v1\n";
/// Version of the `.sig` file format.
pub const SIGNATURE_FORMAT: u32 = 1;

/// Whether a manifest's signature is valid and by which key.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SignatureStatus {
    /// Signed by a trusted key; `key_id` is the trusted key's file stem.
    Valid {
        /// Name of the trusted key.
        key_id: String,
    },
    /// No signature file.
    Unsigned,
    /// Signed, but not by a trusted key (`key_id` as the signer named it).
    UnknownKey {
        /// The signer's key id.
        key_id: String,
    },
    /// The signature does not match the manifest (or the signature file is malformed).
    Invalid {
        /// Why.
        reason: String,
    },
}

impl SignatureStatus {
    /// True only for [`SignatureStatus::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, SignatureStatus::Valid { .. })
    }
}

impl std::fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureStatus::Valid { key_id } => write!(f, "valid (trusted key {key_id})"),
            SignatureStatus::Unsigned => f.write_str("unsigned"),
            // The id is the signature file's claim (hostile input): shown escaped.
            SignatureStatus::UnknownKey { key_id } => {
                write!(f, "signed by untrusted key {}", key_id.escape_debug())
            }
            SignatureStatus::Invalid { reason } => write!(f, "INVALID: {reason}"),
        }
    }
}

/// The `.sig` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    format: u32,
    algorithm: String,
    key_id: String,
    public_key: String,
    signature: String,
}

/// A secret signing key loaded from a `NAME.key` file.
pub struct SigningKey {
    key_id: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.key_id)
    }
}

fn decode_key_file(path: &Path, tag: &str) -> Result<[u8; 32], StoreError> {
    let bad = |reason: String| StoreError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("no such key file".into()),
        _ => bad(format!("reading: {e}")),
    })?;
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

fn key_id_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl SigningKey {
    /// Loads a secret key file; its id is the file stem.
    pub fn load(path: &Path) -> Result<SigningKey, StoreError> {
        let seed = decode_key_file(path, SECRET_TAG)?;
        Ok(SigningKey {
            key_id: key_id_of(path),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The key's id (file stem of the key file).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs manifest bytes; returns the `.sig` file contents.
    pub fn sign_manifest(&self, manifest: &[u8]) -> Vec<u8> {
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(manifest);
        let sig = self.key.sign(&msg);
        let file = SignatureFile {
            format: SIGNATURE_FORMAT,
            algorithm: "ed25519".into(),
            key_id: self.key_id.clone(),
            public_key: B64.encode(self.key.verifying_key().as_bytes()),
            signature: B64.encode(sig.to_bytes()),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("serializing signature");
        out.push(b'\n');
        out
    }
}

/// Makes a new key pair `DIR/NAME.key` (0600) and `DIR/NAME.pub`; refuses to overwrite.
pub fn generate_keypair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), StoreError> {
    crate::image_ref::ImageRef::new(name, "x").map_err(|_| StoreError::BadKey {
        path: dir.join(name),
        reason: "key name must use only letters, digits and . _ + -".into(),
    })?;
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("creating key directory", dir, e))?;
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| StoreError::BadKey {
        path: dir.join(name),
        reason: format!("getting random bytes: {e}"),
    })?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(StoreError::BadKey {
                path: p.clone(),
                reason: "already exists; refusing to overwrite a key".into(),
            });
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(|e| StoreError::io("creating secret key", &secret, e))?;
    writeln!(f, "{SECRET_TAG} {}", B64.encode(seed))
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::io("writing secret key", &secret, e))?;
    std::fs::write(
        &public,
        format!(
            "{PUBLIC_TAG} {}\n",
            B64.encode(key.verifying_key().as_bytes())
        ),
    )
    .map_err(|e| StoreError::io("writing public key", &public, e))?;
    Ok((secret, public))
}

/// Loads every `*.pub` in the trusted keys directory (a missing directory trusts nothing).
fn trusted_keys(dir: &Path) -> Result<Vec<(String, [u8; 32])>, StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("reading trusted keys", dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| StoreError::io("reading trusted keys", dir, e))?;
        let p = ent.path();
        if p.extension().is_some_and(|x| x == "pub") {
            // A malformed file in the trusted directory is an error, not silently ignored: a
            // maintainer would otherwise wonder why their key is "unknown".
            out.push((key_id_of(&p), decode_key_file(&p, PUBLIC_TAG)?));
        }
    }
    out.sort();
    Ok(out)
}

/// True when `dir` holds at least one trusted public key (a bench trusting none can accept
/// no signed manifest, and should be told that rather than "untrusted key").
pub fn trusts_any(dir: &Path) -> Result<bool, StoreError> {
    Ok(!trusted_keys(dir)?.is_empty())
}

/// What can be known of `.sig` bytes before the manifest they sign is read: `None` when they
/// are well formed and name a trusted public key (the signature itself is checked later, by
/// [`check`], against the manifest's bytes), else the status [`check`] would give at best
/// (`Invalid` or `UnknownKey`). A remote's manifest that no trusted key could have signed is
/// thus refused before it is fetched or inflated.
pub fn precheck(
    signature: &[u8],
    trusted_dir: &Path,
) -> Result<Option<SignatureStatus>, StoreError> {
    let invalid = |reason: String| Ok(Some(SignatureStatus::Invalid { reason }));
    let (file, pk) = match parse_file(signature) {
        Ok(f) => f,
        Err(reason) => return invalid(reason),
    };
    let trusted = trusted_keys(trusted_dir)?;
    if trusted.iter().any(|(_, k)| *k == pk) {
        return Ok(None);
    }
    if trusted.iter().any(|(id, _)| *id == file.key_id) {
        return invalid(format!(
            "signed by a key that calls itself {} but is not the trusted key of that name",
            file.key_id.escape_debug()
        ));
    }
    Ok(Some(SignatureStatus::UnknownKey {
        key_id: file.key_id,
    }))
}

/// A `.sig` file's document and its public key, or why it is not one this tek reads.
fn parse_file(signature: &[u8]) -> Result<(SignatureFile, [u8; 32]), String> {
    let file: SignatureFile =
        serde_json::from_slice(signature).map_err(|e| format!("malformed signature file: {e}"))?;
    if file.format != SIGNATURE_FORMAT || file.algorithm != "ed25519" {
        return Err(format!(
            "unsupported signature format {} / {}",
            file.format, file.algorithm
        ));
    }
    let pk = B64
        .decode(&file.public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or("malformed public key in signature file")?;
    Ok((file, pk))
}

/// Checks `.sig` bytes (None: unsigned) against the manifest bytes and the trusted keys.
pub fn check(
    manifest: &[u8],
    signature: Option<&[u8]>,
    trusted_dir: &Path,
) -> Result<SignatureStatus, StoreError> {
    let Some(sig) = signature else {
        return Ok(SignatureStatus::Unsigned);
    };
    let invalid = |reason: String| Ok(SignatureStatus::Invalid { reason });
    let (file, pk) = match parse_file(sig) {
        Ok(f) => f,
        Err(reason) => return invalid(reason),
    };
    let sig_bytes: [u8; 64] = match B64
        .decode(&file.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
    {
        Some(s) => s,
        None => return invalid("malformed signature bytes".into()),
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
        return invalid("public key in signature file is not a valid ed25519 key".into());
    };
    // Streamed over the domain and the manifest, the same check as `verify` over their
    // concatenation without copying the manifest (up to 256 MiB from a remote) once more.
    let ok = vk
        .verify_stream(&ed25519_dalek::Signature::from_bytes(&sig_bytes))
        .is_ok_and(|mut v| {
            v.update(DOMAIN);
            v.update(manifest);
            v.finalize_and_verify().is_ok()
        });
    let trusted = trusted_keys(trusted_dir)?;
    match trusted.iter().find(|(_, k)| *k == pk) {
        Some((id, _)) if ok => Ok(SignatureStatus::Valid { key_id: id.clone() }),
        Some((id, _)) => invalid(format!(
            "signature by trusted key {id} does not match the manifest (tampered?)"
        )),
        // A signer naming itself after a trusted key it is not: an impersonation, never shown
        // as that key's name alone.
        None if trusted.iter().any(|(id, _)| *id == file.key_id) => invalid(format!(
            "signed by a key that calls itself {} but is not the trusted key of that name",
            file.key_id.escape_debug()
        )),
        None if ok => Ok(SignatureStatus::UnknownKey {
            key_id: file.key_id,
        }),
        None => invalid(format!(
            "signature by untrusted key {} does not match the manifest",
            file.key_id.escape_debug()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precheck_refuses_what_no_trusted_key_signed_without_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let trusted = d.path().join("trusted");
        let (sk, pk) = generate_keypair(&d.path().join("keys"), "maint").unwrap();
        let sig = SigningKey::load(&sk).unwrap().sign_manifest(b"{}");
        let st = precheck(&sig, &trusted).unwrap();
        assert_eq!(
            st,
            Some(SignatureStatus::UnknownKey {
                key_id: "maint".into()
            })
        );
        std::fs::create_dir_all(&trusted).unwrap();
        std::fs::copy(&pk, trusted.join("depot.pub")).unwrap();
        assert_eq!(precheck(&sig, &trusted).unwrap(), None);
        let st = precheck(b"{not json", &trusted).unwrap();
        assert!(
            matches!(st, Some(SignatureStatus::Invalid { .. })),
            "{st:?}"
        );
    }

    #[test]
    fn sign_and_check() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("keys");
        let trusted = d.path().join("trusted");
        let (sk, pk) = generate_keypair(&keys, "maint").unwrap();
        let key = SigningKey::load(&sk).unwrap();
        let sig = key.sign_manifest(b"{\"a\":1}");
        assert_eq!(
            check(b"{\"a\":1}", Some(&sig), &trusted).unwrap(),
            SignatureStatus::UnknownKey {
                key_id: "maint".into()
            }
        );
        std::fs::create_dir_all(&trusted).unwrap();
        std::fs::copy(&pk, trusted.join("depot-a.pub")).unwrap();
        assert_eq!(
            check(b"{\"a\":1}", Some(&sig), &trusted).unwrap(),
            SignatureStatus::Valid {
                key_id: "depot-a".into()
            }
        );
        let st = check(b"{\"a\":2}", Some(&sig), &trusted).unwrap();
        assert!(matches!(st, SignatureStatus::Invalid { .. }), "{st:?}");
        assert_eq!(
            check(b"x", None, &trusted).unwrap(),
            SignatureStatus::Unsigned
        );
        let st = check(b"x", Some(b"{not json"), &trusted).unwrap();
        assert!(matches!(st, SignatureStatus::Invalid { .. }));
        // Refuses to overwrite.
        assert!(generate_keypair(&keys, "maint").is_err());

        // Another key calling itself "depot-a" (the trusted key's name): refused as such, and
        // a claimed name with control characters is shown escaped.
        let (sk2, _) = generate_keypair(&keys, "depot-a").unwrap();
        let sig2 = SigningKey::load(&sk2).unwrap().sign_manifest(b"{\"a\":1}");
        let st = check(b"{\"a\":1}", Some(&sig2), &trusted).unwrap();
        assert!(
            st.to_string()
                .contains("calls itself depot-a but is not the trusted key of that name"),
            "{st}"
        );
        let st = SignatureStatus::UnknownKey {
            key_id: "x\u{1b}[2J\nsignature valid".into(),
        };
        assert!(!st.to_string().chars().any(char::is_control), "{st}");
    }

    #[test]
    fn wrong_or_missing_key_files() {
        let d = tempfile::tempdir().unwrap();
        let e = SigningKey::load(&d.path().join("nope.key")).unwrap_err();
        assert!(e.to_string().contains("no such key file"), "{e}");
        let (_, pk) = generate_keypair(d.path(), "k").unwrap();
        // A public key given where the secret key is expected.
        let e = SigningKey::load(&pk).unwrap_err();
        assert!(
            e.to_string().contains("expected a tek-ed25519-secret-v1"),
            "{e}"
        );
        std::fs::write(d.path().join("bad.key"), "tek-ed25519-secret-v1 AAAA\n").unwrap();
        let e = SigningKey::load(&d.path().join("bad.key")).unwrap_err();
        assert!(e.to_string().contains("expected 32"), "{e}");
    }
}
