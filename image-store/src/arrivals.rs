//! Chunks on their way into the store: an on-demand pull (the image library) names the chunks it
//! is fetching, and a reader of a [`Store::with_arrivals`] store that finds one of them missing
//! waits for it instead of failing, so a disk can be written while the rest of the image is still
//! arriving.
//!
//! Nothing here lets an unchecked byte through: a chunk is offered to a reader only once the
//! pull's [`Incoming::add_chunk`](crate::receive::Incoming::add_chunk) checked it (BLAKE3) and
//! wrote it ("staged": its name in the store follows in a batch after one `syncfs`,
//! [`Incoming::keep`](crate::receive::Incoming::keep); until then the reader gets the checked
//! bytes in memory, as the unnamed file has no path), and the reader checks the bytes itself as
//! for any stored chunk. A fetch
//! that fails wakes every waiter with the fetch's error ([`StoreError::NotFetched`]); a chunk
//! nobody is fetching is missing at once, as without arrivals.
//!
//! The hand-over: the pull decompresses and hashes every chunk for its check, and a writer of
//! the same image used to read the file back and do both again (bench/README.md, "Pull-and-write":
//! on two cores the second decode is what the write lost). While there is room (at most
//! [`HANDOVER_BYTES`] of image bytes held), the pull keeps the decompressed bytes of a chunk it
//! checked as a [`VerifiedChunk`] here, and the reader takes it instead of reading the file
//! ([`crate::read::read_run_into`]). A reader takes each copy once, so the memory is freed as
//! the write goes on and the pull refills it; a chunk without a copy is read from the store as
//! before.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};

use crate::chunk::{ChunkId, VerifiedChunk};
use crate::error::StoreError;

/// Most image bytes of checked copies held for readers (see the module docs): the pull runs
/// ahead of a disk-bound write, so this much covers its start, and then the write frees room at
/// its own pace (at 250 MB/s, 1.6 of v1's 1.7 GB of data were handed over, bench/README.md).
pub const HANDOVER_BYTES: usize = 256 << 20;

/// The chunks a fetch still has to deliver (see the module docs).
#[derive(Debug, Default)]
pub struct Arrivals {
    state: Mutex<State>,
    cv: Condvar,
    /// Most image bytes of checked copies held: [`HANDOVER_BYTES`] (smaller in tests).
    handover_limit: usize,
}

#[derive(Debug, Default)]
struct State {
    coming: HashSet<ChunkId>,
    /// Verified chunks written, not yet named (a batch is named after one `syncfs`): their
    /// compressed bytes, which a reader gets meanwhile (at most a batch of them).
    staged: HashMap<ChunkId, Arc<[u8]>>,
    /// Why the fetch ended before delivering `coming`.
    failed: Option<String>,
    /// Chunks the pull checked, decompressed, for the first reader that needs them.
    checked: HashMap<ChunkId, VerifiedChunk>,
    /// Their bytes (at most `Arrivals::handover_limit`).
    checked_bytes: usize,
}

impl Arrivals {
    /// A fetch of `coming`.
    pub fn new(coming: impl IntoIterator<Item = ChunkId>) -> Arc<Arrivals> {
        Arc::new(Arrivals {
            state: Mutex::new(State {
                coming: coming.into_iter().collect(),
                staged: HashMap::new(),
                failed: None,
                checked: HashMap::new(),
                checked_bytes: 0,
            }),
            cv: Condvar::new(),
            handover_limit: HANDOVER_BYTES,
        })
    }

    /// [`Arrivals::new`] holding at most `limit` bytes of checked copies.
    #[cfg(test)]
    pub(crate) fn with_handover_limit(limit: usize) -> Arc<Arrivals> {
        let mut a = Arc::into_inner(Arrivals::new([])).expect("new");
        a.handover_limit = limit;
        Arc::new(a)
    }

    /// `ids` are being fetched now (a pull's [`Incoming::wanted`](crate::receive::Incoming::wanted)
    /// of a store with these arrivals names them).
    pub fn expect(&self, ids: impl IntoIterator<Item = ChunkId>) {
        self.state().coming.extend(ids);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `id` passed its check and was written (not yet named): its waiters get `data`, its
    /// compressed bytes ([`Incoming::add_chunk`](crate::receive::Incoming::add_chunk)).
    pub(crate) fn staged(&self, id: ChunkId, data: Arc<[u8]>) {
        self.state().staged.insert(id, data);
        self.cv.notify_all();
    }

    /// Whether a checked copy of `len` bytes fits in the hand-over now (the pull asks before it
    /// decompresses into a buffer of its own instead of its scratch buffer).
    pub(crate) fn has_room(&self, len: u64) -> bool {
        let s = self.state();
        s.failed.is_none() && s.checked_bytes + len as usize <= self.handover_limit
    }

    /// Keeps `chunk`, which the pull just checked, for the first reader of it, if it still fits.
    pub(crate) fn hand_over(&self, chunk: VerifiedChunk) {
        let mut s = self.state();
        let len = chunk.data().len();
        if s.failed.is_some() || s.checked_bytes + len > self.handover_limit {
            return;
        }
        if let Some(old) = s.checked.insert(chunk.id(), chunk) {
            s.checked_bytes -= old.data().len();
        }
        s.checked_bytes += len;
    }

    /// The checked copy of `id`, if the pull left one: taken, so a second reader of the chunk
    /// reads the store.
    pub(crate) fn take_checked(&self, id: ChunkId) -> Option<VerifiedChunk> {
        let mut s = self.state();
        let c = s.checked.remove(&id)?;
        s.checked_bytes -= c.data().len();
        Some(c)
    }

    /// Image bytes of checked copies held now.
    pub fn handed_over_bytes(&self) -> usize {
        self.state().checked_bytes
    }

    /// `ids` are now in the store under their names: their waiters read them.
    pub fn arrived(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let mut s = self.state();
        for id in ids {
            s.coming.remove(&id);
            s.staged.remove(&id);
        }
        self.cv.notify_all();
    }

    /// The fetch ended: every chunk still coming never will, for `reason` (the fetch's error,
    /// naming the chunk and its URL). Waiters get [`StoreError::NotFetched`]. Without chunks
    /// still coming (a fetch that delivered everything) this changes nothing.
    pub fn close(&self, reason: &str) {
        let mut s = self.state();
        if !s.coming.is_empty() && s.failed.is_none() {
            s.failed = Some(reason.to_string());
        }
        // The pull's temporary directory goes with it: what it kept was named (arrived).
        s.staged.clear();
        // A failed fetch fails its writers at the first chunk it lacks: free the copies. After
        // a fetch that delivered everything they stay for the writer (the pull is ahead of it).
        if s.failed.is_some() {
            s.checked.clear();
            s.checked_bytes = 0;
        }
        self.cv.notify_all();
    }

    /// Whether `id` is still on its way (not yet delivered, fetch not failed).
    pub fn is_coming(&self, id: ChunkId) -> bool {
        let s = self.state();
        s.failed.is_none() && s.coming.contains(&id)
    }

    /// Whether this fetch was to deliver `id` and has not (coming, or lost with the fetch).
    pub(crate) fn expected(&self, id: ChunkId) -> bool {
        self.state().coming.contains(&id)
    }

    /// Why the fetch failed, once it did.
    pub fn failure(&self) -> Option<String> {
        self.state().failed.clone()
    }

    /// Chunks still on their way.
    pub fn pending(&self) -> usize {
        self.state().coming.len()
    }

    /// Blocks until `id` arrived (`Ok(None)`: read it under its name), was staged
    /// (`Ok(Some(bytes))`: its compressed bytes) or the fetch failed (`Err(reason)`); returns
    /// at once for a chunk nobody is fetching.
    pub(crate) fn wait(&self, id: ChunkId) -> Result<Option<Arc<[u8]>>, String> {
        let mut s = self.state();
        loop {
            if !s.coming.contains(&id) {
                return Ok(None);
            }
            if let Some(p) = s.staged.get(&id) {
                return Ok(Some(p.clone()));
            }
            if let Some(r) = s.failed.clone() {
                return Err(r);
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The reader's error for a chunk whose fetch failed.
pub(crate) fn not_fetched(chunk: ChunkId, offset: u64, reason: String) -> StoreError {
    StoreError::NotFetched {
        chunk,
        offset,
        reason,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Store;
    use std::time::Duration;

    /// A manifest of `extents` (image "a@1").
    pub(crate) fn manifest(extents: Vec<crate::Extent>) -> crate::Manifest {
        crate::Manifest {
            format: crate::MANIFEST_FORMAT,
            name: "a".into(),
            version: "1".into(),
            size: extents.iter().map(|e| e.len()).sum(),
            sha256: String::new(),
            blake3: String::new(),
            created: String::new(),
            chunking: crate::manifest::Chunking {
                algorithm: "fastcdc-2020".into(),
                min: 1,
                avg: 2,
                max: 4,
            },
            extents,
            gpt: None,
            hints: Default::default(),
            audit: None,
            scrubbed: None,
        }
    }

    fn chunk(store: &Store, data: &[u8]) -> ChunkId {
        let id = ChunkId::of(data);
        let p = store.chunk_path(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, zstd::bulk::compress(data, 1).unwrap()).unwrap();
        id
    }

    #[test]
    fn a_reader_waits_for_a_coming_chunk_and_reads_it_once_it_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"arriving later".to_vec();
        let id = ChunkId::of(&data);
        let a = Arrivals::new([id]);
        let reader = store.with_arrivals(a.clone());
        let m = manifest(vec![crate::Extent::Chunk {
            offset: 0,
            len: data.len() as u64,
            id,
        }]);
        // Coming: not absent for a reader with arrivals, absent for one without.
        assert!(reader.absent_chunks(&m).unwrap().is_empty());
        assert_eq!(store.absent_chunks(&m).unwrap().len(), 1);
        let t = std::thread::spawn(move || reader.read_compressed(id, 0, data.len() as u64));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished(), "the reader must wait for the chunk");
        chunk(&store, b"arriving later");
        a.arrived([id]);
        let c = t.join().unwrap().unwrap();
        assert_eq!(c.decompress_verify().unwrap().data(), b"arriving later");
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn a_failed_fetch_wakes_the_waiter_with_its_reason_and_nothing_else_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (id, other) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let a = Arrivals::new([id]);
        let reader = store.with_arrivals(a.clone());
        // A chunk nobody fetches is missing at once.
        let e = reader.read_compressed(other, 7, 1).unwrap_err();
        assert!(matches!(e, StoreError::MissingChunk { .. }), "{e}");
        let r2 = reader.clone();
        let t = std::thread::spawn(move || r2.read_compressed(id, 42, 1));
        std::thread::sleep(Duration::from_millis(50));
        a.close("chunk X from http://h/x refused");
        let e = t.join().unwrap().unwrap_err();
        assert!(matches!(e, StoreError::NotFetched { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("http://h/x") && text.contains("42"), "{text}");
        assert!(!a.is_coming(id));
        // After the failure the chunk counts as absent again.
        let m = manifest(vec![crate::Extent::Chunk {
            offset: 0,
            len: 1,
            id,
        }]);
        assert_eq!(reader.absent_chunks(&m).unwrap().len(), 1);
    }
}
