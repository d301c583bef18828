//! Key custody: the depot key-encryption key (KEK), dataset keys wrapped under it, and the
//! destroy-a-file routine used for keys and ciphertext (overwrite, fsync, unlink, fsync the dir).
//!
//! Layout under the keys directory: `kek` (32 random bytes, mode 0600, made on first ingest under
//! the `kek.lock` flock; refused when group or others may read or write it),
//! `kek.check` (keyed BLAKE3 of a fixed string: tells a wrong KEK from a tampered key file),
//! `datasets/<id>.key` (JSON, format 1: XChaCha20-Poly1305 of the 32-byte dataset key under the
//! KEK, associated data = dataset id), `epochs/` (key-backup epochs, see `backup`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use nix::fcntl::{Flock, FlockArg};

use crate::error::{DataError, io};
use crate::stream::Key;

const CHECK_CONTEXT: &[u8] = b"tek kek check v1";

/// What `kek.check` holds for `key`.
fn check_of(key: &Key) -> String {
    blake3::keyed_hash(&key.0, CHECK_CONTEXT)
        .to_hex()
        .to_string()
}

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

    /// The KEK's check file (`kek.check`), which every copy of the KEK must travel with.
    pub fn check_path(&self) -> PathBuf {
        self.dir.join("kek.check")
    }

    fn any_wrapped_keys(&self) -> bool {
        fs::read_dir(self.dir.join("datasets"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Loads the KEK; when `create` and none exists yet (and nothing depends on one), makes it.
    ///
    /// Two first ingests can run at once (two technicians, or the CLI and the agent). Whatever
    /// is missing is therefore decided under an exclusive `flock` on `<keys>/kek.lock`: the one
    /// that finds no KEK makes it (temp file, fsync, `kek.check`, then `link(2)` into place,
    /// which fails rather than replace an existing KEK), the other waits and then reads the very
    /// same key. A `kek.check` missing next to an existing KEK is an error, never silently
    /// recreated: it cannot be told from a KEK swapped under the datasets.
    pub fn kek(&self, create: bool) -> Result<Key, DataError> {
        self.kek_made(create).map(|(key, _)| key)
    }

    /// [`Keystore::kek`], and whether this call made it: exactly one of any number of
    /// concurrent first calls gets `true` (the one that made it under the lock), so the
    /// operator is told once to back it up.
    pub fn kek_made(&self, create: bool) -> Result<(Key, bool), DataError> {
        // Fast path, no lock: both files there and agreeing.
        if let (Some(key), Some(check)) = (self.read_kek()?, self.read_check()?) {
            return Ok((self.checked(key, &check)?, false));
        }
        mkdir_private(&self.dir)?;
        let lock_path = self.dir.join("kek.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("opening key lock", &lock_path))?;
        let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| DataError::Io {
            action: "locking",
            path: lock_path.clone(),
            source: e.into(),
        })?;
        match (self.read_kek()?, self.read_check()?) {
            (Some(key), Some(check)) => Ok((self.checked(key, &check)?, false)),
            (Some(_), None) => Err(DataError::KekInvalid {
                path: self.kek_path.clone(),
                reason: format!(
                    "{} is missing, so this key cannot be told from a wrong one; restore it \
                     from the copy kept with the key-encryption key",
                    self.check_path().display()
                ),
            }),
            (None, check) => {
                if let Some(check) = &check
                    && let Some(key) = self.finish_interrupted(check)?
                {
                    // Made by an earlier call that was interrupted before it could say so.
                    return Ok((key, true));
                }
                if !create || self.any_wrapped_keys() || check.is_some() {
                    return Err(DataError::KekMissing(self.kek_path.clone()));
                }
                Ok((self.make_kek()?, true))
            }
        }
    }

    /// The KEK file's key, `None` if it does not exist. Refuses a file that group or others
    /// may read or write, and one that is not 32 bytes.
    fn read_kek(&self) -> Result<Option<Key>, DataError> {
        let mut f = match File::open(&self.kek_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("opening key-encryption key", &self.kek_path)(e)),
        };
        let meta = f
            .metadata()
            .map_err(io("reading metadata of key-encryption key", &self.kek_path))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(DataError::KekExposed {
                path: self.kek_path.clone(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        Read::by_ref(&mut f)
            .take(33)
            .read_to_end(&mut bytes)
            .map_err(io("reading key-encryption key", &self.kek_path))?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| DataError::KekInvalid {
                path: self.kek_path.clone(),
                reason: format!(
                    "expected 32 bytes, found {}",
                    if bytes.len() > 32 {
                        "more".to_string()
                    } else {
                        bytes.len().to_string()
                    }
                ),
            })?;
        Ok(Some(Key(key)))
    }

    fn read_check(&self) -> Result<Option<String>, DataError> {
        let p = self.check_path();
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &p)(e)),
        }
    }

    fn checked(&self, key: Key, check: &str) -> Result<Key, DataError> {
        if check_of(&key) == check {
            Ok(key)
        } else {
            Err(DataError::KekInvalid {
                path: self.kek_path.clone(),
                reason: format!(
                    "does not match {} (wrong key-encryption key?)",
                    self.check_path().display()
                ),
            })
        }
    }

    /// The KEK being made, before it is linked into place (see [`Keystore::make_kek`]).
    fn new_kek_path(&self) -> PathBuf {
        let name = self
            .kek_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kek".into());
        self.kek_path.with_file_name(format!(".{name}.new"))
    }

    /// A creation interrupted after `kek.check` was written but before the KEK was linked into
    /// place: finish it when the leftover key matches the check.
    fn finish_interrupted(&self, check: &str) -> Result<Option<Key>, DataError> {
        let new = self.new_kek_path();
        let Ok(bytes) = fs::read(&new) else {
            return Ok(None);
        };
        let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            return Ok(None);
        };
        let key = Key(key);
        if check_of(&key) != check {
            return Ok(None);
        }
        self.link_new_kek(&new)?;
        Ok(Some(key))
    }

    /// Makes a KEK; called under the key lock with neither KEK nor check present. Order: the key
    /// in a temp file (fsync), `kek.check` (durable), then `link(2)` of the temp file to the KEK
    /// path, which never replaces an existing file. A crash leaves either nothing usable (made
    /// again) or a temp file matching the check (finished by [`Keystore::finish_interrupted`]).
    fn make_kek(&self) -> Result<Key, DataError> {
        let key = Key::random();
        let dir = self.kek_path.parent().unwrap_or(Path::new("."));
        mkdir_private(dir)?;
        let new = self.new_kek_path();
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&new)
            .map_err(io("creating", &new))?;
        f.write_all(&key.0).map_err(io("writing", &new))?;
        f.sync_all().map_err(io("syncing", &new))?;
        drop(f);
        write_private(&self.check_path(), check_of(&key).as_bytes())?;
        self.link_new_kek(&new)?;
        Ok(key)
    }

    fn link_new_kek(&self, new: &Path) -> Result<(), DataError> {
        fs::hard_link(new, &self.kek_path).map_err(io("linking into place", &self.kek_path))?;
        fs::remove_file(new).map_err(io("removing", new))?;
        sync_dir(self.kek_path.parent().unwrap_or(Path::new(".")))
    }

    /// Wraps and stores the key of a new dataset `id`, failing with [`DataError::IdTaken`] when
    /// a wrapped key for `id` already exists (never replacing it: that would make the other
    /// dataset unreadable). Temp file, fsync, `link(2)` into place, fsync the directory.
    pub fn store_new(&self, kek: &Key, id: &str, key: &Key) -> Result<(), DataError> {
        let path = self.key_path(id);
        let dir = path.parent().expect("key path has a parent");
        mkdir_private(dir)?;
        let tmp = dir.join(format!(".{id}.key.new{}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        let written = f
            .write_all(wrap(kek, id, key).as_bytes())
            .and_then(|()| f.sync_all());
        drop(f);
        let linked =
            written
                .map_err(io("writing", &tmp))
                .and_then(|()| match fs::hard_link(&tmp, &path) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(DataError::IdTaken(id.to_string()))
                    }
                    r => r.map_err(io("linking into place", &path)),
                });
        let _ = fs::remove_file(&tmp);
        linked?;
        sync_dir(dir)
    }

    /// Wraps and stores dataset `id`'s key.
    pub fn store(&self, kek: &Key, id: &str, key: &Key) -> Result<(), DataError> {
        let path = self.key_path(id);
        mkdir_private(path.parent().expect("key path has a parent"))?;
        write_private(&path, wrap(kek, id, key).as_bytes())?;
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

/// The wrapped-key file's JSON for dataset `id`'s `key` under `kek`.
fn wrap(kek: &Key, id: &str, key: &Key) -> String {
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
    serde_json::to_string(&w).expect("serialize")
}

/// Creates `dir` (and the parents it lacks) with mode 0700. The mode goes to mkdir, so a
/// parent made on the way (`reports/` of `reports/sanitization`) is private too, whatever the
/// umask; the leaf's mode is set again in case a umask took bits away.
pub fn mkdir_private(dir: &Path) -> Result<(), DataError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating directory", dir))?;
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
        write_private(ks.kek_path(), &[7u8; 32]).unwrap();
        assert!(matches!(ks.kek(true), Err(DataError::KekInvalid { .. })));
        write_private(ks.kek_path(), &[7u8; 5]).unwrap();
        assert!(matches!(ks.kek(true), Err(DataError::KekInvalid { .. })));
        assert!(ks.has("ds-1"), "nothing deleted");
        write_private(ks.kek_path(), &kek.0).unwrap();
        assert_eq!(ks.kek(false).unwrap().0, kek.0);
    }

    #[test]
    fn missing_check_next_to_a_kek_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path(), None);
        let kek = ks.kek(true).unwrap();
        fs::remove_file(ks.check_path()).unwrap();
        for create in [true, false] {
            let e = ks.kek(create).unwrap_err();
            assert!(
                matches!(&e, DataError::KekInvalid { reason, .. } if reason.contains("kek.check")),
                "{e}"
            );
        }
        assert!(!ks.check_path().exists(), "not silently recreated");
        assert_eq!(fs::read(ks.kek_path()).unwrap(), kek.0, "KEK untouched");
    }

    #[test]
    fn exposed_kek_is_refused_whatever_its_path() {
        let d = tempfile::tempdir().unwrap();
        let custom = d.path().join("elsewhere/kek");
        let ks = Keystore::new(&d.path().join("keys"), Some(&custom));
        ks.kek(true).unwrap();
        assert_eq!(
            fs::metadata(&custom).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&custom, fs::Permissions::from_mode(0o644)).unwrap();
        let e = ks.kek(false).unwrap_err();
        assert!(
            matches!(e, DataError::KekExposed { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains(&custom.display().to_string()), "{e}");
    }

    #[test]
    fn creation_interrupted_before_the_link_is_finished() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path(), None);
        let kek = ks.kek(true).unwrap();
        // As if the process died between writing kek.check and linking the KEK into place.
        fs::rename(ks.kek_path(), ks.new_kek_path()).unwrap();
        assert_eq!(ks.kek(false).unwrap().0, kek.0);
        assert!(!ks.new_kek_path().exists());
        // Died before kek.check: nothing depends on the leftover, a fresh KEK is made.
        fs::rename(ks.kek_path(), ks.new_kek_path()).unwrap();
        fs::remove_file(ks.check_path()).unwrap();
        let fresh = ks.kek(true).unwrap();
        assert_ne!(fresh.0, kek.0);
        assert_eq!(ks.kek(false).unwrap().0, fresh.0);
    }

    #[test]
    fn threads_racing_to_make_the_kek_agree() {
        for _ in 0..20 {
            let d = tempfile::tempdir().unwrap();
            let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| Keystore::new(d.path(), None).kek(true).unwrap().0))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(keys.iter().all(|k| *k == keys[0]));
            assert_eq!(Keystore::new(d.path(), None).kek(false).unwrap().0, keys[0]);
        }
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
