//! The remote library's layout, format 1 (documented in ARCHITECTURE.md, "Remote library"):
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
//! Chunk and image keys are the local store's own paths, so a pushed library is also a valid
//! directory to serve with any web server, and an object's name is the hash of its content.

use image_store::{ChunkId, ImageRef};
use serde::{Deserialize, Serialize};

/// Version of the remote layout (`tek-library.json`).
pub const LIBRARY_VERSION: u32 = 1;

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
    /// What this version writes.
    pub fn current() -> LibraryInfo {
        LibraryInfo {
            format: "tek-library".into(),
            version: LIBRARY_VERSION,
            layout: "chunk-objects".into(),
        }
    }

    /// Parses the format file, refusing what this version cannot read.
    pub fn parse(bytes: &[u8]) -> Result<LibraryInfo, String> {
        let info: LibraryInfo =
            serde_json::from_slice(bytes).map_err(|e| format!("not a tek library: {e}"))?;
        if info.format != "tek-library" {
            return Err(format!(
                "format {:?}, expected \"tek-library\"",
                info.format
            ));
        }
        if info != LibraryInfo::current() {
            return Err(format!(
                "library version {} layout {:?}; this tek reads version {LIBRARY_VERSION} \
                 layout \"chunk-objects\"",
                info.version, info.layout
            ));
        }
        Ok(info)
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

/// Where an image's manifest lives.
pub fn manifest_key(image: &ImageRef) -> String {
    format!("images/{}/{}.json", image.name, image.version)
}

/// Where an image's signature lives.
pub fn signature_key(image: &ImageRef) -> String {
    format!("images/{}/{}.sig", image.name, image.version)
}

/// The image a key under `images/` names, if it is a manifest's.
pub fn image_of_key(key: &str) -> Option<ImageRef> {
    let rest = key.strip_prefix("images/")?;
    let (name, file) = rest.split_once('/')?;
    ImageRef::new(name, file.strip_suffix(".json")?).ok()
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
        assert_eq!(LibraryInfo::parse(&cur).unwrap(), LibraryInfo::current());
        let newer = br#"{"format":"tek-library","version":2,"layout":"packs"}"#;
        assert!(LibraryInfo::parse(newer).unwrap_err().contains("version 2"));
        assert!(LibraryInfo::parse(b"<html>").is_err());
    }
}
