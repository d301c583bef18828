//! Fetching a pull's missing chunks into the store, in both layouts. Checking and writing is
//! per chunk work that bounds a pull (bench/README.md, "Image library"), so chunks reach the
//! store in batches: one blocking task checks and writes about [`BATCH_BYTES`] of them
//! ([`image_store::Incoming::add_chunks`]) instead of one task per 11 KiB chunk.
//!
//! - Format 1 (one object per chunk): GETs `in_flight` at a time; the chunks are handed to the
//!   store in groups of [`GROUP`].
//! - Format 2 (packs): ranged GETs of adjacent chunks ([`crate::packs::plan`]), `in_flight / 2`
//!   at a time; each body is read as it arrives and its complete chunks go to the store while
//!   the rest is on its way, so a cut-off range keeps what came before the cut.
//!
//! On the first failure no new request starts; those in flight finish, and what passed its
//! check is kept (the caller names it: [`image_store::Incoming::keep`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use image_store::{ChunkId, CompressedChunk, Incoming, StoreError, WantedChunk};

use crate::error::LibraryError;
use crate::layout;
use crate::packs::{self, Span};
use crate::pull::Cancel;
use crate::remote::Remote;

/// Compressed bytes handed to the store in one blocking task (format 2).
pub const BATCH_BYTES: usize = 1 << 20;

/// A batch waits at most this long for more of a slow body before it goes to the store.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Chunk objects handed to the store in one blocking task (format 1).
pub const GROUP: usize = 64;

/// What was stored so far: chunks, compressed bytes, image bytes (for progress).
#[derive(Default)]
pub struct Tally {
    chunks: AtomicU64,
    bytes: AtomicU64,
    image_bytes: AtomicU64,
}

impl Tally {
    /// (chunks, compressed bytes) stored.
    pub fn done(&self) -> (u64, u64) {
        (
            self.chunks.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Where a chunk came from, for its error: the object's URL (and bytes of a pack).
type Origin = (ChunkId, String);

/// Checks and writes `chunks` in one blocking task, counting what passed in `tally` and
/// telling `progress`; a chunk that fails is named with its object's URL.
async fn store_batch(
    incoming: &Arc<Incoming>,
    chunks: Vec<(CompressedChunk, String)>,
    tally: &Tally,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), LibraryError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let (chunks, origins): (Vec<_>, Vec<Origin>) = chunks
        .into_iter()
        .map(|(c, url)| {
            let id = c.id;
            (c, (id, url))
        })
        .unzip();
    let lens: Vec<u64> = chunks.iter().map(|c| c.len).collect();
    let inc = Arc::clone(incoming);
    // Decompressing and hashing is CPU work: off the runtime's threads.
    let (added, r) = tokio::task::spawn_blocking(move || inc.add_chunks(chunks))
        .await
        .expect("chunk check task panicked");
    tally.chunks.fetch_add(added.chunks, Ordering::Relaxed);
    tally.bytes.fetch_add(added.bytes, Ordering::Relaxed);
    let image: u64 = lens[..added.chunks as usize].iter().sum();
    progress(tally.image_bytes.fetch_add(image, Ordering::Relaxed) + image);
    r.map_err(|e| match e {
        StoreError::HashMismatch { chunk, .. } | StoreError::CorruptChunk { chunk, .. } => {
            let object = origins
                .iter()
                .find(|o| o.0 == chunk)
                .map(|o| o.1.clone())
                .unwrap_or_default();
            LibraryError::CorruptChunk {
                chunk,
                object,
                reason: e.to_string(),
            }
        }
        e => LibraryError::from(e),
    })
}

/// Format 1: fetches `wanted` (one object each) into `incoming`.
pub async fn chunk_objects(
    remote: &Remote,
    incoming: &Arc<Incoming>,
    wanted: Vec<WantedChunk>,
    (tally, cancel): (&Tally, &Cancel),
    progress: &(dyn Fn(u64) + Sync),
) -> Option<LibraryError> {
    // Two groups at a time, each with half the requests: one group's GETs run while the
    // other's chunks are being checked.
    let per_group = (remote.options().in_flight / 2).max(1);
    let groups: Vec<Vec<WantedChunk>> = wanted.chunks(GROUP).map(<[_]>::to_vec).collect();
    let group = |g: Vec<WantedChunk>| async move {
        if let Some(stopped) = cancel.error() {
            return Err(stopped);
        }
        let fetched: Vec<Result<(CompressedChunk, String), LibraryError>> =
            futures::stream::iter(g)
                .map(|w| fetch_object(remote, w))
                .buffered(per_group)
                .collect()
                .await;
        // What came before a failed GET is still stored (kept for the next pull).
        let mut ok = Vec::new();
        let mut failed = None;
        for f in fetched {
            match f {
                Ok(c) if failed.is_none() => ok.push(c),
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        store_batch(incoming, ok, tally, progress).await?;
        failed.map_or(Ok(0), Err)
    };
    crate::bounded(groups, 2, group).await.1
}

/// Format 1: one chunk object, as fetched (not yet checked), and its URL; a missing one is
/// `MissingChunk`. Also the push's check of the chunk objects it reuses.
pub(crate) async fn fetch_object(
    remote: &Remote,
    w: WantedChunk,
) -> Result<(CompressedChunk, String), LibraryError> {
    let key = layout::chunk_key(w.id);
    let object = remote.url().object(&key);
    let Some(data) = remote.get(&key, layout::chunk_object_limit(w.len)).await? else {
        return Err(LibraryError::MissingChunk {
            chunk: w.id,
            offset: w.offset,
            object,
        });
    };
    let chunk = CompressedChunk {
        id: w.id,
        offset: w.offset,
        len: w.len,
        data: data.to_vec(),
    };
    Ok((chunk, object))
}

/// Format 2: fetches the chunks of `spans` (ranged GETs of packs) into `incoming`.
pub async fn packs(
    remote: &Remote,
    incoming: &Arc<Incoming>,
    spans: Vec<Span>,
    (tally, cancel): (&Tally, &Cancel),
    progress: &(dyn Fn(u64) + Sync),
) -> Option<LibraryError> {
    let in_flight = (remote.options().in_flight / 2).max(1);
    let one = |s: Span| async move {
        span(remote, incoming, s, (tally, cancel), progress)
            .await
            .map(|()| 0)
    };
    crate::bounded(spans, in_flight, one).await.1
}

/// The URL of bytes `start..end` of a pack, as errors name it.
fn range_url(remote: &Remote, pack: &str, start: u64, end: u64) -> String {
    format!(
        "{} bytes {start}-{}",
        remote.url().object(&packs::pack_key(pack)),
        end.saturating_sub(1)
    )
}

/// When a ranged GET failed: if the range reaches past the pack's end (the pack index placed a
/// chunk where the pack has none; the server's 416 says only "invalid range"), the error that
/// says so, from the pack's size (one HEAD).
async fn past_the_end(remote: &Remote, s: &Span, whole: &str) -> Option<LibraryError> {
    let size = remote.size(&packs::pack_key(&s.pack)).await.ok()??;
    (s.end > size).then(|| LibraryError::Request {
        action: "fetching",
        object: whole.to_string(),
        reason: format!(
            "the range is past the end of the pack ({size} bytes): the image's pack index \
             places chunks where the pack has none"
        ),
        status: None,
    })
}

/// True when `e` is the server's 416 (Range Not Satisfiable) for a ranged GET.
fn range_refused(e: &LibraryError) -> bool {
    matches!(
        e,
        LibraryError::Request {
            status: Some(416),
            ..
        }
    )
}

/// One ranged GET, read as it arrives: complete chunks go to the store in batches of about
/// [`BATCH_BYTES`].
async fn span(
    remote: &Remote,
    incoming: &Arc<Incoming>,
    s: Span,
    (tally, cancel): (&Tally, &Cancel),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), LibraryError> {
    let key = packs::pack_key(&s.pack);
    let whole = range_url(remote, &s.pack, s.start, s.end);
    let got = tokio::select! {
        stopped = cancel.stopped() => return Err(stopped),
        got = remote.get_range(&key, s.start..s.end) => got,
    };
    let got = match got {
        // Only for a refused range (416, never retried): after a timeout or a dead server the
        // HEAD would wait out the same retries again (a stalled server held a pull 304 s
        // instead of 152 s: one HEAD per span).
        Err(e @ LibraryError::Request { .. }) if range_refused(&e) => {
            Err(past_the_end(remote, &s, &whole).await.unwrap_or(e))
        }
        // The range, not only the pack: a pack holds many spans.
        Err(LibraryError::Request {
            action,
            reason,
            status,
            ..
        }) => Err(LibraryError::Request {
            action,
            object: whole.clone(),
            reason,
            status,
        }),
        got => got,
    };
    let Some(mut body) = got? else {
        let (w, _, _) = s.chunks[0];
        return Err(LibraryError::MissingChunk {
            chunk: w.id,
            offset: w.offset,
            object: whole,
        });
    };
    // buf holds the pack's bytes from `base` on; chunks[next..] are still to cut out.
    let (mut buf, mut base, mut next) = (Vec::<u8>::new(), s.start, 0usize);
    let mut batch: Vec<(CompressedChunk, String)> = Vec::new();
    let mut batch_bytes = 0usize;
    let received = loop {
        // A stop (a signal) ends the body here: what arrived complete is kept below.
        let piece_or_stop = async {
            tokio::select! {
                stopped = cancel.stopped() => Some(Err(stopped)),
                piece = body.next() => piece,
            }
        };
        let arrived = if batch.is_empty() {
            piece_or_stop.await
        } else {
            match tokio::time::timeout(FLUSH_AFTER, piece_or_stop).await {
                Ok(arrived) => arrived,
                Err(_) => {
                    // A slow body: what is complete goes to the store (and to a reader
                    // waiting for it) now, not once a whole batch arrived.
                    batch_bytes = 0;
                    store_batch(incoming, std::mem::take(&mut batch), tally, progress).await?;
                    continue;
                }
            }
        };
        let piece = match arrived {
            Some(Ok(p)) => p,
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        };
        buf.extend_from_slice(&piece);
        if base + buf.len() as u64 > s.end {
            break Err(LibraryError::Oversized {
                object: whole.clone(),
                size: base + buf.len() as u64 - s.start,
                limit: s.end - s.start,
            });
        }
        let mut used = 0usize;
        while let Some(&(w, off, clen)) = s.chunks.get(next) {
            let at = (off - base) as usize;
            if at + clen as usize > buf.len() {
                break;
            }
            let data = buf[at..at + clen as usize].to_vec();
            batch.push((
                CompressedChunk {
                    id: w.id,
                    offset: w.offset,
                    len: w.len,
                    data,
                },
                range_url(remote, &s.pack, off, off + clen),
            ));
            batch_bytes += clen as usize;
            used = at + clen as usize;
            next += 1;
        }
        buf.drain(..used);
        base += used as u64;
        if batch_bytes >= BATCH_BYTES {
            // While this range's batch is checked, its next bytes wait in the socket and the
            // other ranges in flight go on.
            batch_bytes = 0;
            store_batch(incoming, std::mem::take(&mut batch), tally, progress).await?;
        }
    };
    // What arrived complete is stored, also when the body was cut off.
    store_batch(incoming, batch, tally, progress).await?;
    received?;
    if next < s.chunks.len() {
        let (w, off, clen) = s.chunks[next];
        return Err(LibraryError::Request {
            action: "fetching",
            object: whole,
            reason: format!(
                "the body ended early, before chunk {} (image offset {}) at bytes {off}-{}",
                w.id,
                w.offset,
                off + clen - 1
            ),
            status: None,
        });
    }
    Ok(())
}
