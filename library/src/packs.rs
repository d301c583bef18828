//! Format 2's pack files: many store chunk files (zstd frames) concatenated into one object,
//! ~64 MiB, named by the BLAKE3 of its bytes (`packs/<hash>.pack`), and the two documents that
//! say what is where (both JSON, zstd-compressed; documented in ARCHITECTURE.md):
//!
//! - the image's **pack index** (`images/NAME/VERSION.packs.zst`, [`PackIndex`]): for each
//!   distinct chunk of the manifest, in manifest order (first use), which pack, at what offset,
//!   how many compressed bytes. Chunk ids are not repeated (the signed manifest has them), so
//!   the index of a 43k-chunk image is a few hundred KB. It is not signed: a pull checks every
//!   chunk's BLAKE3 after the ranged GET, so a lying index can only fail a pull, and a pull
//!   refuses an index made for another manifest ([`PackIndex::locations`]).
//! - a pack's **id list** (`packs/<hash>.ids`, [`PackIds`]): the chunks it holds, uploaded after
//!   the pack. It is what a push reads to learn which chunks the remote already has (a push cut
//!   off before its image's index still left complete packs that the next push reuses).

use std::collections::HashMap;

use image_store::{ChunkId, Extent, Manifest, WantedChunk};
use serde::{Deserialize, Serialize};

use crate::layout;

/// Version of the pack index and of the id list.
pub const PACK_DOCUMENT_FORMAT: u32 = 1;

/// Where every pack ends at the latest: no push writes a pack of more than 1 TiB (the default
/// is 64 MiB), so a place beyond it is a lie, refused with the index before any request.
pub const MAX_PACK_END: u64 = 1 << 40;

/// Largest ranged GET a pull makes.
pub const MAX_SPAN: u64 = 8 << 20;

/// Smallest a pull splits its ranges to (to keep several in flight for a small image).
pub const MIN_SPAN: u64 = 256 << 10;

/// Where a pack lives.
pub fn pack_key(pack: &str) -> String {
    format!("packs/{pack}.pack")
}

/// Where a pack's id list lives.
pub fn ids_key(pack: &str) -> String {
    format!("packs/{pack}.ids")
}

/// The pack a key under `packs/` names (`.pack`) and whether it is the id list instead.
pub fn pack_of_key(key: &str) -> Option<(String, bool)> {
    let file = key.strip_prefix("packs/")?;
    let (name, ids) = if let Some(n) = file.strip_suffix(".pack") {
        (n, false)
    } else {
        (file.strip_suffix(".ids")?, true)
    };
    is_pack_name(name).then(|| (name.to_string(), ids))
}

/// A pack's name: 64 lowercase hex digits (so no index can make a pull fetch another key).
fn is_pack_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An image's pack index (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackIndex {
    /// [`PACK_DOCUMENT_FORMAT`].
    pub format: u32,
    /// BLAKE3 of the manifest bytes this index was made for.
    pub manifest_blake3: String,
    /// The packs its chunks are in (names, see [`pack_key`]).
    pub packs: Vec<String>,
    /// Per distinct chunk in manifest order: (pack number in `packs`, offset, compressed bytes).
    pub chunks: Vec<(u32, u64, u64)>,
}

/// A chunk's place on the remote: pack name, offset, compressed length.
pub type Location = (String, u64, u64);

/// The distinct chunks of a manifest in order of first use: (id, first offset, length).
pub fn distinct(m: &Manifest) -> Vec<(ChunkId, u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    m.extents
        .iter()
        .filter_map(|e| match *e {
            Extent::Chunk { id, offset, len } if seen.insert(id) => Some((id, offset, len)),
            _ => None,
        })
        .collect()
}

impl PackIndex {
    /// The index of `manifest` (bytes `manifest_bytes`) with every chunk's place in `placed`.
    pub fn build(
        manifest: &Manifest,
        manifest_bytes: &[u8],
        placed: &HashMap<ChunkId, Location>,
    ) -> PackIndex {
        let mut packs: Vec<String> = Vec::new();
        let mut number: HashMap<&str, u32> = HashMap::new();
        let mut chunks = Vec::new();
        for (id, _, _) in distinct(manifest) {
            let (pack, off, clen) = &placed[&id];
            let n = *number.entry(pack).or_insert_with(|| {
                packs.push(pack.clone());
                packs.len() as u32 - 1
            });
            chunks.push((n, *off, *clen));
        }
        PackIndex {
            format: PACK_DOCUMENT_FORMAT,
            manifest_blake3: blake3::hash(manifest_bytes).to_hex().to_string(),
            packs,
            chunks,
        }
    }

    /// The stored form (compressed JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        layout::compress_document(&serde_json::to_vec(self).expect("serializing a pack index"))
    }

    /// Parses a fetched index and checks it belongs to `manifest` (bytes `manifest_bytes`,
    /// already accepted): the chunk places it gives, by chunk id. A refused index names why.
    pub fn locations(
        compressed: &[u8],
        manifest: &Manifest,
        manifest_bytes: &[u8],
    ) -> Result<HashMap<ChunkId, Location>, String> {
        let raw = layout::decompress_document(compressed, layout::MAX_DOCUMENT)?;
        let index: PackIndex =
            serde_json::from_slice(&raw).map_err(|e| format!("not a pack index: {e}"))?;
        if index.format != PACK_DOCUMENT_FORMAT {
            return Err(format!(
                "pack index format {}; this tek reads {PACK_DOCUMENT_FORMAT}",
                index.format
            ));
        }
        if index.manifest_blake3 != blake3::hash(manifest_bytes).to_hex().as_str() {
            return Err("made for another manifest (its manifest_blake3 differs)".into());
        }
        if let Some(bad) = index.packs.iter().find(|p| !is_pack_name(p)) {
            return Err(format!("bad pack name {bad:?}"));
        }
        let chunks = distinct(manifest);
        if chunks.len() != index.chunks.len() {
            return Err(format!(
                "{} chunk places for a manifest of {} distinct chunks",
                index.chunks.len(),
                chunks.len()
            ));
        }
        let mut out = HashMap::with_capacity(chunks.len());
        for ((id, _, len), &(pack, off, clen)) in chunks.into_iter().zip(&index.chunks) {
            let Some(name) = index.packs.get(pack as usize) else {
                return Err(format!(
                    "chunk {id} in pack number {pack}, which is not listed"
                ));
            };
            if clen == 0 || clen > layout::chunk_object_limit(len) {
                return Err(format!(
                    "chunk {id} of {len} bytes is given {clen} compressed bytes (at most {} \
                     can hold it)",
                    layout::chunk_object_limit(len)
                ));
            }
            if off.checked_add(clen).is_none_or(|end| end > MAX_PACK_END) {
                return Err(format!(
                    "chunk {id} is placed at offset {off} with {clen} bytes, past the end of \
                     any pack (a pack is at most {MAX_PACK_END} bytes)"
                ));
            }
            out.insert(id, (name.clone(), off, clen));
        }
        Ok(out)
    }
}

/// A pack's id list (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackIds {
    /// [`PACK_DOCUMENT_FORMAT`].
    pub format: u32,
    /// (chunk id, offset, compressed bytes), in pack order.
    pub chunks: Vec<(ChunkId, u64, u64)>,
}

impl PackIds {
    /// The stored form (compressed JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        layout::compress_document(&serde_json::to_vec(self).expect("serializing an id list"))
    }

    /// Parses a fetched id list of a pack of `pack_size` bytes. A list that places a chunk
    /// (even partly) outside its pack is refused, naming the entry: it does not describe its
    /// pack, so nothing in it is believed.
    pub fn parse(compressed: &[u8], pack_size: u64) -> Result<PackIds, String> {
        let raw = layout::decompress_document(compressed, layout::MAX_DOCUMENT)?;
        let ids: PackIds =
            serde_json::from_slice(&raw).map_err(|e| format!("not a pack id list: {e}"))?;
        if ids.format != PACK_DOCUMENT_FORMAT {
            return Err(format!(
                "id list format {}; this tek reads {PACK_DOCUMENT_FORMAT}",
                ids.format
            ));
        }
        for &(id, off, clen) in &ids.chunks {
            if clen == 0 {
                return Err(format!("chunk {id} at offset {off} is given 0 bytes"));
            }
            if off.checked_add(clen).is_none_or(|end| end > pack_size) {
                return Err(format!(
                    "chunk {id} at offset {off} with {clen} bytes ends past the pack's \
                     {pack_size} bytes"
                ));
            }
        }
        Ok(ids)
    }
}

/// One ranged GET: bytes `start..end` of a pack, holding `chunks` back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The pack's name.
    pub pack: String,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The chunks, in pack order, each with its offset in the pack and compressed length.
    pub chunks: Vec<(WantedChunk, u64, u64)>,
}

/// The ranged GETs that fetch `wanted` (in image order), given each chunk's place: a chunk
/// starting where the previous one of the same pack ended joins its range, up to `max_span`
/// bytes. Nothing is read that is not wanted (no gaps read through), so a resumed pull or a new
/// version fetches exactly its missing chunks' bytes. The ranges come in image order, so an
/// image written while it is pulled gets its first chunks first. A chunk without a place is an
/// error naming it.
pub fn plan(
    wanted: &[WantedChunk],
    places: &HashMap<ChunkId, Location>,
    max_span: u64,
) -> Result<Vec<Span>, ChunkId> {
    let mut spans: Vec<Span> = Vec::new();
    for w in wanted {
        let (pack, off, clen) = places.get(&w.id).ok_or(w.id)?;
        match spans.last_mut() {
            Some(s) if s.pack == *pack && s.end == *off && off + clen - s.start <= max_span => {
                s.end = off + clen;
                s.chunks.push((*w, *off, *clen));
            }
            _ => spans.push(Span {
                pack: pack.clone(),
                start: *off,
                end: off + clen,
                chunks: vec![(*w, *off, *clen)],
            }),
        }
    }
    Ok(spans)
}

/// The largest range for fetching `bytes` with `in_flight` ranges at a time: small enough that
/// they all have work, within [`MIN_SPAN`]..[`MAX_SPAN`].
pub fn span_size(bytes: u64, in_flight: usize) -> u64 {
    (bytes / in_flight.max(1) as u64).clamp(MIN_SPAN, MAX_SPAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(ids: &[ChunkId]) -> Manifest {
        let extents = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Extent::Chunk {
                offset: i as u64 * 100,
                len: 100,
                id: *id,
            })
            .collect::<Vec<_>>();
        let json = serde_json::json!({
            "format": image_store::MANIFEST_FORMAT, "name": "a", "version": "1",
            "size": 100 * ids.len(), "sha256": "", "blake3": "", "created": "",
            "chunking": {"algorithm": "x", "min": 1, "avg": 2, "max": 4},
            "extents": extents, "gpt": null,
            "hints": serde_json::to_value(image_store::Hints::default()).unwrap(),
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_index_round_trips_and_a_lying_one_is_refused_with_the_reason() {
        let ids: Vec<ChunkId> = (0u8..4).map(|i| ChunkId::of(&[i])).collect();
        let m = manifest(&[ids[0], ids[1], ids[0], ids[2], ids[3]]);
        let (pa, pb) = ("a".repeat(64), "b".repeat(64));
        let placed: HashMap<ChunkId, Location> = [
            (ids[0], (pa.clone(), 0, 50)),
            (ids[1], (pa.clone(), 50, 60)),
            (ids[2], (pb.clone(), 0, 70)),
            (ids[3], (pa.clone(), 110, 10)),
        ]
        .into();
        let index = PackIndex::build(&m, b"manifest", &placed);
        assert_eq!(index.packs, [pa.clone(), pb.clone()]);
        assert_eq!(
            index.chunks,
            [(0, 0, 50), (0, 50, 60), (1, 0, 70), (0, 110, 10)]
        );
        let bytes = index.to_bytes();
        assert_eq!(
            PackIndex::locations(&bytes, &m, b"manifest").unwrap(),
            placed
        );

        let e = PackIndex::locations(&bytes, &m, b"another manifest").unwrap_err();
        assert!(e.contains("another manifest"), "{e}");
        let lie = |f: &dyn Fn(&mut PackIndex)| {
            let mut i = index.clone();
            f(&mut i);
            PackIndex::locations(&i.to_bytes(), &m, b"manifest").unwrap_err()
        };
        assert!(lie(&|i| i.packs[1] = "../../etc/passwd".into()).contains("bad pack name"));
        assert!(lie(&|i| i.chunks[2].0 = 7).contains("not listed"));
        assert!(lie(&|i| i.chunks.pop().map(drop).unwrap_or(())).contains("3 chunk places"));
        assert!(lie(&|i| i.chunks[0].2 = 1 << 30).contains("compressed bytes"));
        let e = lie(&|i| i.chunks[0].1 = u64::MAX - 5);
        assert!(
            e.contains(&format!(
                "offset {} with 50 bytes, past the end",
                u64::MAX - 5
            )),
            "{e}"
        );
        let e = lie(&|i| i.chunks[0].1 = MAX_PACK_END);
        assert!(e.contains("past the end of any pack"), "{e}");
        assert!(lie(&|i| i.format = 2).contains("format 2"));
        let e = PackIndex::locations(b"{}", &m, b"manifest").unwrap_err();
        assert!(e.contains("not zstd"), "{e}");
    }

    #[test]
    fn ranges_join_adjacent_chunks_of_one_pack_in_image_order_only() {
        let w = |i: u8| WantedChunk {
            id: ChunkId::of(&[i]),
            offset: u64::from(i) * 100,
            len: 100,
        };
        let (pa, pb) = ("a".repeat(64), "b".repeat(64));
        let places: HashMap<ChunkId, Location> = [
            (w(0).id, (pa.clone(), 0, 40)),
            (w(1).id, (pa.clone(), 40, 40)),
            (w(2).id, (pa.clone(), 100, 40)), // a gap (a chunk the store has): a new range
            (w(3).id, (pb.clone(), 0, 40)),
            (w(4).id, (pb.clone(), 40, 40)),
            (w(5).id, (pb.clone(), 80, 40)), // would make the range longer than 100
        ]
        .into();
        let wanted: Vec<_> = (0..6).map(w).collect();
        let spans = plan(&wanted, &places, 100).unwrap();
        let got: Vec<_> = spans
            .iter()
            .map(|s| (s.pack.as_str(), s.start, s.end, s.chunks.len()))
            .collect();
        assert_eq!(
            got,
            [
                (&pa[..], 0, 80, 2),
                (&pa[..], 100, 140, 1),
                (&pb[..], 0, 80, 2),
                (&pb[..], 80, 120, 1)
            ]
        );
        let stray = w(9);
        assert_eq!(plan(&[stray], &places, 100).unwrap_err(), stray.id);
        assert_eq!(span_size(1 << 30, 8), MAX_SPAN);
        assert_eq!(span_size(8 << 20, 8), 1 << 20);
        assert_eq!(span_size(1000, 8), MIN_SPAN);
    }

    #[test]
    fn pack_keys() {
        let p = "0123456789abcdef".repeat(4);
        assert_eq!(pack_of_key(&pack_key(&p)), Some((p.clone(), false)));
        assert_eq!(pack_of_key(&ids_key(&p)), Some((p.clone(), true)));
        for stray in ["packs/x.pack", "packs/../a.pack", "chunks/ab/x.zst"] {
            assert_eq!(pack_of_key(stray), None, "{stray}");
        }
        let ids = PackIds {
            format: PACK_DOCUMENT_FORMAT,
            chunks: vec![(ChunkId::of(b"a"), 0, 10), (ChunkId::of(b"b"), 10, 10)],
        };
        assert_eq!(PackIds::parse(&ids.to_bytes(), 20).unwrap(), ids);
        // A place past the pack's end, or past 2^64, refuses the list and names the entry.
        let e = PackIds::parse(&ids.to_bytes(), 15).unwrap_err();
        assert!(
            e.contains("offset 10 with 10 bytes ends past the pack's 15 bytes"),
            "{e}"
        );
        let mut far = ids.clone();
        far.chunks[1].1 = u64::MAX - 1;
        let e = PackIds::parse(&far.to_bytes(), 20).unwrap_err();
        assert!(
            e.contains(&format!("offset {} with 10 bytes ends past", u64::MAX - 1)),
            "{e}"
        );
    }
}
