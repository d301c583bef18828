//! Streaming authenticated encryption of staging files.
//!
//! Each encrypted file is a 32-byte header followed by the STREAM construction (Hoang, Reyhanitabar,
//! Rogaway, Vizár: "Online authenticated-encryption and its nonce-reuse misuse-resistance") over
//! XChaCha20-Poly1305 with 32-bit big-endian segment counters and a last-segment flag
//! (`aead::stream::StreamBE32`): plaintext is cut into 64 KiB segments, each sealed with its own
//! tag. Truncation, reordering and splicing of segments all fail authentication, and memory stays at
//! two segments whatever the file size.
//!
//! Header (32 bytes, also the associated data of every segment, so it is authenticated too):
//! `b"TEKSTRM1"`, version `1u8`, kind `1u8` (1 = data, 2 = manifest, 3 = key backup), 19-byte random nonce prefix,
//! 3 zero bytes.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
/// Poly1305 tag bytes per segment.
pub const TAG: usize = 16;
/// Header bytes.
pub const HEADER: usize = 32;
pub(crate) const MAGIC: &[u8; 8] = b"TEKSTRM1";
pub(crate) const VERSION: u8 = 1;

/// What an encrypted stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// File contents, concatenated in manifest order.
    Data = 1,
    /// The encoded manifest entries.
    Manifest = 2,
    /// A key backup (JSON lines).
    KeyBackup = 3,
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamKind::Data => "data",
            StreamKind::Manifest => "manifest",
            StreamKind::KeyBackup => "key backup",
        })
    }
}

/// A 256-bit secret key.
#[derive(Clone)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A fresh random key from the OS.
    pub fn random() -> Key {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).expect("getrandom failed: no OS randomness");
        Key(k)
    }
    /// Derives an independent subkey for one purpose (BLAKE3 derive_key), so the data stream, the
    /// manifest stream and the ciphertext MAC never share a key.
    pub fn derive(&self, purpose: &str) -> Key {
        Key(blake3::derive_key(purpose, &self.0))
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Best effort: do not leave key bytes in freed memory.
        for b in self.0.iter_mut() {
            // SAFETY-free volatile-ish: black_box keeps the store from being optimised away.
            *b = std::hint::black_box(0);
        }
    }
}

/// Marker error for an authentication failure inside a stream (wrapped in `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("{kind} stream segment {segment} failed authentication")]
pub struct AuthFailure {
    /// Which stream.
    pub kind: StreamKind,
    /// 0-based segment number (u32::MAX for the header).
    pub segment: u32,
}

/// Returns the [`AuthFailure`] inside an I/O error, if that is what it is.
pub fn auth_failure(e: &io::Error) -> Option<&AuthFailure> {
    e.get_ref().and_then(|i| i.downcast_ref::<AuthFailure>())
}

/// Encrypts everything written to it into `inner`; call [`EncryptWriter::finish`] at the end.
pub struct EncryptWriter<W: Write> {
    inner: W,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    header: [u8; HEADER],
    buf: Vec<u8>,
    plain_bytes: u64,
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the header and starts a stream of `kind` under `key`.
    pub fn new(mut inner: W, key: &Key, kind: StreamKind) -> io::Result<Self> {
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        header[9] = kind as u8;
        getrandom::getrandom(&mut header[10..29]).map_err(|e| io::Error::other(e.to_string()))?;
        inner.write_all(&header)?;
        let aead = XChaCha20Poly1305::new(&key.0.into());
        let enc = EncryptorBE32::from_aead(aead, header[10..29].into());
        Ok(EncryptWriter {
            inner,
            enc: Some(enc),
            header,
            buf: Vec::with_capacity(SEGMENT + TAG),
            plain_bytes: 0,
        })
    }

    fn seal_full(&mut self) -> io::Result<()> {
        let enc = self.enc.as_mut().expect("stream already finished");
        enc.encrypt_next_in_place(&self.header, &mut self.buf)
            .map_err(|_| io::Error::other("encrypting segment"))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Seals the last segment and returns the inner writer and the plaintext byte count.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let enc = self.enc.take().expect("stream already finished");
        enc.encrypt_last_in_place(&self.header, &mut self.buf)
            .map_err(|_| io::Error::other("encrypting last segment"))?;
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok((self.inner, self.plain_bytes))
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A segment is sealed only once more data arrives, so the final segment (possibly a full
        // one) is always sealed by `finish` with the last-segment flag.
        if self.buf.len() == SEGMENT && !data.is_empty() {
            self.seal_full()?;
        }
        let n = data.len().min(SEGMENT - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.plain_bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decrypts and authenticates a stream segment by segment.
pub struct DecryptReader<R: Read> {
    inner: R,
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    header: [u8; HEADER],
    kind: StreamKind,
    /// Ciphertext read ahead (at most one segment plus one byte).
    ahead: Vec<u8>,
    /// Decrypted plaintext not yet returned.
    plain: Vec<u8>,
    pos: usize,
    segment: u32,
    done: bool,
}

impl<R: Read> DecryptReader<R> {
    /// Reads and checks the header of a stream of `kind`.
    pub fn new(mut inner: R, key: &Key, kind: StreamKind) -> io::Result<Self> {
        let mut header = [0u8; HEADER];
        inner.read_exact(&mut header).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::other(AuthFailure {
                    kind,
                    segment: u32::MAX,
                })
            } else {
                e
            }
        })?;
        if &header[..8] != MAGIC || header[8] != VERSION || header[9] != kind as u8 {
            return Err(io::Error::other(AuthFailure {
                kind,
                segment: u32::MAX,
            }));
        }
        let aead = XChaCha20Poly1305::new(&key.0.into());
        let dec = DecryptorBE32::from_aead(aead, header[10..29].into());
        Ok(DecryptReader {
            inner,
            dec: Some(dec),
            header,
            kind,
            ahead: Vec::with_capacity(SEGMENT + TAG + 1),
            plain: Vec::with_capacity(SEGMENT + TAG + 1),
            pos: 0,
            segment: 0,
            done: false,
        })
    }

    /// Reads and authenticates the next segment into `plain`.
    fn next_segment(&mut self) -> io::Result<()> {
        // Read one byte past a full segment: if it exists, this segment is not the last.
        let want = SEGMENT + TAG + 1;
        while self.ahead.len() < want {
            let old = self.ahead.len();
            self.ahead.resize(want, 0);
            let n = match self.inner.read(&mut self.ahead[old..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.ahead.truncate(old);
                    return Err(e);
                }
            };
            self.ahead.truncate(old + n);
            if n == 0 {
                break;
            }
        }
        let last = self.ahead.len() < want;
        let take = self.ahead.len().min(SEGMENT + TAG);
        self.plain.clear();
        self.plain.extend_from_slice(&self.ahead[..take]);
        self.ahead.drain(..take);
        self.pos = 0;
        let fail = || {
            io::Error::other(AuthFailure {
                kind: self.kind,
                segment: self.segment,
            })
        };
        if last {
            let dec = self.dec.take().expect("stream already finished");
            dec.decrypt_last_in_place(&self.header, &mut self.plain)
                .map_err(|_| fail())?;
            self.done = true;
        } else {
            let dec = self.dec.as_mut().expect("stream already finished");
            dec.decrypt_next_in_place(&self.header, &mut self.plain)
                .map_err(|_| fail())?;
        }
        self.segment += 1;
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A writer that hashes (keyed BLAKE3, i.e. a MAC) and counts everything passing to `inner`.
pub struct MacWriter<W: Write> {
    /// The underlying writer.
    pub inner: W,
    hasher: blake3::Hasher,
    /// Bytes written so far.
    pub bytes: u64,
}

impl<W: Write> MacWriter<W> {
    /// Starts a MAC under `key`.
    pub fn new(inner: W, key: &Key) -> Self {
        MacWriter {
            inner,
            hasher: blake3::Hasher::new_keyed(&key.0),
            bytes: 0,
        }
    }
    /// The MAC of everything written, hex.
    pub fn mac_hex(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

impl<W: Write> Write for MacWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Keyed BLAKE3 of everything `r` yields, hex (the first-pass whole-ciphertext check).
pub fn mac_of(mut r: impl Read, key: &Key) -> io::Result<String> {
    let mut h = blake3::Hasher::new_keyed(&key.0);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // One thread: measured with b3sum on the 1 GiB staging file, mmap + rayon cost twice the
        // CPU (faults, wake-ups) for no gain in wall time on a 2-core machine kept busy by others.
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let key = Key::random();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = EncryptWriter::new(Vec::new(), &key, StreamKind::Data).unwrap();
        w.write_all(&data).unwrap();
        let (ct, n) = w.finish().unwrap();
        assert_eq!(n, len as u64);
        let mut r = DecryptReader::new(&ct[..], &key, StreamKind::Data).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn roundtrips_at_segment_edges() {
        for len in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            3 * SEGMENT + 5,
        ] {
            roundtrip(len);
        }
    }

    fn sealed(len: usize, key: &Key) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), key, StreamKind::Data).unwrap();
        w.write_all(&vec![1u8; len]).unwrap();
        w.finish().unwrap().0
    }

    fn read_all(ct: &[u8], key: &Key, kind: StreamKind) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        DecryptReader::new(ct, key, kind)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn flipped_bit_fails() {
        let key = Key::random();
        let mut ct = sealed(2 * SEGMENT + 10, &key);
        ct[HEADER + SEGMENT + 100] ^= 1;
        let e = read_all(&ct, &key, StreamKind::Data).unwrap_err();
        assert_eq!(auth_failure(&e).unwrap().segment, 1);
    }

    #[test]
    fn truncation_at_segment_boundary_fails() {
        let key = Key::random();
        let ct = sealed(2 * SEGMENT + 10, &key);
        let cut = &ct[..HEADER + 2 * (SEGMENT + TAG)];
        let e = read_all(cut, &key, StreamKind::Data).unwrap_err();
        assert!(auth_failure(&e).is_some());
        let e = read_all(&ct[..HEADER], &key, StreamKind::Data).unwrap_err();
        assert!(auth_failure(&e).is_some());
    }

    #[test]
    fn wrong_key_or_kind_fails() {
        let key = Key::random();
        let ct = sealed(10, &key);
        assert!(read_all(&ct, &Key::random(), StreamKind::Data).is_err());
        assert!(read_all(&ct, &key, StreamKind::Manifest).is_err());
    }

    #[test]
    fn mac_matches_writer() {
        let key = Key::random();
        let mut w = MacWriter::new(Vec::new(), &key);
        w.write_all(b"hello").unwrap();
        assert_eq!(w.mac_hex(), mac_of(&b"hello"[..], &key).unwrap());
    }
}
