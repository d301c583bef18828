//! `push`: a signed local image onto an S3 remote.
//!
//! Order: the format file (first push only), one listing of `chunks/`, the chunks the remote
//! lacks (`in_flight` at a time, each checked against its id before it leaves the bench, so a
//! chunk gone bad locally is never published), then the signature, then the manifest: the
//! commit point, uploaded only if the remote has none (`If-None-Match: *`), so of two pushes
//! racing with different manifests under one name exactly one wins and the other says so. A
//! push cut off before the manifest leaves only chunks behind, never a visible image; the next
//! push uploads only what is still missing. Last, `index.json` is rewritten from a listing of
//! `images/` for remotes served over plain HTTP, and listed again until the listing matches
//! what was written, so two pushes racing never lose each other's image from it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use image_store::{ChunkId, Extent, ImageRef, Store};
use serde::Serialize;

use crate::error::LibraryError;
use crate::layout::{self, MAX_DOCUMENT};
use crate::remote::Remote;

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The image.
    pub image: ImageRef,
    /// Distinct chunks the image uses.
    pub chunks: u64,
    /// Of those, already on the remote.
    pub present: u64,
    /// Uploaded by this push.
    pub uploaded: u64,
    /// Compressed bytes uploaded.
    pub uploaded_bytes: u64,
    /// True if the remote had this exact manifest already.
    pub was_remote: bool,
    /// Requests made (not counting the client's retries).
    pub requests: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Where a push is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushProgress {
    /// The remote was listed: this many chunks, of this many compressed bytes, are to go.
    Missing {
        /// Chunks to upload.
        chunks: u64,
        /// Their compressed bytes.
        bytes: u64,
    },
    /// Compressed bytes uploaded so far.
    Uploaded(u64),
    /// Every chunk is there; the signature, manifest and index go next.
    Committing,
}

/// Pushes `image` from `store` to `remote`. The image must carry a valid signature by a key in
/// `trusted_keys`: a bench would refuse anything else.
pub fn push(
    store: &Store,
    image: &ImageRef,
    remote: &Remote,
    trusted_keys: &Path,
) -> Result<PushReport, LibraryError> {
    push_with_progress(store, image, remote, trusted_keys, &|_| {})
}

/// [`push`], telling `progress` where it is.
pub fn push_with_progress(
    store: &Store,
    image: &ImageRef,
    remote: &Remote,
    trusted_keys: &Path,
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<PushReport, LibraryError> {
    let started = Instant::now();
    let requests_before = remote.requests();
    if remote.url().is_read_only() {
        return Err(LibraryError::ReadOnly {
            url: remote.url().clone(),
        });
    }
    let loaded = store.load(image, trusted_keys)?;
    if !loaded.signature.is_valid() {
        return Err(LibraryError::NotPushable {
            image: image.clone(),
            reason: format!(
                "its signature is {}; benches accept only images signed by a trusted key \
                 (sign it with `tek image sign`)",
                loaded.signature
            ),
        });
    }
    let (manifest, manifest_bytes) = store.load_manifest(image)?;
    let sig_path = store.signature_path(image);
    let sig_bytes = std::fs::read(&sig_path)
        .map_err(|e| image_store::StoreError::io("reading signature", &sig_path, e))?;
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    for e in &manifest.extents {
        if let Extent::Chunk { id, offset, len } = *e
            && seen.insert(id)
        {
            ids.push((id, offset, len));
        }
    }
    let rt = crate::runtime()?;
    rt.block_on(async {
        let manifest_key = layout::manifest_key(image);
        let (info, existing) = futures::join!(
            remote.get(layout::INFO_KEY, MAX_DOCUMENT),
            remote.get(&manifest_key, MAX_DOCUMENT),
        );
        match info? {
            Some(b) => crate::check_info(remote, Some(b))?,
            None => {
                let info = serde_json::to_vec_pretty(&layout::LibraryInfo::current())
                    .expect("serializing library info");
                remote.put(layout::INFO_KEY, Bytes::from(info)).await?;
            }
        }
        let was_remote = match existing? {
            Some(b) if b[..] == manifest_bytes[..] => true,
            Some(_) => {
                return Err(LibraryError::Conflict {
                    image: image.clone(),
                    url: remote.url().clone(),
                });
            }
            None => false,
        };
        let on_remote: HashSet<ChunkId> = remote
            .list("chunks/")
            .await?
            .iter()
            .filter_map(|(k, _)| layout::chunk_of_key(k))
            .collect();
        let missing: Vec<_> = ids
            .iter()
            .copied()
            .filter(|(id, _, _)| !on_remote.contains(id))
            .collect();
        progress(PushProgress::Missing {
            chunks: missing.len() as u64,
            bytes: missing
                .iter()
                .map(|(id, _, _)| std::fs::metadata(store.chunk_path(*id)).map_or(0, |m| m.len()))
                .sum(),
        });
        let (uploaded, uploaded_bytes) =
            upload_chunks(store, image, remote, missing, progress).await?;
        progress(PushProgress::Committing);
        let was_remote = !commit(
            remote,
            image,
            (&manifest_key, &manifest_bytes),
            &sig_bytes,
            was_remote,
        )
        .await?;
        write_index(remote).await?;
        Ok(PushReport {
            image: image.clone(),
            chunks: ids.len() as u64,
            present: ids.len() as u64 - uploaded,
            uploaded,
            uploaded_bytes,
            was_remote,
            requests: remote.requests() - requests_before,
            seconds: started.elapsed().as_secs_f64(),
        })
    })
}

/// Uploads chunks, `in_flight` at a time (see [`crate::bounded`]).
async fn upload_chunks(
    store: &Store,
    image: &ImageRef,
    remote: &Remote,
    missing: Vec<(ChunkId, u64, u64)>,
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<(u64, u64), LibraryError> {
    let store = Arc::new(store.clone());
    let in_flight = remote.options().in_flight;
    let sent = AtomicU64::new(0);
    let upload = |(id, offset, len)| {
        let (store, sent) = (Arc::clone(&store), &sent);
        async move {
            let n = upload_one(store, image, remote, id, offset, len).await?;
            progress(PushProgress::Uploaded(
                sent.fetch_add(n, Ordering::Relaxed) + n,
            ));
            Ok(n)
        }
    };
    match crate::bounded(missing, in_flight, upload).await {
        (done, None) => Ok(done),
        (_, Some(e)) => Err(e),
    }
}

/// Publishes the image: the signature, then the manifest if the remote has none (`there`: it
/// had this manifest when the push began). `Ok(false)`: the manifest was there already, or a
/// racing push published the same one first; another manifest under the name is a conflict.
/// Either way the signature beside the manifest is made ours if it is not (a racing push of
/// another manifest may have replaced it before losing).
async fn commit(
    remote: &Remote,
    image: &ImageRef,
    (manifest_key, manifest_bytes): (&str, &[u8]),
    sig_bytes: &[u8],
    there: bool,
) -> Result<bool, LibraryError> {
    let sig_key = layout::signature_key(image);
    let created = !there && {
        remote
            .put(&sig_key, Bytes::copy_from_slice(sig_bytes))
            .await?;
        remote
            .put_new(manifest_key, Bytes::copy_from_slice(manifest_bytes))
            .await?
    };
    if !created && !there {
        let theirs = remote.get(manifest_key, MAX_DOCUMENT).await?;
        if theirs.as_deref() != Some(manifest_bytes) {
            return Err(LibraryError::Conflict {
                image: image.clone(),
                url: remote.url().clone(),
            });
        }
    }
    if remote.get(&sig_key, MAX_DOCUMENT).await?.as_deref() != Some(sig_bytes) {
        remote
            .put(&sig_key, Bytes::copy_from_slice(sig_bytes))
            .await?;
    }
    Ok(created)
}

async fn upload_one(
    store: Arc<Store>,
    image: &ImageRef,
    remote: &Remote,
    id: ChunkId,
    offset: u64,
    len: u64,
) -> Result<u64, LibraryError> {
    // Read and check off the runtime's threads: only a chunk whose bytes hash to its id leaves.
    let data = tokio::task::spawn_blocking(move || {
        let c = store.read_compressed(id, offset, len)?;
        let mut scratch = vec![0u8; len as usize];
        c.decompress_verify_in_place(&mut scratch)?;
        Ok::<_, image_store::StoreError>(c.data)
    })
    .await
    .expect("chunk read task panicked")
    .map_err(|e| LibraryError::NotPushable {
        image: image.clone(),
        reason: format!("{e} (run `tek image verify {image}`)"),
    })?;
    let n = data.len() as u64;
    remote
        .put(&layout::chunk_key(id), Bytes::from(data))
        .await?;
    Ok(n)
}

/// How many times `index.json` is rewritten while other pushes keep changing `images/`.
const INDEX_ROUNDS: usize = 16;

/// Rewrites `index.json` from a listing of `images/`, then lists again: if the listing changed
/// meanwhile (a racing push committed and may have written its index before ours), writes
/// again. The last index written is thus checked against a listing made after it by its own
/// writer, and any push that commits later writes (and checks) its own.
async fn write_index(remote: &Remote) -> Result<(), LibraryError> {
    let mut images = crate::listing::listed(remote).await?;
    for _ in 0..INDEX_ROUNDS {
        let index = layout::Index {
            format: layout::INDEX_FORMAT,
            images,
        };
        let bytes = serde_json::to_vec_pretty(&index).expect("serializing index");
        remote.put(layout::INDEX_KEY, Bytes::from(bytes)).await?;
        let now = crate::listing::listed(remote).await?;
        if now == index.images {
            return Ok(());
        }
        images = now;
    }
    Err(LibraryError::Request {
        action: "rewriting",
        object: remote.url().object(layout::INDEX_KEY),
        reason: format!(
            "the image is pushed, but other pushes changed the library {INDEX_ROUNDS} times \
             while its index was written; push again to rewrite the index"
        ),
    })
}
