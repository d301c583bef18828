//! `pull`: a remote image into the local store, which is the cache.
//!
//! Order: the format file, then the signature and the manifest (accepted only with a valid
//! signature by a trusted key, before anything else of them is used), then the chunks the store
//! lacks, `in_flight` at a time, each checked by the store before it is written
//! ([`image_store::Incoming::add_chunk`]), then the manifest, last. A chunk that is missing or
//! fails its check stops the pull with the chunk id and the object's URL; requests already in
//! flight finish, and every chunk that passed is kept, so the next pull fetches only the rest.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use image_store::{CompressedChunk, ImageRef, SignatureStatus, Store, StoreError, WantedChunk};
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
    let started = Instant::now();
    let rt = crate::runtime()?;
    let requests_before = remote.requests();
    let (manifest_bytes, sig_bytes) = rt.block_on(fetch_manifest(remote, image))?;
    let object = remote.url().object(&layout::manifest_key(image));
    let bad_manifest = |source: StoreError| LibraryError::BadManifest {
        object: object.clone(),
        source: Box::new(source),
    };
    let (manifest, _) =
        image_store::receive::check_received(image, &manifest_bytes, &sig_bytes, trusted_keys)
            .map_err(bad_manifest)?;
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
    let wanted = incoming.wanted(&manifest).map_err(LibraryError::from)?;
    let chunks = distinct_chunks(&manifest);
    let fetched = rt.block_on(fetch_chunks(remote, &incoming, wanted.clone()));
    // Whatever happened, what passed its check is named now, for the next attempt.
    let kept = incoming.keep().map_err(LibraryError::from);
    let (count, bytes) = match (fetched, kept) {
        (Ok(done), Ok(_)) => done,
        (Err((error, done)), _) => {
            return Err(PullFailed {
                error: Box::new(error),
                kept: done.0,
            });
        }
        (Ok(done), Err(error)) => {
            return Err(PullFailed {
                error: Box::new(error),
                kept: done.0,
            });
        }
    };
    let incoming = Arc::into_inner(incoming).expect("every fetch task has ended");
    let loaded = incoming
        .commit(image, &manifest_bytes, &sig_bytes, trusted_keys)
        .map_err(|e| match e {
            e @ (StoreError::NotTrusted { .. } | StoreError::InconsistentManifest { .. }) => {
                bad_manifest(e)
            }
            e => LibraryError::from(e),
        })
        .map_err(|error| PullFailed {
            error: Box::new(error),
            kept: count,
        })?;
    Ok(PullReport {
        image: image.clone(),
        signature: loaded.signature,
        chunks,
        present: chunks - wanted.len() as u64,
        fetched: count,
        fetched_bytes: bytes,
        requests: remote.requests() - requests_before,
        was_local,
        seconds: started.elapsed().as_secs_f64(),
    })
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
) -> Result<Done, (LibraryError, Done)> {
    let in_flight = remote.options().in_flight;
    match crate::bounded(wanted, in_flight, |w| fetch_one(remote, incoming, w)).await {
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
