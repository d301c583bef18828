//! A push's chunks onto a format-2 remote: what the remote has is read from the id lists of its
//! packs (one listing of `packs/`, one GET per pack), the chunks it lacks are read and checked
//! against their ids, concatenated in image order into packs of at most
//! [`RemoteOptions::pack_bytes`](crate::RemoteOptions::pack_bytes), and uploaded two at a time,
//! each followed by its id list. The image's pack index, built last, places every chunk of the
//! image (in the new packs or in packs already there); [`crate::push`] uploads it before the
//! signature and the manifest.
//!
//! A push cut off mid-way leaves complete packs with their id lists: the next push finds them
//! and uploads only the rest. A pack whose id list is missing (cut off between the two PUTs)
//! is not reused: its chunks go up again in a new pack (the orphan costs space, never
//! correctness). No id list is taken at its word: the chunks this push would reuse are read back
//! and checked first (`push_check.rs`), and a pack that does not hold what its id list says is
//! not reused (its chunks go up again) and is named in [`Uploaded::untrusted`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use image_store::{ChunkId, ImageRef, Manifest, Store, WantedChunk};

use crate::error::LibraryError;
use crate::layout::MAX_DOCUMENT;
use crate::packs::{self, PACK_DOCUMENT_FORMAT, PackIds, PackIndex};
use crate::push::{PushProgress, not_pushable, read_checked};
use crate::push_check::RemotePacks;
use crate::remote::Remote;

/// Packs uploaded at once (each is held in memory while it goes up).
const PACKS_IN_FLIGHT: usize = 2;

/// What [`upload`] did.
pub(crate) struct Uploaded {
    /// Chunks uploaded.
    pub chunks: u64,
    /// Their compressed bytes.
    pub bytes: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// The image's pack index, stored form.
    pub index: Vec<u8>,
    /// Packs on the remote found not to hold what their id list says (one line each).
    pub untrusted: Vec<String>,
}

/// Uploads the chunks of `manifest` the remote lacks in new packs and returns the image's pack
/// index (see the module docs).
pub(crate) async fn upload(
    store: &Store,
    image: &ImageRef,
    remote: &Remote,
    (manifest, manifest_bytes): (&Manifest, &[u8]),
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<Uploaded, LibraryError> {
    let mut remote_packs = on_remote(remote).await?;
    let believed = remote_packs.placed();
    let reused: Vec<WantedChunk> = packs::distinct(manifest)
        .into_iter()
        .filter(|(id, _, _)| believed.contains_key(id))
        .map(|(id, offset, len)| WantedChunk { id, offset, len })
        .collect();
    let mut placed = remote_packs.checked(remote, &reused, progress).await?;
    let missing: Vec<(ChunkId, u64, u64)> = packs::distinct(manifest)
        .into_iter()
        .filter(|(id, _, _)| !placed.contains_key(id))
        .collect();
    let sized: Vec<((ChunkId, u64, u64), u64)> = missing
        .iter()
        .map(|&c| {
            let size = std::fs::metadata(store.chunk_path(c.0)).map_or(0, |m| m.len());
            (c, size)
        })
        .collect();
    progress(PushProgress::Missing {
        chunks: missing.len() as u64,
        bytes: sized.iter().map(|s| s.1).sum(),
    });
    let groups = group(&sized, remote.options().pack_bytes);
    let store = Arc::new(store.clone());
    let sent = AtomicU64::new(0);
    let one = |members: Vec<(ChunkId, u64, u64)>| {
        let (store, sent) = (Arc::clone(&store), &sent);
        async move {
            let (name, data, ids) = build(store, image, members).await?;
            let n = data.len() as u64;
            let ids_bytes = Bytes::from(ids.to_bytes());
            let ids_len = ids_bytes.len() as u64;
            remote.put(&packs::pack_key(&name), data).await?;
            remote.put(&packs::ids_key(&name), ids_bytes).await?;
            // A server's 200 is its word: that the objects are there, whole, is asked before
            // the manifest can point at them (one HEAD each; the bytes were checked by the
            // server against their checksum only if it checks).
            stored(remote, &packs::pack_key(&name), n).await?;
            stored(remote, &packs::ids_key(&name), ids_len).await?;
            progress(PushProgress::Uploaded(
                sent.fetch_add(n, Ordering::Relaxed) + n,
            ));
            Ok::<_, LibraryError>((name, ids))
        }
    };
    let built: Vec<(String, PackIds)> = futures::stream::iter(groups)
        .map(one)
        .buffer_unordered(PACKS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut chunks = 0;
    for (name, ids) in &built {
        for &(id, off, clen) in &ids.chunks {
            placed.insert(id, (name.clone(), off, clen));
            chunks += 1;
        }
    }
    Ok(Uploaded {
        chunks,
        bytes: sent.load(Ordering::Relaxed),
        packs: built.len() as u64,
        index: PackIndex::build(manifest, manifest_bytes, &placed).to_bytes(),
        untrusted: remote_packs.untrusted.into_values().collect(),
    })
}

/// That `key` is on the remote with `len` bytes, as its upload was acknowledged.
async fn stored(remote: &Remote, key: &str, len: u64) -> Result<(), LibraryError> {
    let reason = match remote.size(key).await? {
        Some(n) if n == len => return Ok(()),
        Some(n) => format!("the server acknowledged {len} bytes but holds {n}"),
        None => format!("the server acknowledged {len} bytes but does not have it"),
    };
    Err(LibraryError::Request {
        action: "uploading",
        object: remote.url().object(key),
        reason,
        status: None,
    })
}

/// The remote's packs as their id lists say (every id list whose pack exists); an id list
/// that cannot be read or places a chunk past its pack's end makes its pack untrusted.
async fn on_remote(remote: &Remote) -> Result<RemotePacks, LibraryError> {
    let mut sizes = HashMap::new();
    let mut listed = Vec::new();
    for (key, size) in remote.list("packs/").await? {
        match packs::pack_of_key(&key) {
            Some((p, false)) => {
                sizes.insert(p, size);
            }
            Some((p, true)) => listed.push(p),
            None => {}
        }
    }
    listed.retain(|p| sizes.contains_key(p));
    let fetched: Vec<(String, Option<Bytes>)> = futures::stream::iter(listed)
        .map(|p| async move {
            let b = remote.get(&packs::ids_key(&p), MAX_DOCUMENT).await?;
            Ok::<_, LibraryError>((p, b))
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut out = RemotePacks {
        lists: Vec::new(),
        untrusted: Default::default(),
    };
    for (p, b) in fetched {
        let Some(b) = b else { continue };
        match PackIds::parse(&b, sizes[&p]) {
            Ok(ids) => out.lists.push((p, ids)),
            Err(reason) => {
                let line = format!(
                    "{} refused ({reason}); no chunk is reused from its pack",
                    remote.url().object(&packs::ids_key(&p))
                );
                out.untrusted.insert(p, line);
            }
        }
    }
    // The same order every time (the listing's order is the server's).
    out.lists.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Splits chunks (with their compressed sizes) into packs of at most `pack_bytes`, in order.
fn group(sized: &[((ChunkId, u64, u64), u64)], pack_bytes: u64) -> Vec<Vec<(ChunkId, u64, u64)>> {
    let mut out: Vec<Vec<_>> = Vec::new();
    let mut size = 0;
    for &(c, n) in sized {
        if out.is_empty() || (size + n > pack_bytes && size > 0) {
            out.push(Vec::new());
            size = 0;
        }
        out.last_mut().expect("a group").push(c);
        size += n;
    }
    out
}

/// Reads and checks a pack's chunks (off the runtime's threads) and concatenates them: the
/// pack's name (BLAKE3 of its bytes), bytes and id list.
async fn build(
    store: Arc<Store>,
    image: &ImageRef,
    members: Vec<(ChunkId, u64, u64)>,
) -> Result<(String, Bytes, PackIds), LibraryError> {
    tokio::task::spawn_blocking(move || {
        let mut data = Vec::new();
        let mut chunks = Vec::with_capacity(members.len());
        let mut scratch = Vec::new();
        for (id, offset, len) in members {
            let c = read_checked(&store, id, offset, len, &mut scratch)?;
            chunks.push((id, data.len() as u64, c.len() as u64));
            data.extend_from_slice(&c);
        }
        let name = blake3::hash(&data).to_hex().to_string();
        let ids = PackIds {
            format: PACK_DOCUMENT_FORMAT,
            chunks,
        };
        Ok((name, Bytes::from(data), ids))
    })
    .await
    .expect("pack building task panicked")
    .map_err(|e| not_pushable(image, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_fill_up_to_the_size_and_a_big_chunk_gets_one_of_its_own() {
        let c = |i: u8, n: u64| ((ChunkId::of(&[i]), 0, 0), n);
        let sized = [c(0, 40), c(1, 50), c(2, 20), c(3, 500), c(4, 10)];
        let sizes: Vec<usize> = group(&sized, 100).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1, 1, 1]);
        assert!(group(&[], 100).is_empty());
    }
}
