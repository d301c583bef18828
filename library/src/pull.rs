//! `pull`: a remote image into the local store, which is the cache.
//!
//! Order: the format file, then the signature and the manifest (accepted only with a valid
//! signature by a trusted key, before anything else of them is used), then the chunks the store
//! lacks, `in_flight` at a time, each checked by the store before it is written
//! ([`image_store::Incoming::add_chunk`]), then the manifest, last. A chunk that is missing or
//! fails its check stops the pull with the chunk id and the object's URL; requests already in
//! flight finish, and every chunk that passed is kept, so the next pull fetches only the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image_store::{
    CompressedChunk, ImageRef, LoadedImage, SignatureStatus, Store, StoreError, WantedChunk,
};
use serde::Serialize;

use crate::error::LibraryError;
use crate::layout::{self, MAX_DOCUMENT};
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
    /// True if the store had the manifest already (nothing changed but missing chunks).
    pub was_local: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// How a failed pull left the store: the error, and how many verified chunks it kept.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", if *kept > 0 { format!(" ({kept} chunk(s) fetched and verified before that are kept for the next pull)") } else { String::new() })]
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

/// A pull whose manifest was fetched and accepted (signature checked) and whose missing chunks
/// are known, not yet fetched: [`Pull::run`] fetches them. Between the two a caller can start
/// reading the image from a [`Store::with_arrivals`] store (the chunks are announced to its
/// arrivals here), so a disk is written while the rest is still arriving.
pub struct Pull {
    remote: Remote,
    image: ImageRef,
    manifest_bytes: Vec<u8>,
    sig_bytes: Vec<u8>,
    trusted_keys: PathBuf,
    loaded: LoadedImage,
    incoming: Arc<image_store::Incoming>,
    wanted: Vec<WantedChunk>,
    was_local: bool,
    started: Instant,
    requests_before: u64,
    rt: tokio::runtime::Runtime,
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
        let (manifest_bytes, sig_bytes, loaded) = accepted(&rt, remote, image, trusted_keys)?;
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
        let incoming = Arc::new(store.receive().map_err(LibraryError::from)?);
        let wanted = incoming
            .wanted(&loaded.manifest)
            .map_err(LibraryError::from)?;
        Ok(Pull {
            remote: remote.clone(),
            image: image.clone(),
            manifest_bytes,
            sig_bytes,
            trusted_keys: trusted_keys.to_path_buf(),
            loaded,
            incoming,
            wanted,
            was_local,
            started,
            requests_before,
            rt,
        })
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
            image,
            manifest_bytes,
            sig_bytes,
            trusted_keys,
            loaded,
            incoming,
            wanted,
            was_local,
            started,
            requests_before,
            rt,
        } = self;
        let chunks = distinct_chunks(&loaded.manifest);
        let fetched = rt.block_on(fetch_chunks(&remote, &incoming, wanted.clone(), progress));
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
                bad_manifest(&remote, &image, e)
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
    accepted(&crate::runtime()?, remote, image, trusted_keys).map(|(_, _, img)| img)
}

/// The manifest's and signature's bytes as fetched, and the manifest they make, accepted.
fn accepted(
    rt: &tokio::runtime::Runtime,
    remote: &Remote,
    image: &ImageRef,
    trusted_keys: &Path,
) -> Result<(Vec<u8>, Vec<u8>, LoadedImage), LibraryError> {
    let (manifest_bytes, sig_bytes) = rt.block_on(fetch_manifest(remote, image))?;
    let (manifest, signature) =
        image_store::receive::check_received(image, &manifest_bytes, &sig_bytes, trusted_keys)
            .map_err(|e| bad_manifest(remote, image, e))?;
    let manifest_hash = blake3::hash(&manifest_bytes).to_hex().to_string();
    let img = LoadedImage {
        manifest,
        manifest_hash,
        signature,
    };
    Ok((manifest_bytes, sig_bytes, img))
}

fn bad_manifest(remote: &Remote, image: &ImageRef, source: StoreError) -> LibraryError {
    LibraryError::BadManifest {
        object: remote.url().object(&layout::manifest_key(image)),
        source: Box::new(source),
    }
}

fn distinct_chunks(m: &image_store::Manifest) -> u64 {
    let mut ids = std::collections::HashSet::new();
    for e in &m.extents {
        if let image_store::Extent::Chunk { id, .. } = e {
            ids.insert(*id);
        }
    }
    ids.len() as u64
}

/// The format file (checked), the manifest and its signature, fetched concurrently.
async fn fetch_manifest(
    remote: &Remote,
    image: &ImageRef,
) -> Result<(Vec<u8>, Vec<u8>), LibraryError> {
    let (manifest_key, sig_key) = (layout::manifest_key(image), layout::signature_key(image));
    let (info, manifest, sig) = futures::join!(
        remote.get(layout::INFO_KEY, MAX_DOCUMENT),
        remote.get(&manifest_key, MAX_DOCUMENT),
        remote.get(&sig_key, MAX_DOCUMENT),
    );
    crate::check_info(remote, info?)?;
    let Some(manifest) = manifest? else {
        return Err(LibraryError::NoSuchImage {
            image: image.clone(),
            url: remote.url().clone(),
        });
    };
    let Some(sig) = sig? else {
        return Err(LibraryError::BadManifest {
            object: remote.url().object(&manifest_key),
            source: Box::new(StoreError::NotTrusted {
                image: image.to_string(),
                status: SignatureStatus::Unsigned,
            }),
        });
    };
    Ok((manifest.to_vec(), sig.to_vec()))
}

/// (chunks stored, compressed bytes stored).
type Done = (u64, u64);

/// Fetches `wanted` into `incoming`, `in_flight` at a time (see [`crate::bounded`]).
async fn fetch_chunks(
    remote: &Remote,
    incoming: &Arc<image_store::Incoming>,
    wanted: Vec<WantedChunk>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Done, (LibraryError, Done)> {
    let in_flight = remote.options().in_flight;
    let image_bytes = std::sync::atomic::AtomicU64::new(0);
    let one = |w: WantedChunk| {
        let image_bytes = &image_bytes;
        async move {
            let n = fetch_one(remote, incoming, w).await?;
            let at = image_bytes.fetch_add(w.len, std::sync::atomic::Ordering::Relaxed);
            progress(at + w.len);
            Ok(n)
        }
    };
    match crate::bounded(wanted, in_flight, one).await {
        (done, None) => Ok(done),
        (done, Some(e)) => Err((e, done)),
    }
}

async fn fetch_one(
    remote: &Remote,
    incoming: &Arc<image_store::Incoming>,
    w: WantedChunk,
) -> Result<u64, LibraryError> {
    let key = layout::chunk_key(w.id);
    let Some(data) = remote.get(&key, layout::chunk_object_limit(w.len)).await? else {
        return Err(LibraryError::MissingChunk {
            chunk: w.id,
            offset: w.offset,
            object: remote.url().object(&key),
        });
    };
    let chunk = CompressedChunk {
        id: w.id,
        offset: w.offset,
        len: w.len,
        data: data.to_vec(),
    };
    let inc = Arc::clone(incoming);
    // Decompressing and hashing is CPU work: off the runtime's threads.
    let stored = tokio::task::spawn_blocking(move || inc.add_chunk(chunk))
        .await
        .expect("chunk check task panicked");
    stored.map_err(|e| match e {
        StoreError::HashMismatch { .. } | StoreError::CorruptChunk { .. } => {
            LibraryError::CorruptChunk {
                chunk: w.id,
                object: remote.url().object(&key),
                reason: e.to_string(),
            }
        }
        e => LibraryError::from(e),
    })
}
