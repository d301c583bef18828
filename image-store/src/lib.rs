//! The image store: a content-addressed, deduplicated, zstd-compressed chunk store of unpopulated
//! disk images, with signed, versioned manifests.
//!
//! Data flow: `import` reads a raw (or zstd/gzip/xz-compressed) image as a stream, cuts it into
//! content-defined chunks, records all-zero runs as holes, stores each new chunk once under its
//! BLAKE3 id, and writes the manifest last. Readers (`export`, `verify`, the imager) walk a
//! manifest's extents and receive chunks only as [`chunk::VerifiedChunk`]s.
#![forbid(unsafe_code)]

pub mod chunk;
pub mod error;
pub mod manifest;

pub use chunk::{ChunkId, CompressedChunk, Piece, VerifiedChunk};
pub use error::StoreError;
pub use manifest::{Extent, Hints, MANIFEST_FORMAT, Manifest};
