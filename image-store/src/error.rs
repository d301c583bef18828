//! Typed errors of the store. Variants carry the chunk, offset, path, expected and actual values.

use std::path::PathBuf;

use crate::chunk::ChunkId;

/// Where a chunk is used: an image and the chunk's byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkUse {
    /// `name@version` of the image.
    pub image: String,
    /// Byte offset of the chunk in that image.
    pub offset: u64,
}

fn fmt_users(users: &[ChunkUse]) -> String {
    if users.is_empty() {
        return "no stored image".to_string();
    }
    users
        .iter()
        .map(|u| format!("{} at offset {}", u.image, u.offset))
        .collect::<Vec<_>>()
        .join(", ")
}

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
    /// `NAME@VERSION` is malformed or uses unsafe characters.
    #[error("bad image reference \"{}\": {reason}", input.escape_debug())]
    BadImageRef {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such image in the store.
    #[error("image {image} not found in the store")]
    NotFound {
        /// `name@version`.
        image: String,
    },
    /// The image already exists and `--replace` was not given.
    #[error("image {image} already exists (use --replace to overwrite it)")]
    AlreadyExists {
        /// `name@version`.
        image: String,
    },
    /// A chunk the manifest references has no file in the store.
    #[error("chunk {chunk} at image offset {offset} is missing from the store ({path})")]
    MissingChunk {
        /// The chunk.
        chunk: ChunkId,
        /// Offset in the image.
        offset: u64,
        /// Where it should be.
        path: PathBuf,
    },
    /// A chunk an on-demand pull was fetching never arrived: the fetch failed (the reason names
    /// the chunk that stopped it and its URL). Nothing of it is in the store.
    #[error("chunk {chunk} at image offset {offset} did not arrive: {reason}")]
    NotFetched {
        /// The chunk.
        chunk: ChunkId,
        /// Offset in the image.
        offset: u64,
        /// The fetch's error.
        reason: String,
    },
    /// A chunk found bad (missing, corrupt, wrong hash), with every image that uses it.
    #[error("chunk {chunk} is bad ({reason}){}; used by {}", quarantined.as_ref().map(|p| format!(", quarantined as {}", p.display())).unwrap_or_default(), fmt_users(used_by))]
    BadChunk {
        /// The chunk.
        chunk: ChunkId,
        /// What is wrong (the underlying error).
        reason: String,
        /// The `.bad` name it was moved to, if it existed.
        quarantined: Option<PathBuf>,
        /// Images using it and the offset in each.
        used_by: Vec<ChunkUse>,
    },
    /// A manifest (or store/key/signature file) that does not parse.
    #[error("parsing {path} at line {line}, column {column}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// The parser's message.
        reason: String,
    },
    /// A manifest or store layout of a version this build does not know.
    #[error("{path}: unsupported format version {found} (this tek reads {supported})")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// A manifest that parses but breaks an invariant (extents not contiguous, ...).
    #[error("manifest {path} is inconsistent: {reason}")]
    InconsistentManifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The import source is unusable (directory, empty, ...).
    #[error("importing {path}: {reason}")]
    BadSource {
        /// The source file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The source would decode to more than the limits allow (a decompression bomb, or an
    /// image larger than the maximum size); refused before or while decoding, nothing stored.
    #[error("importing {path} ({format}): {limit}")]
    ExpansionLimit {
        /// The source file.
        path: PathBuf,
        /// `raw`, `zstd`, `gzip` or `xz`.
        format: &'static str,
        /// Which limit, with the numbers.
        limit: crate::source::LimitExceeded,
    },
    /// The source's compressed stream is truncated or corrupt.
    #[error("decompressing {path} ({format}) after {offset} output bytes: {reason}")]
    Decompress {
        /// The source file.
        path: PathBuf,
        /// `zstd`, `gzip` or `xz`.
        format: &'static str,
        /// Uncompressed bytes produced before the error.
        offset: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The whole-image hashes recomputed by a deep verify differ from the manifest.
    #[error("image {image}: {algorithm} mismatch (manifest {expected}, content {actual})")]
    ImageHashMismatch {
        /// `name@version`.
        image: String,
        /// `sha256` or `blake3`.
        algorithm: &'static str,
        /// From the manifest.
        expected: String,
        /// Recomputed.
        actual: String,
    },
    /// A signing or public key file that is missing or malformed.
    #[error("key {path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A hint that does not fit the image (e.g. a partition name not in its GPT).
    #[error("hint {hint}: {reason}")]
    BadHint {
        /// Which hint.
        hint: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A change to a signed manifest without saying what becomes of its signature.
    #[error(
        "image {image} is signed: changing it needs a key to re-sign it with, or an explicit \
         unsign; nothing was changed"
    )]
    WouldUnsign {
        /// `name@version`.
        image: String,
    },
    /// A received manifest (from a remote library) without a valid signature by a trusted key.
    #[error(
        "image {image}: signature {status}; a manifest from a remote is accepted only when signed \
         by a trusted key"
    )]
    NotTrusted {
        /// `name@version`.
        image: String,
        /// What the signature check found.
        status: crate::signature::SignatureStatus,
    },
    /// A received image exists in the store with different manifest bytes.
    #[error(
        "image {image} is in the store with a different manifest; nothing was changed (remove \
         the local one first if the remote's should replace it)"
    )]
    DiffersLocally {
        /// `name@version`.
        image: String,
    },
    /// `tek image accept` named a finding the image's audit does not have (or it has none).
    #[error("image {image} has no audit finding {finding}{}", if *audited { "" } else { " (it was never audited)" })]
    NoSuchFinding {
        /// `name@version`.
        image: String,
        /// The finding id asked for.
        finding: String,
        /// Whether the image has an audit at all.
        audited: bool,
    },
}

impl StoreError {
    /// Shorthand for [`StoreError::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The chunk this error is about, if it is a per-chunk integrity error.
    pub fn bad_chunk(&self) -> Option<(ChunkId, u64)> {
        match self {
            StoreError::HashMismatch { chunk, offset, .. }
            | StoreError::CorruptChunk { chunk, offset, .. }
            | StoreError::MissingChunk { chunk, offset, .. } => Some((*chunk, *offset)),
            _ => None,
        }
    }
}
