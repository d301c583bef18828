//! Edits of stored images: committing a manifest (and its signature) crash-safely, signing,
//! changing hints without ever dropping a signature silently, removing. Every read-modify-write
//! runs under the store's manifest lock (`lock.rs`).

use std::path::Path;

use crate::error::StoreError;
use crate::fsutil;
use crate::image_ref::ImageRef;
use crate::manifest::Manifest;
use crate::signature::SigningKey;
use crate::store::Store;

impl Store {
    /// Writes a manifest (and optionally its signature) crash-safely. `tmp_dir` must be on the
    /// store's filesystem. Without a key any old signature is removed, since it no longer matches.
    pub(crate) fn commit_manifest(
        &self,
        manifest: &Manifest,
        key: Option<&SigningKey>,
        tmp_dir: &Path,
    ) -> Result<(), StoreError> {
        let image = ImageRef::new(&manifest.name, &manifest.version)?;
        let mut bytes = serde_json::to_vec_pretty(manifest).expect("serializing manifest");
        bytes.push(b'\n');
        let dir = self.root.join("images").join(&image.name);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating", &dir, e))?;
        let sig_path = self.signature_path(&image);
        match key {
            Some(k) => fsutil::write_atomic(
                &tmp_dir.join("manifest.sig"),
                &sig_path,
                &k.sign_manifest(&bytes),
            )?,
            None => remove_if_exists(&sig_path)?,
        }
        // The manifest goes last: it is the commit point of an import.
        fsutil::write_atomic(
            &tmp_dir.join("manifest.json"),
            &self.manifest_path(&image),
            &bytes,
        )
    }

    /// Signs an existing image's manifest bytes as they are.
    pub fn sign(&self, image: &ImageRef, key: &SigningKey) -> Result<(), StoreError> {
        // Under the manifest lock: the bytes signed are the bytes that stay.
        let _edit = crate::lock::ManifestLock::take(&self.root)?;
        let (_, bytes) = self.load_manifest(image)?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.sig.new", uuid::Uuid::new_v4().simple()));
        fsutil::write_atomic(
            &tmp,
            &self.signature_path(image),
            &key.sign_manifest(&bytes),
        )
    }

    /// Replaces an image's hints. An unchanged manifest is not rewritten (its signature stays
    /// as it is); a changed one is signed as `sign` says. [`Resign::Keep`] on a signed manifest
    /// is refused with [`StoreError::WouldUnsign`]: a signature is only ever dropped on request.
    ///
    /// `edit` maps the current hints to the new ones; it runs under the store's manifest lock,
    /// so concurrent edits (and imports, signing) of the image serialize and none is lost.
    pub fn set_hints(
        &self,
        image: &ImageRef,
        edit: impl FnOnce(&crate::manifest::Hints) -> crate::manifest::Hints,
        sign: Resign<'_>,
    ) -> Result<SetHints, StoreError> {
        let _edit = crate::lock::ManifestLock::take(&self.root)?;
        let (mut m, _) = self.load_manifest(image)?;
        let hints = edit(&m.hints);
        if m.hints == hints {
            return Ok(SetHints::Unchanged);
        }
        crate::import::check_hints(&hints, m.gpt.as_ref())?;
        let sig_path = self.signature_path(image);
        let signed = sig_path
            .try_exists()
            .map_err(|e| StoreError::io("inspecting", &sig_path, e))?;
        let key = match sign {
            Resign::With(k) => Some(k),
            Resign::Unsign => None,
            Resign::Keep if signed => {
                return Err(StoreError::WouldUnsign {
                    image: image.to_string(),
                });
            }
            Resign::Keep => None,
        };
        m.hints = hints;
        // A registered session, so a concurrent import's cleanup never takes our temporaries.
        let session = crate::lock::ImportSession::begin(&self.root)?;
        self.commit_manifest(&m, key, session.tmp_dir())?;
        Ok(SetHints::Updated {
            signed_by: key.map(|k| k.key_id().to_string()),
            signature_dropped: signed && key.is_none(),
        })
    }

    /// Removes an image's manifest and signature. Its chunks stay until `gc`.
    pub fn remove(&self, image: &ImageRef) -> Result<(), StoreError> {
        // Under the manifest lock: a concurrent `set_hints` or `sign` cannot bring it back.
        let _edit = crate::lock::ManifestLock::take(&self.root)?;
        let path = self.manifest_path(image);
        if !path.is_file() {
            return Err(StoreError::NotFound {
                image: image.to_string(),
            });
        }
        remove_if_exists(&self.signature_path(image))?;
        remove_if_exists(&path)?;
        let dir = self.root.join("images").join(&image.name);
        let _ = std::fs::remove_dir(&dir); // only succeeds when empty
        fsutil::sync_dir(&self.root.join("images"))
    }
}

/// What [`Store::set_hints`] does with the signature of a manifest it changes.
#[derive(Debug, Clone, Copy)]
pub enum Resign<'a> {
    /// Leave signing alone: allowed only for an unsigned manifest.
    Keep,
    /// Sign the changed manifest with this key.
    With(&'a SigningKey),
    /// Drop the signature (the maintainer asked for it).
    Unsign,
}

/// What [`Store::set_hints`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetHints {
    /// The hints were already those: nothing was written.
    Unchanged,
    /// The manifest was rewritten.
    Updated {
        /// The key that signed the new manifest, if any.
        signed_by: Option<String>,
        /// True when a signature existed and was removed.
        signature_dropped: bool,
    },
}

fn remove_if_exists(p: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("removing", p, e)),
    }
}
