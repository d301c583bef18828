//! Batches of stream segments sealed and opened in parallel, and the two pipelines built on them:
//! ingest's [`SealPipe`] (the caller reads and hashes plaintext while a thread encrypts, MACs and
//! writes) and restore's [`OpenPipe`] (a thread reads and decrypts while the caller writes files).
//!
//! The format is exactly `stream`'s (the STREAM construction, `aead::stream::StreamBE32` nonces:
//! 19-byte prefix, 32-bit big-endian segment counter, last-segment flag byte). A batch holds up to
//! [`BATCH_SEGMENTS`] segments laid out as they are on disk, `SEGMENT` plaintext bytes then the
//! 16-byte tag, so sealing and opening happen in place and a batch is written or read with one
//! system call. Sealing runs one segment per rayon task (ingest's other side, reading and hashing,
//! is the lighter one); opening is sequential (restore has enough other work for the second core). Segments are independent given their counter, which is
//! what makes the parallelism safe; the counter and the last flag are bound into each nonce, so
//! reordering, truncation and splicing still fail authentication.

use std::fs::File;
use std::io::{self, Read, Write};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use crossbeam_channel::{Receiver, Sender, bounded};
use rayon::prelude::*;

use crate::stream::{AuthFailure, HEADER, Key, SEGMENT, StreamKind, TAG};

/// Segments per batch (1 MiB of plaintext).
pub const BATCH_SEGMENTS: usize = 16;
/// On-disk size of a full segment.
pub const SLOT: usize = SEGMENT + TAG;
/// Batches in flight between the two sides of a pipeline (bounds memory at a few MiB).
const IN_FLIGHT: usize = 4;
/// Start writeback of the staging file every this many bytes, so the final fsync has little left.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Up to [`BATCH_SEGMENTS`] segments in their on-disk layout.
pub struct Batch {
    buf: Vec<u8>,
    /// Plaintext bytes held (when sealing) or available (when opened).
    len: usize,
    /// Read position in the plaintext (when consuming an opened batch).
    pos: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: vec![0u8; BATCH_SEGMENTS * SLOT],
            len: 0,
            pos: 0,
        }
    }

    /// Number of segments covering `len` plaintext bytes (at least one: an empty last segment).
    fn segments(len: usize) -> usize {
        len.div_ceil(SEGMENT).max(1)
    }

    fn is_full(&self) -> bool {
        self.len == BATCH_SEGMENTS * SEGMENT
    }

    /// Free room in the current segment, to be filled by the caller and committed with `fill`.
    pub fn room(&mut self) -> &mut [u8] {
        let (seg, off) = (self.len / SEGMENT, self.len % SEGMENT);
        &mut self.buf[seg * SLOT + off..seg * SLOT + SEGMENT]
    }

    /// Records that `n` bytes of [`Batch::room`] were filled.
    pub fn fill(&mut self, n: usize) {
        self.len += n;
    }

    /// The next run of unread plaintext (within one segment), at most `max` bytes.
    fn chunk(&self, max: usize) -> &[u8] {
        let (seg, off) = (self.pos / SEGMENT, self.pos % SEGMENT);
        let n = (SEGMENT - off).min(self.len - self.pos).min(max);
        &self.buf[seg * SLOT + off..seg * SLOT + off + n]
    }
}

/// The STREAM nonce of segment `position` (as `aead::stream::StreamBE32` builds it).
fn nonce(prefix: &[u8; 19], position: u32, last: bool) -> XNonce {
    let mut n = XNonce::default();
    n[..19].copy_from_slice(prefix);
    n[19..23].copy_from_slice(&position.to_be_bytes());
    n[23] = u8::from(last);
    n
}

/// The parameters of one stream: key, header (also the associated data), next segment counter.
struct Segments {
    aead: XChaCha20Poly1305,
    header: [u8; HEADER],
    prefix: [u8; 19],
    next: u32,
    kind: StreamKind,
}

impl Segments {
    fn new(key: &Key, header: [u8; HEADER], kind: StreamKind) -> Segments {
        let mut prefix = [0u8; 19];
        prefix.copy_from_slice(&header[10..29]);
        Segments {
            aead: XChaCha20Poly1305::new(&key.0.into()),
            header,
            prefix,
            next: 0,
            kind,
        }
    }

    /// Counter of the first segment of the next batch of `count` segments, advancing past it.
    fn take(&mut self, count: usize) -> io::Result<u32> {
        let first = self.next;
        self.next = u32::try_from(count)
            .ok()
            .and_then(|c| first.checked_add(c))
            .ok_or_else(|| io::Error::other("stream longer than 2^32 segments"))?;
        Ok(first)
    }

    /// Seals `b`'s segments in place; `last` marks the stream's final batch. Returns the number
    /// of ciphertext bytes at the start of `b.buf`.
    fn seal(&mut self, b: &mut Batch, last: bool) -> io::Result<usize> {
        let count = Batch::segments(b.len);
        debug_assert!(last || b.is_full());
        let first = self.take(count)?;
        let len = b.len;
        let this = &*self;
        b.buf[..count * SLOT]
            .par_chunks_mut(SLOT)
            .enumerate()
            .try_for_each(|(i, slot)| {
                let plain = (len - i * SEGMENT).min(SEGMENT);
                let (data, rest) = slot.split_at_mut(plain);
                let n = nonce(&this.prefix, first + i as u32, last && i + 1 == count);
                let tag = this
                    .aead
                    .encrypt_in_place_detached(&n, &this.header, data)
                    .map_err(|_| io::Error::other("encrypting segment"))?;
                rest[..TAG].copy_from_slice(&tag);
                Ok::<(), io::Error>(())
            })?;
        Ok(len + count * TAG)
    }

    /// Opens `ct` ciphertext bytes at the start of `b.buf` in place; `last` when they end the
    /// stream. Sets the batch's plaintext length.
    fn open(&mut self, b: &mut Batch, ct: usize, last: bool) -> io::Result<()> {
        let count = ct.div_ceil(SLOT).max(1);
        let first = self.take(count)?;
        let this = &*self;
        let fail = |segment: u32| {
            io::Error::other(AuthFailure {
                kind: this.kind,
                segment,
            })
        };
        if ct < TAG || (ct % SLOT != 0 && ct % SLOT < TAG) {
            return Err(fail(first + (count as u32 - 1)));
        }
        // Sequential on purpose: restore already keeps both cores busy (this thread decrypts, the
        // caller writes, read-back threads hash), and a rayon fork per batch only added
        // wake-ups and yields (about 10% of restore's CPU in perf).
        for (i, slot) in b.buf[..ct].chunks_mut(SLOT).enumerate() {
            let (data, tag) = slot.split_at_mut(slot.len() - TAG);
            let pos = first + i as u32;
            let n = nonce(&this.prefix, pos, last && i + 1 == count);
            this.aead
                .decrypt_in_place_detached(&n, &this.header, data, (&*tag).into())
                .map_err(|_| fail(pos))?;
        }
        b.len = ct - count * TAG;
        b.pos = 0;
        Ok(())
    }
}

/// Makes a stream header for `kind` with a fresh random nonce prefix.
fn new_header(kind: StreamKind) -> io::Result<[u8; HEADER]> {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(crate::stream::MAGIC);
    h[8] = crate::stream::VERSION;
    h[9] = kind as u8;
    getrandom::getrandom(&mut h[10..29]).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(h)
}

/// What the sealing thread hands back: the file, the keyed BLAKE3 of everything written (hex),
/// ciphertext bytes written.
pub type Sealed = (File, String, u64);

/// Ingest's pipeline: the caller fills batches ([`SealPipe::room`] / [`SealPipe::fill`]); a thread
/// seals them (rayon), MACs and writes them to `file`.
pub struct SealPipe {
    cur: Batch,
    tx: Option<Sender<(Batch, bool)>>,
    free: Receiver<Batch>,
    spare: usize,
    worker: Option<std::thread::JoinHandle<io::Result<Sealed>>>,
}

impl SealPipe {
    /// Writes the header of a `kind` stream under `key` to `file` and starts the thread; `mac`
    /// keys the BLAKE3 MAC over the whole file.
    pub fn start(mut file: File, key: &Key, mac: &Key, kind: StreamKind) -> io::Result<SealPipe> {
        let header = new_header(kind)?;
        file.write_all(&header)?;
        let mut seg = Segments::new(key, header, kind);
        let mut hasher = blake3::Hasher::new_keyed(&mac.0);
        hasher.update(&header);
        let (tx, rx) = bounded::<(Batch, bool)>(IN_FLIGHT);
        let (free_tx, free) = bounded::<Batch>(IN_FLIGHT + 2);
        let worker = std::thread::Builder::new().name("tek-seal".into()).spawn(
            move || -> io::Result<Sealed> {
                let mut written = HEADER as u64;
                let mut flushed = 0u64;
                for (mut b, last) in rx {
                    let n = seal_and_write(&mut seg, &mut b, last, &mut file, &mut hasher)?;
                    written += n as u64;
                    if written - flushed >= WRITEBACK_EVERY {
                        crate::sys::start_writeback(&file, flushed, written - flushed);
                        flushed = written;
                    }
                    b.len = 0;
                    let _ = free_tx.try_send(b);
                    if last {
                        break;
                    }
                }
                Ok((file, hasher.finalize().to_hex().to_string(), written))
            },
        )?;
        Ok(SealPipe {
            cur: Batch::new(),
            tx: Some(tx),
            free,
            spare: IN_FLIGHT + 1,
            worker: Some(worker),
        })
    }

    /// Free room to read plaintext into (never empty).
    pub fn room(&mut self) -> io::Result<&mut [u8]> {
        if self.cur.is_full() {
            // Only now is this batch known not to be the last one.
            let next = match self.free.try_recv() {
                Ok(b) => b,
                Err(_) if self.spare > 0 => {
                    self.spare -= 1;
                    Batch::new()
                }
                Err(_) => self.free.recv().map_err(|_| self.dead())?,
            };
            let full = std::mem::replace(&mut self.cur, next);
            let sent = self.tx.as_ref().map(|tx| tx.send((full, false)));
            if !matches!(sent, Some(Ok(()))) {
                return Err(self.dead());
            }
        }
        Ok(self.cur.room())
    }

    /// Commits `n` bytes of the last [`SealPipe::room`].
    pub fn fill(&mut self, n: usize) {
        self.cur.fill(n);
    }

    fn dead(&mut self) -> io::Error {
        // The thread stopped early: its own error is the one to report.
        self.tx = None;
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("encryption thread stopped"),
        }
    }

    /// Seals the last batch and waits for everything to be written.
    pub fn finish(mut self) -> io::Result<Sealed> {
        let last = std::mem::replace(
            &mut self.cur,
            Batch {
                buf: Vec::new(),
                len: 0,
                pos: 0,
            },
        );
        let tx = self.tx.take().expect("pipe already finished");
        let sent = tx.send((last, true));
        drop(tx);
        let res = match self.worker.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("encryption thread panicked")),
            None => Err(io::Error::other("encryption thread stopped")),
        };
        match (sent, res) {
            (_, Err(e)) => Err(e),
            (Err(_), Ok(_)) => Err(io::Error::other("encryption thread stopped")),
            (Ok(()), Ok(r)) => Ok(r),
        }
    }
}

impl Drop for SealPipe {
    fn drop(&mut self) {
        // Dropped on an error path: close the queue so the thread ends, then wait for it.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn seal_and_write(
    seg: &mut Segments,
    b: &mut Batch,
    last: bool,
    file: &mut File,
    hasher: &mut blake3::Hasher,
) -> io::Result<usize> {
    let n = seg.seal(b, last)?;
    file.write_all(&b.buf[..n])?;
    hasher.update(&b.buf[..n]);
    Ok(n)
}

/// Restore's pipeline: a thread reads `file` (a whole stream, `len` bytes) batch by batch,
/// opens the segments (rayon) and hands plaintext over; the caller reads it with
/// [`OpenPipe::read_exact`].
pub struct OpenPipe {
    cur: Option<Batch>,
    rx: Receiver<io::Result<Batch>>,
    free: Sender<Batch>,
    done: bool,
    _worker: std::thread::JoinHandle<()>,
}

impl OpenPipe {
    /// Checks the header of `file` (a `kind` stream under `key`) and starts the thread.
    pub fn start(mut file: File, key: &Key, kind: StreamKind) -> io::Result<OpenPipe> {
        let fail = |segment| io::Error::other(AuthFailure { kind, segment });
        let len = file.metadata()?.len();
        let mut header = [0u8; HEADER];
        file.read_exact(&mut header).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => fail(u32::MAX),
            _ => e,
        })?;
        if &header[..8] != crate::stream::MAGIC
            || header[8] != crate::stream::VERSION
            || header[9] != kind as u8
        {
            return Err(fail(u32::MAX));
        }
        let mut seg = Segments::new(key, header, kind);
        let (tx, rx) = bounded::<io::Result<Batch>>(IN_FLIGHT);
        let (free, free_rx) = bounded::<Batch>(IN_FLIGHT + 2);
        let worker = std::thread::Builder::new()
            .name("tek-open".into())
            .spawn(move || {
                let mut left = len.saturating_sub(HEADER as u64);
                let mut spare = IN_FLIGHT + 1;
                loop {
                    let mut b = match free_rx.try_recv() {
                        Ok(b) => b,
                        Err(_) if spare > 0 => {
                            spare -= 1;
                            Batch::new()
                        }
                        Err(_) => match free_rx.recv() {
                            Ok(b) => b,
                            Err(_) => return,
                        },
                    };
                    let ct = left.min((BATCH_SEGMENTS * SLOT) as u64) as usize;
                    let last = ct as u64 == left;
                    let r = file
                        .read_exact(&mut b.buf[..ct])
                        .and_then(|()| seg.open(&mut b, ct, last));
                    left -= ct as u64;
                    let stop = r.is_err() || last;
                    if tx.send(r.map(|()| b)).is_err() || stop {
                        return;
                    }
                }
            })?;
        Ok(OpenPipe {
            cur: None,
            rx,
            free,
            done: false,
            _worker: worker,
        })
    }

    /// The next run of plaintext, at most `max` bytes; empty at the end of the stream.
    fn chunk(&mut self, max: usize) -> io::Result<&[u8]> {
        loop {
            if let Some(b) = &self.cur
                && b.pos < b.len
            {
                break;
            }
            if let Some(b) = self.cur.take() {
                let _ = self.free.try_send(b);
            }
            if self.done {
                return Ok(&[]);
            }
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.done = b.len < BATCH_SEGMENTS * SEGMENT;
                    self.cur = Some(b);
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(&[]);
                }
            }
        }
        let b = self.cur.as_ref().expect("current batch");
        Ok(b.chunk(max))
    }

    /// Passes exactly `n` plaintext bytes to `sink`, in runs of at most one segment.
    pub fn copy_to(
        &mut self,
        mut n: u64,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        while n > 0 {
            let c = self.chunk(n.min(SEGMENT as u64) as usize)?;
            if c.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "data stream ended before the manifest did",
                ));
            }
            let k = c.len();
            sink(c)?;
            self.cur.as_mut().expect("current batch").pos += k;
            n -= k as u64;
        }
        Ok(())
    }

    /// Checks that the stream ends here (its last segment authenticated, nothing after it).
    pub fn finish(mut self) -> io::Result<()> {
        if self.chunk(1)?.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(
                "data stream holds more bytes than the manifest lists",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{DecryptReader, EncryptWriter};

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 251) as u8).collect()
    }

    fn seal_file(data: &[u8], key: &Key, mac: &Key) -> (Vec<u8>, String, u64) {
        let tmp = tempfile::tempfile().unwrap();
        let mut p = SealPipe::start(tmp, key, mac, StreamKind::Data).unwrap();
        let mut off = 0;
        while off < data.len() {
            let room = p.room().unwrap();
            let n = room.len().min(data.len() - off).min(5000);
            room[..n].copy_from_slice(&data[off..off + n]);
            p.fill(n);
            off += n;
        }
        let (mut f, mac_hex, n) = p.finish().unwrap();
        let mut ct = Vec::new();
        use std::io::Seek;
        f.seek(io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut ct).unwrap();
        (ct, mac_hex, n)
    }

    fn file_of(ct: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(ct).unwrap();
        use std::io::Seek;
        f.seek(io::SeekFrom::Start(0)).unwrap();
        f
    }

    fn open_all(ct: &[u8], key: &Key, len: u64) -> io::Result<Vec<u8>> {
        let mut p = OpenPipe::start(file_of(ct), key, StreamKind::Data)?;
        let mut out = Vec::new();
        p.copy_to(len, |c| {
            out.extend_from_slice(c);
            Ok(())
        })?;
        p.finish()?;
        Ok(out)
    }

    const EDGES: [usize; 9] = [
        0,
        1,
        SEGMENT,
        SEGMENT + 1,
        BATCH_SEGMENTS * SEGMENT - 1,
        BATCH_SEGMENTS * SEGMENT,
        BATCH_SEGMENTS * SEGMENT + 1,
        2 * BATCH_SEGMENTS * SEGMENT,
        3 * BATCH_SEGMENTS * SEGMENT + 77,
    ];

    #[test]
    fn interoperates_with_the_sequential_stream() {
        for len in EDGES {
            let (key, mac) = (Key::random(), Key::random());
            let data = plain(len);
            let (ct, mac_hex, n) = seal_file(&data, &key, &mac);
            assert_eq!(n, ct.len() as u64);
            assert_eq!(mac_hex, crate::stream::mac_of(&ct[..], &mac).unwrap());
            // Sealed in batches, opened by the sequential reader.
            let mut out = Vec::new();
            DecryptReader::new(&ct[..], &key, StreamKind::Data)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "len {len}");
            // Sealed sequentially, opened in batches.
            let mut w = EncryptWriter::new(Vec::new(), &key, StreamKind::Data).unwrap();
            w.write_all(&data).unwrap();
            let (ct2, _) = w.finish().unwrap();
            assert_eq!(open_all(&ct2, &key, len as u64).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn tampering_truncation_and_extension_fail() {
        let key = Key::random();
        let len = 2 * BATCH_SEGMENTS * SEGMENT + 10;
        let (ct, _, _) = seal_file(&plain(len), &key, &Key::random());
        let mut bad = ct.clone();
        bad[HEADER + 20 * SLOT + 3] ^= 1;
        let e = open_all(&bad, &key, len as u64).unwrap_err();
        assert_eq!(crate::stream::auth_failure(&e).unwrap().segment, 20);
        // Cut at a segment boundary (the new last segment lacks the last flag).
        let cut = &ct[..HEADER + 2 * BATCH_SEGMENTS * SLOT];
        let e = open_all(cut, &key, (2 * BATCH_SEGMENTS * SEGMENT) as u64).unwrap_err();
        assert!(crate::stream::auth_failure(&e).is_some());
        let cut = &ct[..HEADER + 5];
        assert!(open_all(cut, &key, 0).is_err());
        let mut longer = ct.clone();
        longer.extend_from_slice(&[0u8; 40]);
        assert!(open_all(&longer, &key, len as u64).is_err());
        assert!(open_all(&ct, &Key::random(), len as u64).is_err());
    }
}
