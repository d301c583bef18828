//! The pipeline's data types, in a leaf module that depends on no other stage: a [`Piece`] (what
//! the decode stage delivers and every writer consumes), a [`Span`] (verified image bytes) and
//! a [`WrittenExtent`] (what read-back must find). `decode` builds them, `writer` and `verify`
//! consume them; none of those is imported here, so the dependency runs one way.
//!
//! Verified spans: runs of consecutive image bytes (several chunks, small holes as zeros) that
//! passed their hash checks, held in a page-aligned buffer laid out so that image offset `o`
//! sits at an address congruent to `o` modulo [`ALIGN`]. Writers can then hand the aligned
//! middle of a span straight to O_DIRECT without copying it; only the few bytes at each end go
//! through a one-block staging buffer.
//!
//! Like `image_store::VerifiedChunk`, a [`Span`] can only be built from bytes that were checked:
//! [`Span::from_chunks`] decompresses and verifies every chunk into place (an error drops the
//! whole buffer, so nothing of a bad span can reach a writer), and `Span::from_trusted`
//! (crate-private: only the decode stage calls it, for a one-off image file that has no
//! expected hashes) hashes the bytes so read-back proves what reached the target. The fields
//! are private, so no other code, in this crate or outside, can make a `Span` of unchecked
//! bytes.
//!
//! Buffers come from a small process-wide pool: allocating and faulting in a fresh 4 MiB buffer
//! per span costs more than decoding it.

use std::sync::Mutex;

use image_store::read::{self, VerifiedRun};
use image_store::{ChunkId, Extent, Store, StoreError};

use crate::buffer::{ALIGN, AlignedBuf};

/// Image bytes per span: one run of the store's reader (a span may exceed it by one chunk when a
/// single chunk is larger).
pub const SPAN_BYTES: usize = read::RUN_BYTES as usize;
/// Capacity of pooled buffers: a span plus its lead-in for alignment.
const POOLED: usize = SPAN_BYTES + ALIGN;
/// Free buffers the pool keeps.
const POOL_KEEP: usize = 16;

static POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// An aligned buffer of at least `cap` bytes, from the pool when it fits. Contents are
/// arbitrary (recycled): callers overwrite every byte they use.
pub fn take_buf(cap: usize) -> AlignedBuf {
    if cap <= POOLED {
        if let Some(b) = POOL.lock().expect("span pool").pop() {
            return b;
        }
        return AlignedBuf::new(POOLED);
    }
    AlignedBuf::new(cap)
}

/// Gives a buffer back to the pool (dropped when the pool is full or it is not pool-sized).
pub fn give_buf(b: AlignedBuf) {
    if b.capacity() == POOLED.div_ceil(ALIGN) * ALIGN {
        let mut p = POOL.lock().expect("span pool");
        if p.len() < POOL_KEEP {
            p.push(b);
        }
    }
}

/// Frees the pooled buffers (at the end of a job, so an idle agent holds no memory).
pub fn trim_pool() {
    POOL.lock().expect("span pool").clear();
}

/// One piece of the image, in image order: verified bytes or a run of zeros.
#[derive(Debug)]
pub enum Piece {
    /// Verified bytes.
    Data(Span),
    /// `len` zero bytes at `offset`.
    Hole {
        /// Offset in the image.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Piece {
    /// Image offset and length.
    pub fn range(&self) -> (u64, u64) {
        match self {
            Piece::Data(s) => (s.offset(), s.len()),
            Piece::Hole { offset, len } => (*offset, *len),
        }
    }
}

/// One extent as written, for read-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenExtent {
    /// Image offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Expected BLAKE3 of the bytes; `None` for zeros.
    pub id: Option<ChunkId>,
    /// Zeros whose aligned middle the device zeroed without data transfer (see
    /// [`crate::target::ZeroMethod::offloaded`]): read-back may sample them.
    pub offloaded: bool,
}

/// Verified image bytes `[offset, offset+len)`.
pub struct Span {
    offset: u64,
    len: usize,
    lead: usize,
    buf: Option<AlignedBuf>,
    parts: Vec<WrittenExtent>,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Span({}+{}, {} parts)",
            self.offset,
            self.len,
            self.parts.len()
        )
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give_buf(b);
        }
    }
}

/// A buffer laid out for image offset `offset` and `len` bytes; returns it and the lead-in.
pub fn buf_for(offset: u64, len: usize) -> (AlignedBuf, usize) {
    let lead = (offset % ALIGN as u64) as usize;
    (take_buf(lead + len), lead)
}

impl Span {
    /// Reads, decompresses and verifies consecutive `extents` (chunks, and holes written as
    /// zeros) of `store` into one span, through the store's one reader
    /// ([`image_store::read::read_run_into`]); only its [`VerifiedRun`] proof makes a span.
    pub fn from_chunks(store: &Store, extents: &[Extent]) -> Result<Span, StoreError> {
        let range = read::run_range(extents);
        let len = (range.end - range.start) as usize;
        let (mut buf, lead) = buf_for(range.start, len);
        let run =
            match read::read_run_into(store, extents, &mut buf.as_mut_slice()[lead..lead + len]) {
                Ok(run) => run,
                Err(e) => {
                    give_buf(buf); // holds unverified bytes: back to the pool, never to a writer
                    return Err(e);
                }
            };
        Ok(Span {
            offset: range.start,
            len,
            lead,
            buf: Some(buf),
            parts: parts_of(&run),
        })
    }

    /// Bytes from a source without expected hashes, already laid out by [`buf_for`]: hashed
    /// here so read-back proves what reached the target.
    pub(crate) fn from_trusted(offset: u64, buf: AlignedBuf, lead: usize, len: usize) -> Span {
        let id = ChunkId::of(&buf.as_slice()[lead..lead + len]);
        Span {
            offset,
            len,
            lead,
            buf: Some(buf),
            parts: vec![WrittenExtent {
                offset,
                len: len as u64,
                id: Some(id),
                offloaded: false,
            }],
        }
    }

    /// Image offset of the first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }
    /// True for an empty span.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The bytes; `data()[i]` is image byte `offset + i` and its address is congruent to that
    /// offset modulo [`ALIGN`].
    pub fn data(&self) -> &[u8] {
        let b = self.buf.as_ref().expect("span buffer");
        &b.as_slice()[self.lead..self.lead + self.len]
    }
    /// What read-back must find: one extent per chunk (or zero run) with its hash.
    pub fn parts(&self) -> &[WrittenExtent] {
        &self.parts
    }
}

/// What read-back must find of a verified run: one extent per chunk (or zero run) with its hash.
fn parts_of(run: &VerifiedRun) -> Vec<WrittenExtent> {
    run.extents()
        .iter()
        .zip(run.ids())
        .map(|(e, id)| WrittenExtent {
            offset: e.offset(),
            len: e.len(),
            id,
            offloaded: false,
        })
        .collect()
}

/// A data piece of trusted bytes (tests of the later stages).
#[cfg(test)]
pub(crate) fn trusted_piece(offset: u64, data: &[u8]) -> Piece {
    let (mut buf, lead) = buf_for(offset, data.len());
    buf.as_mut_slice()[lead..lead + data.len()].copy_from_slice(data);
    Piece::Data(Span::from_trusted(offset, buf, lead, data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_span_is_congruent_and_hashed() {
        let off = 4096 * 3 + 100;
        let (mut buf, lead) = buf_for(off, 5000);
        buf.as_mut_slice()[lead..lead + 5000].fill(7);
        let s = Span::from_trusted(off, buf, lead, 5000);
        assert_eq!(
            s.data().as_ptr() as usize % ALIGN,
            (off % ALIGN as u64) as usize
        );
        assert_eq!(s.parts()[0].id, Some(ChunkId::of(&[7u8; 5000])));
        assert_eq!(s.len(), 5000);
    }
}
