//! The image store: a content-addressed, deduplicated, zstd-compressed chunk store of unpopulated
//! disk images, with signed, versioned manifests.
//!
//! Data flow: `import` reads a raw (or zstd/gzip/xz-compressed) image as a stream, cuts it into
//! content-defined chunks, records all-zero runs as holes, stores each new chunk once under its
//! BLAKE3 id, and writes the manifest last. Readers (`export`, `verify`, the imager) walk a
//! manifest's extents and receive chunks only as [`chunk::VerifiedChunk`]s.
#![forbid(unsafe_code)]

pub mod arrivals;
pub mod audit;
pub mod chunk;
mod chunk_file;
mod edit;
pub mod error;
pub mod export;
mod export_io;
mod fsutil;
pub mod gc;
pub mod gpt_summary;
mod hints;
pub mod image_ref;
pub mod import;
mod lock;
pub mod manifest;
pub mod probe;
pub mod read;
pub mod receive;
pub mod scrub;
pub mod segment;
pub mod signature;
pub mod source;
pub mod store;

pub use arrivals::Arrivals;
pub use chunk::{ChunkId, CompressedChunk, Piece, VerifiedChunk};
pub use edit::{Resign, SetHints};
pub use error::{ChunkUse, StoreError};
pub use export::{AlreadyChecked, CheckedChunks, SetLen, VerifyReport};
pub use gc::{ChunkSet, GcOptions, GcReport, StoreStats};
pub use image_ref::ImageRef;
pub use import::{ImportOptions, ImportProgress, ImportReport};
pub use manifest::{Extent, Hints, MANIFEST_FORMAT, Manifest};
pub use read::{Pieces, Reader, VerifiedRun};
pub use receive::{Added, Incoming, WantedChunk};
pub use signature::{SignatureStatus, SigningKey, generate_keypair};
pub use source::{DecodeLimits, LimitExceeded};
pub use store::{AbsentChunk, LoadedImage, STORE_VERSION, Store, describe_absent};
