//! Key custody: the depot key-encryption key (KEK), dataset keys wrapped under it, and the
//! destroy-a-file routine used for keys and ciphertext (overwrite, fsync, unlink, fsync the dir).
//!
//! Layout under the keys directory: `kek` (32 random bytes, mode 0600, made on first ingest),
//! `kek.check` (keyed BLAKE3 of a fixed string: tells a wrong KEK from a tampered key file),
//! `datasets/<id>.key` (JSON, format 1: XChaCha20-Poly1305 of the 32-byte dataset key under the
//! KEK, associated data = dataset id), `epochs/` (key-backup epochs, see `backup`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};

use crate::error::{DataError, io};
use crate::stream::Key;

const CHECK_CONTEXT: &[u8] = b"tek kek check v1";

/// The key directory and the KEK location.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
    kek_path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WrappedKey {
    format: u32,
    dataset: String,
    nonce: String,
    wrapped: String,
}

impl Keystore {
    /// Keys under `dir`; the KEK at `kek_path` (default `dir/kek`).
    pub fn new(dir: &Path, kek_path: Option<&Path>) -> Keystore {
        Keystore {
            dir: dir.to_path_buf(),
            kek_path: kek_path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.join("kek")),
        }
    }

    /// The KEK file.
    pub fn kek_path(&self) -> &Path {
        &self.kek_path
    }

    /// Where dataset `id`'s wrapped key lives.
    pub fn key_path(&self, id: &str) -> PathBuf {
        self.dir.join("datasets").join(format!("{id}.key"))
    }

    /// The epochs directory.
    pub fn epochs_dir(&self) -> PathBuf {
        self.dir.join("epochs")
    }

    fn check_path(&self) -> PathBuf {
        self.dir.join("kek.check")
    }

    fn any_wrapped_keys(&self) -> bool {
        fs::read_dir(self.dir.join("datasets"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Loads the KEK; when `create` and none exists yet (and nothing depends on one), makes it.
    pub fn kek(&self, create: bool) -> Result<Key, DataError> {
        let check_path = self.check_path();
        let mut bytes = Vec::new();
        match File::open(&self.kek_path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)
                    .map_err(io("reading key-encryption key", &self.kek_path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create || self.any_wrapped_keys() || check_path.exists() {
                    return Err(DataError::KekMissing(self.kek_path.clone()));
                }
                return self.make_kek();
            }
            Err(e) => return Err(io("opening key-encryption key", &self.kek_path)(e)),
        }
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| DataError::KekInvalid {
                path: self.kek_path.clone(),
                reason: format!("expected 32 bytes, found {}", bytes.len()),
            })?;
        let key = Key(key);
        let expect = blake3::keyed_hash(&key.0, CHECK_CONTEXT)
            .to_hex()
            .to_string();
        match fs::read_to_string(&check_path) {
            Ok(s) if s.trim() == expect => Ok(key),
            Ok(_) => Err(DataError::KekInvalid {
                path: self.kek_path.clone(),
                reason: format!(
                    "does not match {} (wrong key-encryption key?)",
                    check_path.display()
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_private(&check_path, expect.as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(io("reading", &check_path)(e)),
        }
    }

    fn make_kek(&self) -> Result<Key, DataError> {
        let key = Key::random();
        if let Some(parent) = self.kek_path.parent() {
            mkdir_private(parent)?;
        }
        write_private(&self.kek_path, &key.0)?;
        let check = blake3::keyed_hash(&key.0, CHECK_CONTEXT)
            .to_hex()
            .to_string();
        write_private(&self.check_path(), check.as_bytes())?;
        Ok(key)
    }

    /// Wraps and stores dataset `id`'s key.
    pub fn store(&self, kek: &Key, id: &str, key: &Key) -> Result<(), DataError> {
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).expect("getrandom failed");
        let aead = XChaCha20Poly1305::new(&kek.0.into());
        let wrapped = aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &key.0,
                    aad: id.as_bytes(),
                },
            )
            .expect("encrypting 32 bytes cannot fail");
        let w = WrappedKey {
            format: 1,
            dataset: id.to_string(),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
        };
        let path = self.key_path(id);
        mkdir_private(path.parent().expect("key path has a parent"))?;
        write_private(
            &path,
            serde_json::to_string(&w).expect("serialize").as_bytes(),
        )?;
        Ok(())
    }

    /// Loads and unwraps dataset `id`'s key.
    pub fn load(&self, kek: &Key, id: &str) -> Result<Key, DataError> {
        let path = self.key_path(id);
        let text = fs::read_to_string(&path).map_err(io("reading wrapped key", &path))?;
        let corrupt = |reason: &str| DataError::Corrupt {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let w: WrappedKey = serde_json::from_str(&text).map_err(|e| corrupt(&e.to_string()))?;
        if w.format != 1 || w.dataset != id {
            return Err(corrupt("unknown format or wrong dataset"));
        }
        let nonce = hex::decode(&w.nonce).map_err(|_| corrupt("bad nonce"))?;
        let ct = hex::decode(&w.wrapped).map_err(|_| corrupt("bad wrapped key"))?;
        if nonce.len() != 24 {
            return Err(corrupt("bad nonce length"));
        }
        let aead = XChaCha20Poly1305::new(&kek.0.into());
        let plain = aead
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| DataError::Tampered {
                id: id.to_string(),
                what: "wrapped key",
                detail: format!(
                    "{} does not unwrap under the key-encryption key",
                    path.display()
                ),
            })?;
        let k: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("bad key length"))?;
        Ok(Key(k))
    }

    /// True when dataset `id` still has a wrapped key.
    pub fn has(&self, id: &str) -> bool {
        self.key_path(id).exists()
    }

    /// Destroys dataset `id`'s wrapped key (overwrite, fsync, unlink, fsync dir). Missing is fine.
    pub fn destroy(&self, id: &str) -> Result<bool, DataError> {
        let path = self.key_path(id);
        if !path.exists() {
            return Ok(false);
        }
        shred(&path, false)?;
        Ok(true)
    }
}

/// Creates `dir` (and parents) with mode 0700.
pub fn mkdir_private(dir: &Path) -> Result<(), DataError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("setting mode of", dir))
}

/// Writes a small private file durably: temp file 0600, fsync, rename, fsync the directory.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), DataError> {
    let dir = path.parent().expect("file path has a parent");
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().expect("file name").to_string_lossy(),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(data).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    sync_dir(dir)
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), DataError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Overwrites `path` once with zeros, fsyncs, optionally reads it back with the page cache
/// dropped to check the overwrite landed, unlinks it and fsyncs the directory. Returns the number
/// of bytes overwritten.
///
/// On journalling or copy-on-write filesystems and on flash, an in-place overwrite is not
/// guaranteed to hit the old blocks; the overwrite is defence in depth, the real sanitization is
/// the destruction of the key (cryptographic erase).
pub fn shred(path: &Path, verify: bool) -> Result<u64, DataError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("opening for overwrite", path))?;
    let len = f.metadata().map_err(io("reading size of", path))?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io("overwriting", path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io("syncing overwrite of", path))?;
    if verify {
        use std::io::Seek;
        use std::os::fd::AsRawFd;
        // Clean pages can be dropped after the fsync, so the read below comes from the device.
        let _ = nix::fcntl::posix_fadvise(
            f.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        f.seek(std::io::SeekFrom::Start(0))
            .map_err(io("seeking", path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io("reading back overwrite of", path))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(DataError::Corrupt {
                    path: path.to_path_buf(),
                    reason: "overwrite did not read back as zeros".into(),
                });
            }
        }
    }
    drop(f);
    fs::remove_file(path).map_err(io("unlinking", path))?;
    sync_dir(path.parent().expect("file path has a parent"))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_made_once_and_wraps() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path(), None);
        let kek = ks.kek(true).unwrap();
        let mode = fs::metadata(ks.kek_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let k = Key::random();
        ks.store(&kek, "ds-1", &k).unwrap();
        assert_eq!(ks.load(&ks.kek(true).unwrap(), "ds-1").unwrap().0, k.0);
        assert!(ks.destroy("ds-1").unwrap());
        assert!(!ks.has("ds-1"));
    }

    #[test]
    fn missing_and_wrong_kek() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path(), None);
        let kek = ks.kek(true).unwrap();
        ks.store(&kek, "ds-1", &Key::random()).unwrap();
        fs::remove_file(ks.kek_path()).unwrap();
        assert!(matches!(ks.kek(true), Err(DataError::KekMissing(_))));
        fs::write(ks.kek_path(), [7u8; 32]).unwrap();
        assert!(matches!(ks.kek(true), Err(DataError::KekInvalid { .. })));
        fs::write(ks.kek_path(), [7u8; 5]).unwrap();
        assert!(matches!(ks.kek(true), Err(DataError::KekInvalid { .. })));
        assert!(ks.has("ds-1"), "nothing deleted");
    }

    #[test]
    fn shred_zeroes_and_unlinks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, vec![5u8; 3 << 20]).unwrap();
        assert_eq!(shred(&p, true).unwrap(), 3 << 20);
        assert!(!p.exists());
    }
}
