//! Typed errors of the store. Variants carry the chunk, offset, path, expected and actual values.

use std::path::PathBuf;

use crate::chunk::ChunkId;

/// Errors from the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A string that should be a 64-character hex chunk id is not.
    #[error("malformed chunk id {0:?}")]
    BadChunkId(String),
    /// A chunk decompressed to bytes whose hash is not its id.
    #[error(
        "chunk {chunk} at image offset {offset}: hash mismatch (expected {expected}, got {actual})"
    )]
    HashMismatch {
        /// The chunk as named in the manifest.
        chunk: ChunkId,
        /// Offset in the image.
        offset: u64,
        /// Expected hash.
        expected: ChunkId,
        /// Hash of the bytes found.
        actual: ChunkId,
    },
    /// A chunk file could not be decompressed or had the wrong length.
    #[error("chunk {chunk} at image offset {offset} is corrupt: {reason}")]
    CorruptChunk {
        /// The chunk.
        chunk: ChunkId,
        /// Offset in the image.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// An I/O error on a store path.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading chunk", "writing manifest", ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}
