//! A push's check of the chunks it would reuse from packs already on a format-2 remote.
//!
//! An id list is the remote's word, and so are the pack's bytes: a list naming chunks its pack
//! does not hold, or a pack whose bytes changed on the server, would make a push report success
//! for an image no bench can pull, and every later push would reuse the same bad places. So
//! before a chunk counts as present, its bytes are read back from the place its id list gives
//! (ranged GETs in pack order, up to 8 MiB each, through small gaps) and decompressed and BLAKE3-checked
//! against its id, exactly the check a pull makes. A pack with one chunk that fails is not
//! believed at all: none of its chunks are reused, they go up again in new packs, and the push
//! names the pack.
//!
//! Why this check and not another: hashing a whole pack against its name reads every pack this
//! push touches in full (64 MiB each, mostly chunks it does not need), and still says nothing
//! of an id list that places chunks wrongly inside an intact pack; a size check catches only a
//! truncated pack. Reading the reused chunks' own bytes is sound for exactly what the push
//! relies on, and costs what a pull of those chunks costs (the bytes of the chunks the image
//! shares with the remote, read once per push; no request or byte for chunks it uploads).

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use image_store::{ChunkId, CompressedChunk, WantedChunk};

use crate::error::LibraryError;
use crate::packs::{self, Location, PackIds, Span};
use crate::push::PushProgress;
use crate::remote::Remote;

/// The remote's packs as their id lists describe them, and which of them were found lying.
pub(crate) struct RemotePacks {
    /// Every readable id list, by pack name.
    pub lists: Vec<(String, PackIds)>,
    /// Packs not believed, with the one line that says why.
    pub untrusted: BTreeMap<String, String>,
}

impl RemotePacks {
    /// Where each chunk is, in packs still believed (the first listed place wins).
    pub fn placed(&self) -> HashMap<ChunkId, Location> {
        let mut placed = HashMap::new();
        for (p, ids) in &self.lists {
            if self.untrusted.contains_key(p) {
                continue;
            }
            for &(id, off, clen) in &ids.chunks {
                placed.entry(id).or_insert((p.clone(), off, clen));
            }
        }
        placed
    }

    /// The places of `reused` (the image's chunks the remote has, in image order), each read
    /// back and checked; a pack whose chunk fails is marked untrusted and its chunks are placed
    /// again elsewhere (and checked there) or count as absent. Returns the places checked.
    pub async fn checked(
        &mut self,
        remote: &Remote,
        reused: &[WantedChunk],
        progress: &(dyn Fn(PushProgress) + Sync),
    ) -> Result<HashMap<ChunkId, Location>, LibraryError> {
        // (chunk, pack) pairs already read and found good.
        let mut good: HashMap<ChunkId, String> = HashMap::new();
        loop {
            let placed = self.placed();
            let todo: Vec<WantedChunk> = reused
                .iter()
                .filter(|w| {
                    placed
                        .get(&w.id)
                        .is_some_and(|(p, _, _)| good.get(&w.id) != Some(p))
                })
                .copied()
                .collect();
            if todo.is_empty() {
                return Ok(placed);
            }
            let spans = read_plan(&todo, &placed);
            progress(PushProgress::Checking {
                chunks: todo.len() as u64,
                bytes: spans.iter().map(|s| s.end - s.start).sum(),
            });
            let in_flight = (remote.options().in_flight / 2).max(1);
            let mut stream = futures::stream::iter(spans)
                .map(|s| async move {
                    let read = s.end - s.start;
                    (read, check_span(remote, s).await)
                })
                .buffer_unordered(in_flight);
            let (mut results, mut read) = (Vec::new(), 0);
            while let Some((n, r)) = stream.next().await {
                read += n;
                progress(PushProgress::Checked(read));
                results.push(r);
            }
            let before = self.untrusted.len();
            for r in results {
                match r? {
                    Ok(ids) => {
                        for id in ids {
                            good.insert(id, placed[&id].0.clone());
                        }
                    }
                    Err((pack, line)) => {
                        self.untrusted.entry(pack).or_insert(line);
                    }
                }
            }
            if self.untrusted.len() == before {
                return Ok(placed);
            }
        }
    }
}

/// Widest gap between two chunks to check that one read goes through (its bytes are read and
/// not checked) rather than a second request.
const MAX_GAP: u64 = 1 << 20;

/// The reads that check `todo`: unlike a pull's plan (image order, no gaps, so a write can
/// follow and a new version fetches only its bytes) a check needs no order, so its chunks are
/// read in pack order and a read runs through gaps of up to [`MAX_GAP`] of chunks the image
/// does not reuse. A new version shares most chunks of the last one, but in its own order and
/// with its changed chunks cut out: in image order the reused bytes of a 4 GiB v2 after v1 fell
/// into 4,119 ranges of 114 KB on average; in pack order they are a few dozen 8 MiB reads.
fn read_plan(todo: &[WantedChunk], placed: &HashMap<ChunkId, Location>) -> Vec<Span> {
    let mut at: Vec<(&Location, WantedChunk)> = todo.iter().map(|w| (&placed[&w.id], *w)).collect();
    at.sort_by(|(a, _), (b, _)| (&a.0, a.1).cmp(&(&b.0, b.1)));
    at.dedup_by(|(_, a), (_, b)| a.id == b.id);
    let mut spans: Vec<Span> = Vec::new();
    for ((pack, off, clen), w) in at {
        let end = off + clen;
        match spans.last_mut() {
            Some(s)
                if s.pack == *pack
                    && *off >= s.end
                    && off - s.end <= MAX_GAP
                    && end - s.start <= packs::MAX_SPAN =>
            {
                s.end = end;
                s.chunks.push((w, *off, *clen));
            }
            _ => spans.push(Span {
                pack: pack.clone(),
                start: *off,
                end,
                chunks: vec![(w, *off, *clen)],
            }),
        }
    }
    spans
}

/// One span's check: the ids that passed, or the pack and the line saying why it is not
/// believed.
type Checked = Result<Vec<ChunkId>, (String, String)>;

/// Reads one span and checks its chunks: the ids that passed, or the pack and why it is not
/// believed. A request that fails (network, server error) fails the push: that says nothing
/// about the pack.
async fn check_span(remote: &Remote, s: Span) -> Result<Checked, LibraryError> {
    let key = packs::pack_key(&s.pack);
    let lie = |what: String| {
        Ok(Err((
            s.pack.clone(),
            format!(
                "{} does not hold what its id list says ({what}); no chunk is reused from it",
                remote.url().object(&key)
            ),
        )))
    };
    let Some(mut body) = remote.get_range(&key, s.start..s.end).await? else {
        return lie("the pack is gone".into());
    };
    let want = (s.end - s.start) as usize;
    let mut buf = Vec::with_capacity(want);
    while let Some(piece) = body.next().await {
        buf.extend_from_slice(&piece?);
        if buf.len() > want {
            return lie(format!(
                "bytes {}-{} came back longer than asked",
                s.start,
                s.end - 1
            ));
        }
    }
    if buf.len() < want {
        return lie(format!(
            "bytes {}-{} came back {} bytes short",
            s.start,
            s.end - 1,
            want - buf.len()
        ));
    }
    let start = s.start;
    let checked = tokio::task::spawn_blocking(move || {
        let mut scratch = Vec::new();
        let mut ids = Vec::with_capacity(s.chunks.len());
        for (w, off, clen) in s.chunks {
            let at = (off - start) as usize;
            let c = CompressedChunk {
                id: w.id,
                offset: w.offset,
                len: w.len,
                data: buf[at..at + clen as usize].to_vec(),
            };
            scratch.resize(w.len as usize, 0);
            if let Err(e) = c.decompress_verify_in_place(&mut scratch) {
                return Err(format!(
                    "bytes {off}-{} are not chunk {}: {}",
                    off + clen - 1,
                    w.id,
                    match e {
                        image_store::StoreError::HashMismatch { .. } => "its BLAKE3 differs".into(),
                        image_store::StoreError::CorruptChunk { reason, .. } => reason,
                        e => e.to_string(),
                    }
                ));
            }
            ids.push(w.id);
        }
        Ok(ids)
    })
    .await
    .expect("chunk check task panicked");
    match checked {
        Ok(ids) => Ok(Ok(ids)),
        Err(what) => lie(what),
    }
}

/// Format 1: which of `present` (the image's chunks the listing of `chunks/` shows, each with
/// the listed size) the remote really holds. A chunk object is the remote's word like a pack:
/// one whose size differs from the bench's stored chunk is not believed unread; the others are
/// fetched and checked as a pull checks them (one GET each, `in_flight` at a time). What fails
/// goes up again (a PUT replaces the object), so a re-push repairs a rotted chunk.
pub(crate) async fn chunk_objects(
    remote: &Remote,
    store: &image_store::Store,
    present: Vec<((ChunkId, u64, u64), u64)>,
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<std::collections::HashSet<ChunkId>, LibraryError> {
    let sized: Vec<(WantedChunk, u64)> = present
        .into_iter()
        .filter(|&((id, _, _), listed)| {
            std::fs::metadata(store.chunk_path(id)).is_ok_and(|m| m.len() == listed)
        })
        .map(|((id, offset, len), listed)| (WantedChunk { id, offset, len }, listed))
        .collect();
    progress(PushProgress::Checking {
        chunks: sized.len() as u64,
        bytes: sized.iter().map(|s| s.1).sum(),
    });
    let mut stream = futures::stream::iter(sized)
        .map(|(w, listed)| async move {
            let got = match crate::fetch::fetch_object(remote, w).await {
                Ok((c, _)) => Some(c),
                Err(LibraryError::MissingChunk { .. }) => None,
                Err(e) => return Err(e),
            };
            let good = tokio::task::spawn_blocking(move || {
                got.is_some_and(|c| {
                    c.decompress_verify_in_place(&mut vec![0; w.len as usize])
                        .is_ok()
                })
            })
            .await
            .expect("chunk check task panicked");
            Ok::<_, LibraryError>((w.id, listed, good))
        })
        .buffer_unordered(remote.options().in_flight.max(1));
    let (mut good, mut read) = (std::collections::HashSet::new(), 0);
    while let Some(r) = stream.next().await {
        let (id, listed, ok) = r?;
        read += listed;
        progress(PushProgress::Checked(read));
        if ok {
            good.insert(id);
        } else {
            tracing::debug!("chunk object {id} on the remote fails its check; it goes up again");
        }
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    #[test]
    fn a_check_reads_in_pack_order_through_small_gaps_and_not_through_large_ones() {
        let w = |n: u8| WantedChunk {
            id: id(n),
            offset: u64::from(n) << 20,
            len: 1 << 16,
        };
        let placed: HashMap<ChunkId, Location> = [
            (id(1), ("a".into(), 0, 100)),
            (id(2), ("a".into(), 100, 100)),
            (id(3), ("a".into(), 300, 100)), // a 100-byte gap: read through
            (id(4), ("a".into(), 400 + MAX_GAP + 1, 50)), // past the gap limit: a new read
            (id(5), ("b".into(), 0, 10)),
        ]
        .into_iter()
        .collect();
        // Image order is not pack order.
        let todo = [w(5), w(3), w(1), w(4), w(2)];
        let spans = read_plan(&todo, &placed);
        let got: Vec<(&str, u64, u64, usize)> = spans
            .iter()
            .map(|s| (s.pack.as_str(), s.start, s.end, s.chunks.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 0, 400, 3),
                ("a", 400 + MAX_GAP + 1, 400 + MAX_GAP + 51, 1),
                ("b", 0, 10, 1)
            ]
        );
    }
}
