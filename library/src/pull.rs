//! `pull`: a remote image into the local store, which is the cache.
//!
//! Order: the format file, then the signature and the manifest (accepted only with a valid
//! signature by a trusted key, before anything else of them is used) and, in format 2, the
//! image's pack index (checked to belong to that manifest), then the chunks the store lacks
//! (`fetch.rs`: single objects or ranged GETs of packs), each checked by the store before it is
//! written ([`image_store::Incoming::add_chunks`]), then the manifest, last. A chunk that is
//! missing or fails its check stops the pull with the chunk id and the object's URL (and byte
//! range, in a pack); requests already in flight finish, and every chunk that passed is kept, so
//! the next pull fetches only the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use std::collections::HashMap;

use image_store::{
    ChunkId, ImageRef, LoadedImage, SignatureStatus, Store, StoreError, WantedChunk,
};
use serde::Serialize;

use crate::error::LibraryError;
use crate::fetch::{self, Tally};
use crate::layout::{self, Layout, MAX_DOCUMENT};
use crate::packs::{self, Location, PackIndex};
use crate::remote::Remote;

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The image.
    pub image: ImageRef,
    /// Its signature as checked (always valid: a pull refuses anything else).
    pub signature: SignatureStatus,
    /// Distinct chunks the image uses.
    pub chunks: u64,
    /// Of those, already in the local store.
    pub present: u64,
    /// Fetched and stored by this pull.
    pub fetched: u64,
    /// Compressed bytes fetched and stored.
    pub fetched_bytes: u64,
    /// Requests made (not counting the client's retries).
    pub requests: u64,
    /// The remote's layout version (1: one object per chunk, 2: packs).
    pub library_version: u32,
    /// True if the store had the manifest already (nothing changed but missing chunks).
    pub was_local: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// How a failed pull left the store: the error, and how many verified chunks it kept.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", match *kept {
    0 => String::new(),
    1 => " (1 chunk fetched and verified before that is kept for the next pull)".to_string(),
    n => format!(" ({n} chunks fetched and verified before that are kept for the next pull)"),
})]
pub struct PullFailed {
    /// What stopped the pull.
    #[source]
    pub error: Box<LibraryError>,
    /// Chunks this attempt stored (a retry will not fetch them again).
    pub kept: u64,
}

impl From<LibraryError> for PullFailed {
    fn from(error: LibraryError) -> Self {
        PullFailed {
            error: Box::new(error),
            kept: 0,
        }
    }
}

/// Pulls `image` from `remote` into `store`, trusting only the keys in `trusted_keys`.
pub fn pull(
    remote: &Remote,
    image: &ImageRef,
    store: &Store,
    trusted_keys: &Path,
) -> Result<PullReport, PullFailed> {
    Pull::start(remote, image, store, trusted_keys)?.run(&|_| {})
}

/// Stops a running [`Pull::run`] from another thread (a signal handler): no new request
/// starts, the bodies being read stop at their next piece, the complete chunks that arrived
/// are checked and kept (`Incoming::keep`), and the run fails with
/// [`LibraryError::Interrupted`] saying how many chunks were kept for the next pull.
#[derive(Clone)]
pub struct Cancel(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Cancel {
    fn new() -> Cancel {
        Cancel(Arc::new(tokio::sync::watch::channel(None).0))
    }

    /// Stops the pull, naming why (`SIGINT`); a second call changes nothing.
    pub fn cancel(&self, why: &str) {
        self.0.send_if_modified(|v| {
            let first = v.is_none();
            v.get_or_insert_with(|| why.to_string());
            first
        });
    }

    /// The error a stopped pull fails with, once [`Cancel::cancel`] was called.
    pub(crate) fn error(&self) -> Option<LibraryError> {
        self.0
            .borrow()
            .as_ref()
            .map(|signal| LibraryError::Interrupted {
                signal: signal.clone(),
            })
    }

    /// Resolves once the pull is stopped, with its error.
    pub(crate) async fn stopped(&self) -> LibraryError {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
        self.error().expect("cancelled")
    }
}

/// A pull whose manifest was fetched and accepted (signature checked) and whose missing chunks
/// are known, not yet fetched: [`Pull::run`] fetches them. Between the two a caller can start
/// reading the image from a [`Store::with_arrivals`] store (the chunks are announced to its
/// arrivals here), so a disk is written while the rest is still arriving.
pub struct Pull {
    remote: Remote,
    layout: Layout,
    image: ImageRef,
    manifest_bytes: Vec<u8>,
    sig_bytes: Vec<u8>,
    trusted_keys: PathBuf,
    loaded: LoadedImage,
    /// Format 2: where each chunk is (from the image's pack index); None in format 1.
    places: Option<HashMap<ChunkId, Location>>,
    incoming: Arc<image_store::Incoming>,
    wanted: Vec<WantedChunk>,
    was_local: bool,
    started: Instant,
    requests_before: u64,
    rt: tokio::runtime::Runtime,
    cancel: Cancel,
}

impl Pull {
    /// Fetches and checks the manifest and lists the chunks `store` lacks (in image order).
    /// With a `store` that has arrivals, those chunks are announced to them.
    pub fn start(
        remote: &Remote,
        image: &ImageRef,
        store: &Store,
        trusted_keys: &Path,
    ) -> Result<Pull, PullFailed> {
        let started = Instant::now();
        let rt = crate::runtime()?;
        let requests_before = remote.requests();
        let (layout, manifest_bytes, sig_bytes, loaded) =
            accepted(&rt, remote, image, trusted_keys)?;
        let was_local = match store.load_manifest(image) {
            Ok((_, local)) if local == manifest_bytes => true,
            Ok(_) => {
                return Err(LibraryError::from(StoreError::DiffersLocally {
                    image: image.to_string(),
                })
                .into());
            }
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(LibraryError::from(e).into()),
        };
        let places = match layout {
            Layout::ChunkObjects => None,
            Layout::Packs => {
                Some(rt.block_on(pack_places(remote, image, &loaded, &manifest_bytes))?)
            }
        };
        let incoming = Arc::new(store.receive().map_err(LibraryError::from)?);
        let wanted = incoming
            .wanted(&loaded.manifest)
            .map_err(LibraryError::from)?;
        Ok(Pull {
            remote: remote.clone(),
            layout,
            image: image.clone(),
            manifest_bytes,
            sig_bytes,
            trusted_keys: trusted_keys.to_path_buf(),
            loaded,
            places,
            incoming,
            wanted,
            was_local,
            started,
            requests_before,
            rt,
            cancel: Cancel::new(),
        })
    }

    /// What stops this pull's [`Pull::run`] from another thread.
    pub fn canceller(&self) -> Cancel {
        self.cancel.clone()
    }

    /// The accepted manifest (signature valid and by a trusted key).
    pub fn image(&self) -> &LoadedImage {
        &self.loaded
    }

    /// The chunks this pull will fetch, in image order.
    pub fn wanted(&self) -> &[WantedChunk] {
        &self.wanted
    }

    /// Image bytes (uncompressed) of the chunks to fetch: what `progress` counts up to.
    pub fn wanted_bytes(&self) -> u64 {
        self.wanted.iter().map(|w| w.len).sum()
    }

    /// Fetches the missing chunks (`in_flight` at a time, in image order), each checked by the
    /// store before it is written, then commits the manifest. `progress` gets the image bytes
    /// of the chunks stored so far. On failure, readers waiting for a chunk get the error.
    pub fn run(self, progress: &(dyn Fn(u64) + Sync)) -> Result<PullReport, PullFailed> {
        let Pull {
            remote,
            layout,
            image,
            manifest_bytes,
            sig_bytes,
            trusted_keys,
            loaded,
            places,
            incoming,
            wanted,
            was_local,
            started,
            requests_before,
            rt,
            cancel,
        } = self;
        let chunks = packs::distinct(&loaded.manifest).len() as u64;
        let library_version = layout.info().version;
        let tally = Tally::default();
        let failure = match &places {
            None => rt.block_on(fetch::chunk_objects(
                &remote,
                &incoming,
                wanted.clone(),
                (&tally, &cancel),
                progress,
            )),
            Some(places) => {
                let bytes = wanted
                    .iter()
                    .map(|w| places.get(&w.id).map_or(0, |p| p.2))
                    .sum();
                let in_flight = (remote.options().in_flight / 2).max(1);
                match packs::plan(&wanted, places, packs::span_size(bytes, in_flight)) {
                    Ok(spans) => rt.block_on(fetch::packs(
                        &remote,
                        &incoming,
                        spans,
                        (&tally, &cancel),
                        progress,
                    )),
                    Err(chunk) => Some(LibraryError::BadLibrary {
                        object: remote.url().object(&layout::pack_index_key(&image)),
                        reason: format!("the pack index does not place chunk {chunk}"),
                    }),
                }
            }
        };
        let fetched = match failure {
            None => Ok(tally.done()),
            Some(e) => Err((e, tally.done())),
        };
        // Whatever happened, what passed its check is named now, for the next attempt.
        let kept = incoming.keep().map_err(LibraryError::from);
        let failed = |error: LibraryError, kept: u64| {
            incoming.abandon(&error.to_string());
            PullFailed {
                error: Box::new(error),
                kept,
            }
        };
        let (count, bytes) = match (fetched, kept) {
            (Ok(done), Ok(_)) => done,
            (Err((error, done)), _) | (Ok(done), Err(error)) => return Err(failed(error, done.0)),
        };
        let incoming = Arc::into_inner(incoming).expect("every fetch task has ended");
        let commit_err = |e| match e {
            e @ (StoreError::NotTrusted { .. } | StoreError::InconsistentManifest { .. }) => {
                bad_manifest(&remote, layout, &image, e)
            }
            e => LibraryError::from(e),
        };
        let committed = incoming.commit(&image, &manifest_bytes, &sig_bytes, &trusted_keys);
        let loaded_now = committed.map_err(|e| PullFailed {
            error: Box::new(commit_err(e)),
            kept: count,
        })?;
        Ok(PullReport {
            image,
            signature: loaded_now.signature,
            chunks,
            present: chunks - wanted.len() as u64,
            fetched: count,
            fetched_bytes: bytes,
            requests: remote.requests() - requests_before,
            library_version,
            was_local,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The manifest of `image` on `remote`, accepted only with a valid signature by a key in
/// `trusted_keys` (no chunk fetched, nothing stored): what a job checks before its pull.
pub fn fetch_checked(
    remote: &Remote,
    image: &ImageRef,
    trusted_keys: &Path,
) -> Result<LoadedImage, LibraryError> {
    accepted(&crate::runtime()?, remote, image, trusted_keys).map(|(_, _, _, img)| img)
}

/// The remote's layout, the manifest's and signature's bytes as fetched (the manifest
/// decompressed in format 2), and the manifest they make, accepted.
fn accepted(
    rt: &tokio::runtime::Runtime,
    remote: &Remote,
    image: &ImageRef,
    trusted_keys: &Path,
) -> Result<(Layout, Vec<u8>, Vec<u8>, LoadedImage), LibraryError> {
    let (layout, manifest_bytes, sig_bytes) =
        rt.block_on(fetch_manifest(remote, image, trusted_keys))?;
    let (manifest, signature) =
        image_store::receive::check_received(image, &manifest_bytes, &sig_bytes, trusted_keys)
            .map_err(|e| bad_manifest(remote, layout, image, e))?;
    let manifest_hash = blake3::hash(&manifest_bytes).to_hex().to_string();
    let img = LoadedImage {
        manifest,
        manifest_hash,
        signature,
    };
    Ok((layout, manifest_bytes, sig_bytes, img))
}

fn bad_manifest(
    remote: &Remote,
    layout: Layout,
    image: &ImageRef,
    source: StoreError,
) -> LibraryError {
    LibraryError::BadManifest {
        object: remote.url().object(&layout.manifest_key(image)),
        source: Box::new(source),
    }
}

/// The format file (checked), then the signature (refused unless it names a trusted key), then
/// the manifest; a format-2 manifest is decompressed (at most [`MAX_DOCUMENT`] bytes: a hostile remote's small
/// object cannot inflate without bound).
async fn fetch_manifest(
    remote: &Remote,
    image: &ImageRef,
    trusted_keys: &Path,
) -> Result<(Layout, Vec<u8>, Vec<u8>), LibraryError> {
    let info = remote.get(layout::INFO_KEY, MAX_DOCUMENT).await?;
    let layout = crate::check_info(remote, info)?;
    let (manifest_key, sig_key) = (layout.manifest_key(image), layout::signature_key(image));
    let refused = |status| LibraryError::BadManifest {
        object: remote.url().object(&manifest_key),
        source: Box::new(StoreError::NotTrusted {
            image: image.to_string(),
            status,
        }),
    };
    // The signature first: a manifest no trusted key can have signed is neither fetched nor
    // inflated (the signature covers the manifest's bytes, so it is checked against them once
    // they are here: `check_received`).
    let Some(sig) = remote.get(&sig_key, MAX_DOCUMENT).await? else {
        return match remote.size(&manifest_key).await? {
            None => Err(LibraryError::NoSuchImage {
                image: image.clone(),
                url: remote.url().clone(),
            }),
            // The push writes the signature after the manifest.
            Some(_) => Err(LibraryError::Unfinished {
                image: image.clone(),
                url: remote.url().clone(),
            }),
        };
    };
    if let Some(status) = image_store::signature::precheck(&sig, trusted_keys)? {
        if !image_store::signature::trusts_any(trusted_keys)? {
            return Err(LibraryError::NoTrustedKeys {
                dir: trusted_keys.to_path_buf(),
            });
        }
        return Err(refused(status));
    }
    let Some(manifest) = remote.get(&manifest_key, MAX_DOCUMENT).await? else {
        return Err(LibraryError::NoSuchImage {
            image: image.clone(),
            url: remote.url().clone(),
        });
    };
    let manifest = match layout {
        Layout::ChunkObjects => manifest.to_vec(),
        Layout::Packs => {
            layout::decompress_document(&manifest, MAX_DOCUMENT).map_err(|reason| {
                LibraryError::BadLibrary {
                    object: remote.url().object(&manifest_key),
                    reason: format!("manifest refused, nothing stored: {reason}"),
                }
            })?
        }
    };
    Ok((layout, manifest, sig.to_vec()))
}

/// Format 2: the image's pack index, fetched and checked against its accepted manifest.
async fn pack_places(
    remote: &Remote,
    image: &ImageRef,
    loaded: &LoadedImage,
    manifest_bytes: &[u8],
) -> Result<HashMap<ChunkId, Location>, LibraryError> {
    let key = layout::pack_index_key(image);
    let object = remote.url().object(&key);
    let Some(b) = remote.get(&key, MAX_DOCUMENT).await? else {
        return Err(LibraryError::BadLibrary {
            object,
            reason: "not found: the image's pack index is missing (pushed before its manifest; \
                     push the image again)"
                .into(),
        });
    };
    PackIndex::locations(&b, &loaded.manifest, manifest_bytes).map_err(|reason| {
        LibraryError::BadLibrary {
            object,
            reason: format!("pack index refused, nothing fetched: {reason}"),
        }
    })
}
