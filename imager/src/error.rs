//! Typed errors of the imager. Variants carry the path, offset, and what was being done.

use std::path::PathBuf;

use image_store::StoreError;

/// Errors while writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImagerError {
    /// Reading the image source failed.
    #[error("{action} {path} at image offset {offset}: {source}")]
    Source {
        /// What was being done ("reading image", "decompressing image", ...).
        action: &'static str,
        /// The source file.
        path: PathBuf,
        /// Image offset.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// The store refused a chunk (missing, unreadable, corrupt, hash mismatch); nothing of it was
    /// written.
    #[error("reading image from the store: {0}")]
    Store(#[from] StoreError),
    /// An I/O error on a target.
    #[error("{action} {path} at offset {offset}: {source}")]
    Target {
        /// What was being done ("writing", "zeroing", "reading back", ...).
        action: &'static str,
        /// The target.
        path: PathBuf,
        /// Byte offset on the target.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// Read-back found bytes that differ from the image.
    #[error("read-back of {path} found {} mismatching extent(s), first at offset {}", offsets.len(), offsets.first().copied().unwrap_or(0))]
    Mismatch {
        /// The target.
        path: PathBuf,
        /// Image offsets of the extents that differ.
        offsets: Vec<u64>,
    },
    /// The GPT could not be fixed up.
    #[error("fixing up the GPT on {path}: {reason}")]
    Gpt {
        /// The target.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Growing or checking the grown partition's filesystem failed.
    #[error("growing the filesystem on {path}: {reason}")]
    Filesystem {
        /// The target.
        path: PathBuf,
        /// What went wrong (the tool and its output).
        reason: String,
    },
    /// The target was refused before anything was written.
    #[error("{path} refused: {refusal}")]
    Refused {
        /// The target.
        path: PathBuf,
        /// Why.
        refusal: crate::eligibility::Refusal,
    },
    /// The job was cancelled.
    #[error("cancelled at image offset {offset}")]
    Cancelled {
        /// How far the writer had come.
        offset: u64,
    },
    /// The image stream stopped with an error (shared by every target of the job).
    #[error("reading the image: {reason}")]
    Stream {
        /// The source's error, one line.
        reason: String,
        /// Image offset, when known.
        offset: Option<u64>,
    },
    /// The store lacks chunks the image needs (deleted, or quarantined as corrupt). Found by a
    /// stat per chunk before any target is opened: nothing was written.
    #[error(
        "image {image} cannot be written: {}; nothing was written (re-importing an image that holds them repairs the store)",
        image_store::describe_absent(absent)
    )]
    MissingChunks {
        /// `name@version`.
        image: String,
        /// The absent chunks, in image order.
        absent: Vec<image_store::AbsentChunk>,
    },
    /// The image source is unusable (e.g. not a disk image).
    #[error("image {path}: {reason}")]
    BadImage {
        /// The source file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl ImagerError {
    /// The image or target offset the error happened at, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            ImagerError::Source { offset, .. }
            | ImagerError::Target { offset, .. }
            | ImagerError::Cancelled { offset } => Some(*offset),
            ImagerError::Mismatch { offsets, .. } => offsets.first().copied(),
            ImagerError::Store(e) => e.bad_chunk().map(|(_, o)| o),
            ImagerError::Stream { offset, .. } => *offset,
            _ => None,
        }
    }
}
