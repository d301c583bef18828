//! The remote library's layouts (documented in ARCHITECTURE.md, "Remote layout"). Format 2,
//! what a push to a new remote writes:
//!
//! ```text
//! PREFIX/
//!   tek-library.json               {"format":"tek-library","version":2,"layout":"packs"}
//!   packs/<blake3>.pack            store chunk files (zstd frames) concatenated, ~64 MiB;
//!                                  named by the BLAKE3 of the pack's bytes
//!   packs/<blake3>.ids             which chunks a pack holds (`packs.rs`: the push's catalog)
//!   images/NAME/VERSION.packs.zst  the image's pack index: where each of its chunks is
//!   images/NAME/VERSION.sig        the manifest's signature
//!   images/NAME/VERSION.json.zst   the manifest, zstd-compressed; its decompression is the
//!                                  exact bytes signed (uploaded last: the commit)
//!   index.json                     the images, for remotes that cannot list (plain HTTP)
//! ```
//!
//! Format 1 (still read and, on a remote created with it, still written):
//!
//! ```text
//! PREFIX/
//!   tek-library.json           {"format":"tek-library","version":1,"layout":"chunk-objects"}
//!   chunks/ab/abcdef....zst    one object per chunk: the store's chunk file (zstd frame of the
//!                              chunk whose BLAKE3 is abcdef...), byte for byte
//!   images/NAME/VERSION.sig    the manifest's signature (uploaded before the manifest)
//!   images/NAME/VERSION.json   the manifest, the exact bytes signed (uploaded last: the commit)
//!   index.json                 the images, for remotes that cannot list (plain HTTP)
//! ```
//!
//! In format 1 chunk and image keys are the local store's own paths, so a pushed library is
//! also a valid store directory; in both, any web server can serve the bucket's directory.

use image_store::{ChunkId, ImageRef};
use serde::{Deserialize, Serialize};

/// Version of the remote layout a push to a new remote writes (`tek-library.json`).
pub const LIBRARY_VERSION: u32 = 2;

/// The layouts this tek reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Format 1: one object per chunk.
    ChunkObjects,
    /// Format 2: pack files with a per-image index, compressed manifests.
    Packs,
}

impl Layout {
    /// The format file of this layout.
    pub fn info(self) -> LibraryInfo {
        let (version, layout) = match self {
            Layout::ChunkObjects => (1, "chunk-objects"),
            Layout::Packs => (2, "packs"),
        };
        LibraryInfo {
            format: "tek-library".into(),
            version,
            layout: layout.into(),
        }
    }

    /// Where an image's manifest lives.
    pub fn manifest_key(self, image: &ImageRef) -> String {
        match self {
            Layout::ChunkObjects => manifest_key(image),
            Layout::Packs => format!("images/{}/{}.json.zst", image.name, image.version),
        }
    }

    /// The image a key under `images/` names, if it is a manifest's.
    pub fn image_of_key(self, key: &str) -> Option<ImageRef> {
        let rest = key.strip_prefix("images/")?;
        let (name, file) = rest.split_once('/')?;
        let suffix = match self {
            Layout::ChunkObjects => ".json",
            Layout::Packs => ".json.zst",
        };
        ImageRef::new(name, file.strip_suffix(suffix)?).ok()
    }
}

/// Key of the format file.
pub const INFO_KEY: &str = "tek-library.json";

/// Key of the image index.
pub const INDEX_KEY: &str = "index.json";

/// Version of `index.json`.
pub const INDEX_FORMAT: u32 = 1;

/// Largest manifest, signature, format file or index accepted from a remote (a 4 GiB image's
/// manifest is about 8 MiB).
pub const MAX_DOCUMENT: u64 = 256 << 20;

/// `tek-library.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryInfo {
    /// Always `tek-library`.
    pub format: String,
    /// [`LIBRARY_VERSION`].
    pub version: u32,
    /// How chunks are stored: `chunk-objects` (one object per chunk).
    pub layout: String,
}

impl LibraryInfo {
    /// What a push to a new remote writes.
    pub fn current() -> LibraryInfo {
        Layout::Packs.info()
    }

    /// Parses the format file, refusing what this version cannot read.
    pub fn parse(bytes: &[u8]) -> Result<Layout, String> {
        let info: LibraryInfo =
            serde_json::from_slice(bytes).map_err(|e| format!("not a tek library: {e}"))?;
        if info.format != "tek-library" {
            return Err(format!(
                "format {:?}, expected \"tek-library\"",
                info.format
            ));
        }
        for layout in [Layout::ChunkObjects, Layout::Packs] {
            if info == layout.info() {
                return Ok(layout);
            }
        }
        Err(format!(
            "library version {} layout {:?}; this tek reads version 1 layout \
             \"chunk-objects\" and version 2 layout \"packs\"",
            info.version, info.layout
        ))
    }
}

/// `index.json`: what `list` shows for a remote that cannot list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// The images, sorted.
    pub images: Vec<RemoteImage>,
}

/// One image on a remote (an entry of the index, or what a listing found).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteImage {
    /// `NAME@VERSION`.
    pub image: ImageRef,
    /// Size of its manifest object in bytes.
    pub manifest_bytes: u64,
}

/// Where a chunk's object lives.
pub fn chunk_key(id: ChunkId) -> String {
    let hex = id.to_hex();
    format!("chunks/{}/{hex}.zst", &hex[..2])
}

/// The chunk a key under `chunks/` names, if it is one.
pub fn chunk_of_key(key: &str) -> Option<ChunkId> {
    let rest = key.strip_prefix("chunks/")?;
    let (dir, file) = rest.split_once('/')?;
    let hex = file.strip_suffix(".zst")?;
    let id = ChunkId::from_hex(hex).ok()?;
    (dir == &hex[..2]).then_some(id)
}

/// Where an image's manifest lives in format 1.
pub fn manifest_key(image: &ImageRef) -> String {
    format!("images/{}/{}.json", image.name, image.version)
}

/// Where an image's signature lives.
pub fn signature_key(image: &ImageRef) -> String {
    format!("images/{}/{}.sig", image.name, image.version)
}

/// Where an image's pack index lives (format 2).
pub fn pack_index_key(image: &ImageRef) -> String {
    format!("images/{}/{}.packs.zst", image.name, image.version)
}

/// The image a key under `images/` names, if it is a format-1 manifest's.
pub fn image_of_key(key: &str) -> Option<ImageRef> {
    Layout::ChunkObjects.image_of_key(key)
}

/// zstd level of the documents format 2 compresses (manifest, pack index). Every bench
/// fetches an image's manifest whole, also when it has all but the new chunks (v2 after v1),
/// so its size counts against the new chunks': a 43k-chunk manifest (7.2 MB of JSON, most of
/// it 32-byte ids in hex) is 1.99 MB at level 9 (0.15 s), 1.68 MB at 17 (3.6 s on one core, at
/// push, while the chunks upload); 19 and `--long` gain nothing more.
const DOCUMENT_LEVEL: i32 = 17;

/// A document (manifest, pack index) as format 2 stores it.
pub fn compress_document(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, DOCUMENT_LEVEL).expect("zstd compression of a document in memory")
}

/// A compressed document's bytes, decompressed by at most `limit` bytes: a hostile remote's
/// small object that would inflate beyond it is refused without inflating further. A frame
/// that declares a larger size is refused before any inflation; the output grows by doubling
/// but never past `limit + 1` bytes of capacity (`read_to_end` would double to 2x the limit:
/// 512 MiB for a 256 MiB bomb), so memory stays about 1x the limit.
pub fn decompress_document(compressed: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if !compressed.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err("not zstd-compressed (no zstd frame magic)".into());
    }
    let too_big = || format!("decompresses to more than the {limit} bytes a document may hold");
    let declared = zstd::zstd_safe::get_frame_content_size(compressed)
        .ok()
        .flatten();
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let mut d = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| format!("not zstd-compressed: {e}"))?
        .single_frame();
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    // The declared size is a hint only (it may lie): still bounded by `cap`.
    let mut out = Vec::with_capacity(declared.map_or(1 << 20, |n| n as usize + 1).min(cap));
    let mut piece = vec![0u8; 128 << 10];
    loop {
        let n = d
            .read(&mut piece)
            .map_err(|e| format!("corrupt zstd data: {e}"))?;
        if n == 0 {
            break;
        }
        if out.len() + n > cap - 1 {
            return Err(too_big());
        }
        if out.capacity() - out.len() < n {
            let grown = (out.capacity() * 2).clamp(out.len() + n, cap);
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&piece[..n]);
    }
    Ok(out)
}

/// Longest zstd frame a chunk of `len` bytes can legitimately be (zstd's compress bound plus
/// room for a frame header); anything larger on a remote is refused unread.
pub fn chunk_object_limit(len: u64) -> u64 {
    len + len / 128 + 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strays_are_ignored() {
        let id = ChunkId::of(b"x");
        assert_eq!(chunk_of_key(&chunk_key(id)), Some(id));
        let hex = id.to_hex();
        for stray in [
            format!("chunks/00/{hex}.zst"),
            format!("chunks/{}/{hex}.zst.bad", &hex[..2]),
            format!("chunks/{}/{}.zst", &hex[..2], &hex[..10]),
            "chunks/x".to_string(),
        ] {
            assert_eq!(chunk_of_key(&stray), None, "{stray}");
        }
        let r: ImageRef = "win11@2024.10".parse().unwrap();
        assert_eq!(image_of_key(&manifest_key(&r)), Some(r.clone()));
        assert_eq!(image_of_key(&signature_key(&r)), None);
        assert_eq!(image_of_key("images/../x.json"), None);
    }

    #[test]
    fn format_file() {
        let cur = serde_json::to_vec(&LibraryInfo::current()).unwrap();
        assert_eq!(LibraryInfo::parse(&cur).unwrap(), Layout::Packs);
        let v1 = br#"{"format":"tek-library","version":1,"layout":"chunk-objects"}"#;
        assert_eq!(LibraryInfo::parse(v1).unwrap(), Layout::ChunkObjects);
        for bad in [
            &br#"{"format":"tek-library","version":3,"layout":"packs"}"#[..],
            br#"{"format":"tek-library","version":2,"layout":"chunk-objects"}"#,
        ] {
            let e = LibraryInfo::parse(bad).unwrap_err();
            assert!(e.contains("this tek reads version 1"), "{e}");
        }
        assert!(LibraryInfo::parse(b"<html>").is_err());
    }

    #[test]
    fn documents_round_trip_and_a_bomb_is_refused_by_its_limit() {
        let doc = br#"{"a": 1}"#.repeat(1000);
        let z = compress_document(&doc);
        assert!(z.len() < doc.len() / 10);
        assert_eq!(decompress_document(&z, doc.len() as u64).unwrap(), doc);
        let e = decompress_document(&z, doc.len() as u64 - 1).unwrap_err();
        assert!(e.contains("more than the"), "{e}");
        // 64 MiB of zeros in a few KiB: refused at the limit, not inflated further.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        let e = decompress_document(&bomb, 1 << 20).unwrap_err();
        assert!(e.contains("more than the 1048576 bytes"), "{e}");
        assert!(decompress_document(b"{\"plain\": true}", 100).is_err());
        let mut cut = z.clone();
        cut.truncate(z.len() / 2);
        assert!(decompress_document(&cut, 1 << 20).is_err());
    }

    #[test]
    fn inflation_holds_about_the_limit_in_memory_never_twice_it() {
        // A streamed frame does not declare its size: the output grows as it inflates.
        let doc = vec![b' '; 40 << 20];
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut e, &doc).unwrap();
        let z = e.finish().unwrap();
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&z),
            Ok(None)
        ));
        let limit = 48 << 20;
        let out = decompress_document(&z, limit).unwrap();
        assert_eq!(out.len(), doc.len());
        assert!(
            out.capacity() as u64 <= limit + 1,
            "{} bytes held",
            out.capacity()
        );
        // One that declares more than the limit is refused before inflating.
        let big = compress_document(&vec![b' '; (limit + 1) as usize]);
        let e = decompress_document(&big, limit).unwrap_err();
        assert!(e.contains("more than the"), "{e}");
    }

    #[test]
    fn format_2_keys() {
        let r: ImageRef = "win11@2024.10".parse().unwrap();
        let k = Layout::Packs.manifest_key(&r);
        assert_eq!(k, "images/win11/2024.10.json.zst");
        assert_eq!(Layout::Packs.image_of_key(&k), Some(r.clone()));
        assert_eq!(Layout::ChunkObjects.image_of_key(&k), None);
        assert_eq!(Layout::Packs.image_of_key(&pack_index_key(&r)), None);
        assert_eq!(Layout::Packs.image_of_key(&manifest_key(&r)), None);
    }
}
