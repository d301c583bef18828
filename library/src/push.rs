//! `push`: a signed local image onto an S3 remote.
//!
//! Order: the format file (first push only), one listing of `chunks/`, the chunks the remote
//! lacks (`in_flight` at a time, each checked against its id before it leaves the bench, so a
//! chunk gone bad locally is never published), then the signature, then the manifest: the
//! commit point. A push cut off before the manifest leaves only chunks behind, never a visible
//! image; the next push uploads only what is still missing. Last, `index.json` is rewritten from
//! a listing of `images/`, for remotes served over plain HTTP.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
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

/// Pushes `image` from `store` to `remote`. The image must carry a valid signature by a key in
/// `trusted_keys`: a bench would refuse anything else.
pub fn push(
    store: &Store,
    image: &ImageRef,
    remote: &Remote,
    trusted_keys: &Path,
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
        let (uploaded, uploaded_bytes) = upload_chunks(store, image, remote, missing).await?;
        if !was_remote {
            remote
                .put(&layout::signature_key(image), Bytes::from(sig_bytes))
                .await?;
            remote
                .put(&manifest_key, Bytes::from(manifest_bytes))
                .await?;
        }
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
) -> Result<(u64, u64), LibraryError> {
    let store = Arc::new(store.clone());
    let in_flight = remote.options().in_flight;
    let upload = |(id, offset, len)| upload_one(Arc::clone(&store), image, remote, id, offset, len);
    match crate::bounded(missing, in_flight, upload).await {
        (done, None) => Ok(done),
        (_, Some(e)) => Err(e),
    }
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

/// Rewrites `index.json` from a listing of `images/` (so concurrent pushes converge: each
/// writes what the listing shows at its end).
async fn write_index(remote: &Remote) -> Result<(), LibraryError> {
    let index = layout::Index {
        format: layout::INDEX_FORMAT,
        images: crate::listing::listed(remote).await?,
    };
    let bytes = serde_json::to_vec_pretty(&index).expect("serializing index");
    remote.put(layout::INDEX_KEY, Bytes::from(bytes)).await
}
