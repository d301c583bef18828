//! Typed errors of the image library. Every variant names the remote (as [`RemoteUrl`] prints
//! it, never with credentials) and, for chunk failures, the chunk id and its object's URL.

use image_store::{ChunkId, ImageRef, StoreError};

use crate::remote::RemoteUrl;

/// Errors from push, pull and list.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The remote URL is not one tek understands.
    #[error("remote {url:?}: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Setting up the client for a remote failed (bad endpoint, bad region, ...).
    #[error("setting up the client for {url}: {reason}")]
    Client {
        /// The remote.
        url: RemoteUrl,
        /// The client's message.
        reason: String,
    },
    /// A push to a remote that can only be read (plain HTTP).
    #[error("{url} is read-only (an HTTP remote); push to the s3:// library the web server serves")]
    ReadOnly {
        /// The remote.
        url: RemoteUrl,
    },
    /// A request to the remote failed (after the retries), timed out, or was refused.
    #[error("{action} {object}: {reason}")]
    Request {
        /// What was being done (`fetching`, `uploading`, `listing`).
        action: &'static str,
        /// The object's URL.
        object: String,
        /// The client's message (never a credential: the client does not put them in errors).
        reason: String,
        /// The HTTP status the server answered the last attempt with; `None` when it did not
        /// answer (refused connection, timeout) or the error is tek's own finding.
        status: Option<u16>,
    },
    /// The remote's credentials were refused (HTTP 401/403).
    #[error(
        "{action} {object}: the remote refused the credentials (HTTP {status}); check \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    Denied {
        /// What was being done.
        action: &'static str,
        /// The object's URL.
        object: String,
        /// The HTTP status.
        status: u16,
    },
    /// The remote has no such image.
    #[error("image {image} is not in the library at {url}")]
    NoSuchImage {
        /// The image asked for.
        image: ImageRef,
        /// The remote.
        url: RemoteUrl,
    },
    /// The bench trusts no key, so no manifest can be accepted.
    #[error(
        "no trusted keys in {} (missing, or no .pub file in it): copy the maintainers' public \
         key there (tek image keygen writes it)",
        dir.display()
    )]
    NoTrustedKeys {
        /// The trusted-keys directory.
        dir: std::path::PathBuf,
    },
    /// A manifest without its signature: a push cut off between the two, or still running.
    #[error(
        "image {image} in the library at {url} has a manifest but no signature yet: a push of \
         it was cut off or is still running (pushed again, it is finished)"
    )]
    Unfinished {
        /// The image asked for.
        image: ImageRef,
        /// The remote.
        url: RemoteUrl,
    },
    /// An object the manifest needs is not on the remote.
    #[error("chunk {chunk} (image offset {offset}) is missing on the remote: {object} not found")]
    MissingChunk {
        /// The chunk.
        chunk: ChunkId,
        /// Its first offset in the image.
        offset: u64,
        /// The object's URL.
        object: String,
    },
    /// A fetched chunk failed its check (decompression, length or BLAKE3); nothing of it was
    /// stored.
    #[error("chunk {chunk} from {object} refused, nothing of it stored: {reason}")]
    CorruptChunk {
        /// The chunk.
        chunk: ChunkId,
        /// The object's URL.
        object: String,
        /// What the check found.
        reason: String,
    },
    /// A remote object is larger than it can legitimately be (hostile or broken remote).
    #[error("{object} is {size} bytes, more than the {limit} bytes it can legitimately hold")]
    Oversized {
        /// The object's URL.
        object: String,
        /// Its size as the remote reported it.
        size: u64,
        /// The most it may hold.
        limit: u64,
    },
    /// The remote's manifest was refused (signature, parse, wrong name), nothing stored.
    #[error("manifest {object} refused, nothing stored: {source}")]
    BadManifest {
        /// The manifest's URL.
        object: String,
        /// Why.
        source: Box<StoreError>,
    },
    /// The remote's format file or index is of a version or shape this tek does not read.
    #[error("{object}: {reason}")]
    BadLibrary {
        /// The object's URL.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// The local image cannot be pushed (unsigned, untrusted, corrupt chunk, ...).
    #[error("pushing {image}: {reason}")]
    NotPushable {
        /// The image.
        image: ImageRef,
        /// Why.
        reason: String,
    },
    /// The remote already has this image with other bytes; published versions are not replaced.
    #[error(
        "{url} already has {image} with a different manifest; a published version is never \
         replaced (push a new version)"
    )]
    Conflict {
        /// The image.
        image: ImageRef,
        /// The remote.
        url: RemoteUrl,
    },
    /// The pull was stopped on request (a signal) before every chunk arrived.
    #[error("stopped before every chunk arrived ({signal})")]
    Interrupted {
        /// What stopped it (`SIGINT`, `SIGTERM`).
        signal: String,
    },
    /// An error of the local store.
    #[error(transparent)]
    Store(Box<StoreError>),
}

impl From<StoreError> for LibraryError {
    fn from(e: StoreError) -> Self {
        LibraryError::Store(Box::new(e))
    }
}
