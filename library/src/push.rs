//! `push`: a signed local image onto an S3 remote.
//!
//! Order: the format file (first push only: a new remote gets format 2), then the chunks the
//! remote lacks, each checked against its id before it leaves the bench, so a chunk gone bad
//! locally is never published: in format 2 packed into pack files (`push_packs.rs`) followed
//! by the image's pack index; in format 1 (a remote created with it keeps it) one listing of
//! `chunks/` and one object per chunk, `in_flight` at a time. Then the manifest: the claim,
//! uploaded only if the remote has none (`If-None-Match: *`), so of two pushes racing with
//! different manifests under one name exactly one wins and the other says so and writes
//! nothing more; then the pack index and the signature, which publishes the image (see
//! [`commit`]). A push cut off before the signature leaves only chunks, packs or an unlisted
//! manifest behind, never a visible image; the next push uploads only what is still missing. Last, `index.json` is
//! rewritten from a listing of `images/` for remotes served over plain HTTP, and listed again
//! until the listing matches what was written, so two pushes racing never lose each other's
//! image from it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use image_store::{ChunkId, Extent, ImageRef, Store};
use serde::Serialize;

use crate::error::LibraryError;
use crate::layout::{self, Layout, MAX_DOCUMENT};
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
    /// The remote's layout version (1: one object per chunk, 2: packs).
    pub library_version: u32,
    /// Pack files uploaded (format 2).
    pub packs: u64,
    /// Format 2: packs on the remote whose bytes did not hold what their id list says, each
    /// as one line (name and what was wrong); their chunks went up again in new packs.
    pub untrusted_packs: Vec<String>,
    /// Requests made (not counting the client's retries).
    pub requests: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Where a push is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushProgress {
    /// Format 2: the chunks the image would reuse from packs on the remote are read back and
    /// checked first; this many, in reads of this many bytes.
    Checking {
        /// Chunks to check.
        chunks: u64,
        /// Bytes to read.
        bytes: u64,
    },
    /// Bytes of the check read so far.
    Checked(u64),
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
        let library = match remote.get(layout::INFO_KEY, MAX_DOCUMENT).await? {
            Some(b) => crate::check_info(remote, Some(b))?,
            None => {
                let info = serde_json::to_vec_pretty(&layout::LibraryInfo::current())
                    .expect("serializing library info");
                remote.put(layout::INFO_KEY, Bytes::from(info)).await?;
                Layout::Packs
            }
        };
        let manifest_key = library.manifest_key(image);
        let was_remote = match remote.get(&manifest_key, MAX_DOCUMENT).await? {
            Some(b) if same_manifest(library, &b, &manifest_bytes) => true,
            Some(_) => {
                return Err(LibraryError::Conflict {
                    image: image.clone(),
                    url: remote.url().clone(),
                });
            }
            None => false,
        };
        // The stored manifest is compressed hard (seconds, see `layout::DOCUMENT_LEVEL`) while
        // the chunks upload: it is published last.
        let compressing = matches!(library, Layout::Packs).then(|| {
            let raw = manifest_bytes.clone();
            tokio::task::spawn_blocking(move || layout::compress_document(&raw))
        });
        let (uploaded, uploaded_bytes, packs, pack_index, untrusted_packs) = match library {
            Layout::ChunkObjects => {
                let (n, bytes) =
                    upload_missing_chunks(store, image, remote, &ids, progress).await?;
                (n, bytes, 0, None, Vec::new())
            }
            Layout::Packs => {
                let up = crate::push_packs::upload(
                    store,
                    image,
                    remote,
                    (&manifest, &manifest_bytes),
                    progress,
                )
                .await?;
                (up.chunks, up.bytes, up.packs, Some(up.index), up.untrusted)
            }
        };
        progress(PushProgress::Committing);
        let stored_manifest = match compressing {
            None => manifest_bytes.clone(),
            Some(task) => task.await.expect("compressing the manifest"),
        };
        let published = Published {
            library,
            manifest_key: &manifest_key,
            manifest_bytes: &manifest_bytes,
            stored_manifest,
            sig_bytes: &sig_bytes,
            pack_index,
        };
        let was_remote = !commit(remote, image, &published, was_remote).await?;
        write_index(remote, library).await?;
        Ok(PushReport {
            image: image.clone(),
            chunks: ids.len() as u64,
            present: ids.len() as u64 - uploaded,
            uploaded,
            uploaded_bytes,
            was_remote,
            library_version: library.info().version,
            packs,
            untrusted_packs,
            requests: remote.requests() - requests_before,
            seconds: started.elapsed().as_secs_f64(),
        })
    })
}

/// Whether a manifest object on the remote holds `ours` (format 2: once decompressed).
fn same_manifest(library: Layout, object: &[u8], ours: &[u8]) -> bool {
    match library {
        Layout::ChunkObjects => object == ours,
        Layout::Packs => layout::decompress_document(object, ours.len() as u64)
            .is_ok_and(|theirs| theirs == ours),
    }
}

/// Format 1: one listing of `chunks/`, then the chunks it lacks.
async fn upload_missing_chunks(
    store: &Store,
    image: &ImageRef,
    remote: &Remote,
    ids: &[(ChunkId, u64, u64)],
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<(u64, u64), LibraryError> {
    let listed: std::collections::HashMap<ChunkId, u64> = remote
        .list("chunks/")
        .await?
        .iter()
        .filter_map(|(k, size)| Some((layout::chunk_of_key(k)?, *size)))
        .collect();
    let present = ids
        .iter()
        .filter_map(|c| Some((*c, *listed.get(&c.0)?)))
        .collect();
    let on_remote = crate::push_check::chunk_objects(remote, store, present, progress).await?;
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
    upload_chunks(store, image, remote, missing, progress).await
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

/// What a push publishes once every chunk is there.
struct Published<'a> {
    library: Layout,
    manifest_key: &'a str,
    /// The manifest's bytes (what is signed).
    manifest_bytes: &'a [u8],
    /// The manifest object's bytes (format 2: compressed).
    stored_manifest: Vec<u8>,
    sig_bytes: &'a [u8],
    /// Format 2: the image's pack index, stored form.
    pack_index: Option<Vec<u8>>,
}

/// Publishes the image: the manifest if the remote has none (`there`: it had this manifest
/// when the push began), created only if absent (`put_new`), then its pack index (format 2)
/// and signature. The manifest is the claim on NAME@VERSION: a push that loses it writes
/// nothing beside it. (Signature first, as until 2026-12-03, let the loser of a race of two
/// different manifests replace the winner's signature after the winner had checked it: an
/// image no bench could pull, and the winner told it was pushed.) `Ok(false)`: the manifest
/// was there already, or a racing push published the same one first; another manifest under
/// the name is a conflict. Either way the signature and pack index beside the manifest are
/// made ours if they are not (a push cut off between the manifest and its signature is
/// finished so). Until its signature is there an image is not listed and a pull says it is
/// unfinished.
async fn commit(
    remote: &Remote,
    image: &ImageRef,
    p: &Published<'_>,
    there: bool,
) -> Result<bool, LibraryError> {
    let sig_key = layout::signature_key(image);
    let index_key = layout::pack_index_key(image);
    let created = !there
        && remote
            .put_new(p.manifest_key, Bytes::from(p.stored_manifest.clone()))
            .await?;
    // The manifest read back, also when this push created it: a store whose conditional create
    // is not atomic (s3s-fs checks, then writes) can let a racing push's manifest replace it.
    let ours = async || {
        let theirs = remote.get(p.manifest_key, MAX_DOCUMENT).await?;
        match theirs.is_some_and(|t| same_manifest(p.library, &t, p.manifest_bytes)) {
            true => Ok(()),
            false => Err(LibraryError::Conflict {
                image: image.clone(),
                url: remote.url().clone(),
            }),
        }
    };
    ours().await?;
    // The pack index before the signature: the signature makes the image listed and pulled.
    if let Some(index) = &p.pack_index
        && remote.get(&index_key, MAX_DOCUMENT).await?.as_deref() != Some(&index[..])
    {
        remote
            .put(&index_key, Bytes::copy_from_slice(index))
            .await?;
    }
    // Then the signature, checked after it is written (and the manifest once more): on such a
    // store the push that lost may have written its signature in the same instant.
    let put_sig = async || {
        remote
            .put(&sig_key, Bytes::copy_from_slice(p.sig_bytes))
            .await
    };
    if remote.get(&sig_key, MAX_DOCUMENT).await?.as_deref() != Some(p.sig_bytes) {
        put_sig().await?;
    }
    for _ in 0..3 {
        ours().await?;
        if remote.get(&sig_key, MAX_DOCUMENT).await?.as_deref() == Some(p.sig_bytes) {
            return Ok(created);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        put_sig().await?;
    }
    Err(LibraryError::Request {
        action: "publishing the signature of",
        object: remote.url().object(&sig_key),
        reason: "it was replaced three times after it was written (another push of the same \
                 name is writing its own)"
            .into(),
        status: None,
    })
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
    let data =
        tokio::task::spawn_blocking(move || read_checked(&store, id, offset, len, &mut Vec::new()))
            .await
            .expect("chunk read task panicked")
            .map_err(|e| not_pushable(image, e))?;
    let n = data.len() as u64;
    remote
        .put(&layout::chunk_key(id), Bytes::from(data))
        .await?;
    Ok(n)
}

/// A chunk's compressed bytes from the store, checked against its id (`scratch` takes the
/// decompressed bytes): only such a chunk leaves the bench.
pub(crate) fn read_checked(
    store: &Store,
    id: ChunkId,
    offset: u64,
    len: u64,
    scratch: &mut Vec<u8>,
) -> Result<Vec<u8>, image_store::StoreError> {
    let c = store.read_compressed(id, offset, len)?;
    scratch.resize(len as usize, 0);
    c.decompress_verify_in_place(scratch)?;
    Ok(c.data)
}

/// A local chunk gone bad: the image cannot be pushed.
pub(crate) fn not_pushable(image: &ImageRef, e: image_store::StoreError) -> LibraryError {
    LibraryError::NotPushable {
        image: image.clone(),
        reason: format!("{e} (run `tek image verify {image}`)"),
    }
}

/// How many times `index.json` is rewritten while other pushes keep changing `images/`.
const INDEX_ROUNDS: usize = 16;

/// Rewrites `index.json` from a listing of `images/`, then lists again: if the listing changed
/// meanwhile (a racing push committed and may have written its index before ours), writes
/// again. The last index written is thus checked against a listing made after it by its own
/// writer, and any push that commits later writes (and checks) its own.
async fn write_index(remote: &Remote, library: Layout) -> Result<(), LibraryError> {
    let mut images = crate::listing::listed(remote, library).await?;
    for _ in 0..INDEX_ROUNDS {
        let index = layout::Index {
            format: layout::INDEX_FORMAT,
            images,
        };
        let bytes = serde_json::to_vec_pretty(&index).expect("serializing index");
        remote.put(layout::INDEX_KEY, Bytes::from(bytes)).await?;
        let now = crate::listing::listed(remote, library).await?;
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
        status: None,
    })
}
