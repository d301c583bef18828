//! Staged file content read at an offset, for the resume's look at entries an interrupted
//! run had not journaled (see `plan`): the data stream decrypted segment by segment at the
//! segments that hold the bytes asked for, not from its start (`StreamBE32` takes the
//! segment's position; the last segment is known from the file's length). Every segment
//! read is authenticated as in `stream::DecryptReader`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use crate::stream::{AuthFailure, HEADER, Key, SEGMENT, StreamKind, TAG};

/// The dataset's data stream, opened for reads at offsets.
pub(super) struct StagedData {
    file: File,
    stream: StreamBE32<XChaCha20Poly1305>,
    header: [u8; HEADER],
    /// Index of the last segment.
    last: u64,
    /// The segment decrypted last: (index, plaintext).
    seg: Option<(u64, Vec<u8>)>,
}

impl StagedData {
    /// Opens the data stream `file` under `key` (its header checked).
    pub(super) fn open(file: File, key: &Key) -> io::Result<StagedData> {
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, 0)?;
        let len = file.metadata()?.len();
        let body = len.saturating_sub(HEADER as u64);
        if &header[..8] != crate::stream::MAGIC
            || header[8] != crate::stream::VERSION
            || header[9] != StreamKind::Data as u8
            || body < TAG as u64
        {
            return Err(fail(u32::MAX));
        }
        let aead = XChaCha20Poly1305::new(&key.0.into());
        let stream = StreamBE32::from_aead(aead, header[10..29].into());
        let whole = (SEGMENT + TAG) as u64;
        Ok(StagedData {
            file,
            stream,
            header,
            last: body.div_ceil(whole) - 1,
            seg: None,
        })
    }

    /// The plaintext of segment `i`.
    fn segment(&mut self, i: u64) -> io::Result<&[u8]> {
        if self.seg.as_ref().is_none_or(|(k, _)| *k != i) {
            if i > self.last {
                return Ok(&[]);
            }
            let whole = (SEGMENT + TAG) as u64;
            let len = self.file.metadata()?.len() - HEADER as u64;
            let n = (len - i * whole).min(whole) as usize;
            let mut buf = self.seg.take().map(|s| s.1).unwrap_or_default();
            buf.resize(n, 0);
            self.file
                .read_exact_at(&mut buf, HEADER as u64 + i * whole)?;
            let pos = u32::try_from(i).map_err(|_| fail(u32::MAX))?;
            self.stream
                .decrypt_in_place(pos, i == self.last, &self.header, &mut buf)
                .map_err(|_| fail(pos))?;
            self.seg = Some((i, buf));
        }
        Ok(&self.seg.as_ref().expect("just read").1)
    }

    /// True when `r` yields a prefix of (or all of) the staged bytes `at..at + len`: read to
    /// its end, or to the first difference.
    pub(super) fn is_prefix(
        &mut self,
        mut r: impl io::Read,
        at: u64,
        len: u64,
    ) -> io::Result<bool> {
        let mut buf = vec![0u8; SEGMENT];
        let mut pos = at;
        loop {
            let k = match r.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if pos - at + k as u64 > len {
                return Ok(false);
            }
            let mut got = &buf[..k];
            while !got.is_empty() {
                let seg = SEGMENT as u64;
                let (i, off) = (pos / seg, (pos % seg) as usize);
                let s = self.segment(i)?;
                let m = got.len().min(s.len().saturating_sub(off));
                if m == 0 || s[off..off + m] != got[..m] {
                    return Ok(false);
                }
                got = &got[m..];
                pos += m as u64;
            }
        }
    }
}

fn fail(segment: u32) -> io::Error {
    io::Error::other(AuthFailure {
        kind: StreamKind::Data,
        segment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn prefixes_of_the_staged_bytes_are_found_at_any_offset() {
        let d = tempfile::tempdir().unwrap();
        let key = Key([7; 32]);
        let plain: Vec<u8> = (0..3 * SEGMENT + 100)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let p = d.path().join("data.enc");
        let mut w =
            crate::stream::EncryptWriter::new(File::create(&p).unwrap(), &key, StreamKind::Data)
                .unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
        let mut s = StagedData::open(File::open(&p).unwrap(), &key).unwrap();
        let (at, len) = (SEGMENT as u64 - 10, 2 * SEGMENT as u64 + 50);
        let file = &plain[at as usize..(at + len) as usize];
        assert!(s.is_prefix(file, at, len).unwrap());
        assert!(s.is_prefix(&file[..70000], at, len).unwrap());
        assert!(s.is_prefix(&[][..], at, len).unwrap());
        let mut flipped = file[..70000].to_vec();
        flipped[69999] ^= 1;
        assert!(!s.is_prefix(&flipped[..], at, len).unwrap());
        // Longer than the staged file.
        let longer = &plain[at as usize..(at + len + 1) as usize];
        assert!(!s.is_prefix(longer, at, len).unwrap());
        // The end of the stream, the last segment included.
        let tail = &plain[3 * SEGMENT..];
        assert!(s.is_prefix(tail, 3 * SEGMENT as u64, 100).unwrap());
        let wrong = StagedData::open(File::open(&p).unwrap(), &Key([8; 32]));
        let mut wrong = wrong.unwrap();
        assert!(wrong.is_prefix(&file[..10], at, len).is_err());
    }
}
