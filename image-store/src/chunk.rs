//! Chunks as they travel from the store to a writer.
//!
//! The types encode how far a chunk has been checked, so that only a chunk whose bytes hash to its
//! id can reach a device writer:
//! `CompressedChunk` (bytes as read from the store) -> `VerifiedChunk` (decompressed, hash-checked).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// BLAKE3 hash of a chunk's uncompressed bytes; the chunk's name in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`: its BLAKE3 hash.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, StoreError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| StoreError::BadChunkId(s.to_string()))?;
        Ok(ChunkId(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// A chunk's compressed bytes as read from the store, not yet checked.
#[derive(Debug)]
pub struct CompressedChunk {
    /// The id the manifest expects.
    pub id: ChunkId,
    /// Offset of the chunk in the image (for error messages and for the writer).
    pub offset: u64,
    /// Uncompressed length the manifest expects.
    pub len: u64,
    /// zstd-compressed bytes.
    pub data: Vec<u8>,
}

impl CompressedChunk {
    /// Decompresses and checks length and hash. This is the only way (besides
    /// [`VerifiedChunk::from_trusted_source`]) to obtain a [`VerifiedChunk`]. Uses one zstd
    /// context per thread: creating a context per chunk cost about 6% of a whole image write.
    pub fn decompress_verify(self) -> Result<VerifiedChunk, StoreError> {
        self.verified_copy()
    }

    /// [`Self::decompress_verify`] keeping the compressed bytes (a pull writes them to the
    /// store and hands the checked copy to a reader waiting for it, `arrivals.rs`).
    pub fn verified_copy(&self) -> Result<VerifiedChunk, StoreError> {
        let mut data = vec![0u8; self.len as usize];
        self.decompress_verify_in_place(&mut data)?;
        Ok(VerifiedChunk {
            id: self.id,
            offset: self.offset,
            data,
        })
    }

    /// Decompresses into `out` (exactly [`Self::len`] bytes) with this thread's reused zstd
    /// context, and checks length and hash; on error `out` holds unverified bytes (see
    /// [`Self::decompress_verify_into`]).
    pub fn decompress_verify_in_place(&self, out: &mut [u8]) -> Result<(), StoreError> {
        DCTX.with(|d| match &mut *d.borrow_mut() {
            Some(dctx) => self.decompress_verify_into(dctx, out),
            None => Err(self.corrupt("zstd: cannot create a decompression context".into())),
        })
    }

    /// Decompresses into `out`, which must be exactly [`Self::len`] bytes, with the caller's
    /// (reused) context, and checks length and hash. On error `out` holds unverified bytes and
    /// must not be used: callers (the imager) keep such buffers away from any writer.
    pub fn decompress_verify_into(
        &self,
        dctx: &mut zstd::bulk::Decompressor<'_>,
        out: &mut [u8],
    ) -> Result<(), StoreError> {
        if out.len() as u64 != self.len {
            return Err(self.corrupt(format!(
                "output buffer of {} bytes for a chunk of {}",
                out.len(),
                self.len
            )));
        }
        // A frame larger than `len` fails here ("destination buffer is too small").
        let n = dctx
            .decompress_to_buffer(&self.data[..], out)
            .map_err(|e| self.corrupt(format!("zstd: {e}")))?;
        if n as u64 != self.len {
            return Err(self.corrupt(format!("length {n} but manifest says {}", self.len)));
        }
        let actual = ChunkId::of(out);
        if actual != self.id {
            return Err(StoreError::HashMismatch {
                chunk: self.id,
                offset: self.offset,
                expected: self.id,
                actual,
            });
        }
        Ok(())
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::CorruptChunk {
            chunk: self.id,
            offset: self.offset,
            reason,
        }
    }
}

thread_local! {
    /// One zstd decompression context per thread, reused for every chunk.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Uncompressed chunk bytes whose BLAKE3 hash equals `id`. Only these may be written to a target.
#[derive(Debug, Clone)]
pub struct VerifiedChunk {
    id: ChunkId,
    offset: u64,
    data: Vec<u8>,
}

impl VerifiedChunk {
    /// For sources that carry no expected hashes (a one-off raw image file): the id is computed
    /// from the bytes, so the chunk is trivially "verified" against itself and read-back
    /// verification still proves what reached the target.
    pub fn from_trusted_source(offset: u64, data: Vec<u8>) -> Self {
        VerifiedChunk {
            id: ChunkId::of(&data),
            offset,
            data,
        }
    }

    /// The chunk's id (BLAKE3 of [`Self::data`]).
    pub fn id(&self) -> ChunkId {
        self.id
    }
    /// Offset of this chunk in the image.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }
    /// True for an empty chunk (never produced by the store).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The verified bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// Gives back the bytes.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// One piece of an image, in image order: data, or a run of zeros that is not stored.
#[derive(Debug)]
pub enum Piece {
    /// Verified bytes at `chunk.offset()`.
    Data(VerifiedChunk),
    /// `len` zero bytes at `offset`.
    Hole {
        /// Offset in the image.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}
