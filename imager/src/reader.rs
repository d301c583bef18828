//! The read stage for one-off image files: raw (holes found with SEEK_DATA/SEEK_HOLE where the
//! filesystem knows them) or compressed with zstd, gzip, xz or bzip2 (decoded with the store's
//! `image_store::source`, the same detection `tek image import` uses), cut into [`BLOCK`]-sized
//! jobs for the decode pool.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use image_store::StoreError;
use image_store::source::{Source, SourceFormat};

use crate::decode::Work;
use crate::error::ImagerError;
use crate::span;

/// Size of one raw job: big enough to amortise channel traffic, small enough to keep memory low.
pub const BLOCK: usize = 4 << 20;

fn open(path: &Path) -> Result<File, ImagerError> {
    File::open(path).map_err(|e| src_err("opening image", path, 0, e))
}

pub(crate) fn src_err(action: &'static str, path: &Path, offset: u64, e: io::Error) -> ImagerError {
    ImagerError::Source {
        action,
        path: path.to_path_buf(),
        offset,
        source: e,
    }
}

/// The imager's error for the store's source-file errors (the same detection and decoders as
/// `tek image import`).
fn decode_err(path: &Path, e: StoreError) -> ImagerError {
    match e {
        StoreError::Decompress {
            format,
            offset,
            reason,
            ..
        } => src_err(
            "decompressing image",
            path,
            offset,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{format} stream: {reason}"),
            ),
        ),
        StoreError::BadSource { reason, .. } => ImagerError::BadImage {
            path: path.to_path_buf(),
            reason,
        },
        StoreError::Io { source, .. } => src_err("reading image", path, 0, source),
        other => ImagerError::BadImage {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Opens an image file through the store's format detection: raw, zstd, gzip, xz or bzip2 by
/// magic bytes; a container tek cannot decode (lz4, zip, qcow2, ...) is refused.
pub fn open_decoded(path: &Path) -> Result<Source, ImagerError> {
    Source::open(path).map_err(|e| decode_err(path, e))
}

/// The format of an image file (see [`open_decoded`]).
pub fn file_format(path: &Path) -> Result<SourceFormat, ImagerError> {
    Ok(open_decoded(path)?.format())
}

/// Decodes a compressed image file once, end to end: its decoded size, and its first bytes in
/// `head` (returns how many). gzip, xz and bzip2 do not record the size reliably (gzip keeps it
/// modulo 4 GiB, and a file may hold several streams), and a zstd frame header only speaks for its
/// own frame, so the stream is counted. This also proves the whole stream decodes before a byte
/// is written: a truncated or corrupt file is refused with the offset, the disk untouched.
pub fn scan_decoded(path: &Path, head: &mut [u8]) -> Result<(u64, usize), ImagerError> {
    let mut src = open_decoded(path)?;
    let n = src.fill(head).map_err(|e| decode_err(path, e))?;
    let mut size = n as u64;
    if n == head.len() {
        let mut buf = vec![0u8; BLOCK];
        loop {
            let k = src.fill(&mut buf).map_err(|e| decode_err(path, e))?;
            size += k as u64;
            if k < buf.len() {
                break;
            }
        }
    }
    Ok((size, n))
}

/// Reads until `buf` is full or EOF; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Jobs over a raw image file from `start` to `size`.
pub struct RawJobs {
    path: PathBuf,
    file: File,
    pos: u64,
    size: u64,
    /// End of the current data region (from SEEK_HOLE), or `size` when unknown.
    data_end: u64,
    seek_holes: bool,
}

impl RawJobs {
    /// Opens `path` (`size` bytes long) and starts at `start`.
    pub fn open(path: &Path, size: u64, start: u64) -> Result<Self, ImagerError> {
        let file = open(path)?;
        let seek_holes = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(RawJobs {
            path: path.to_path_buf(),
            file,
            pos: start,
            size,
            data_end: start,
            seek_holes,
        })
    }

    fn lseek(&self, off: u64, whence: nix::unistd::Whence) -> Option<u64> {
        nix::unistd::lseek(self.file.as_raw_fd(), off as i64, whence)
            .ok()
            .map(|v| v as u64)
    }

    fn next_job(&mut self) -> Result<Option<Work>, ImagerError> {
        if self.pos >= self.size {
            return Ok(None);
        }
        if self.pos >= self.data_end {
            if !self.seek_holes {
                self.data_end = self.size;
            } else {
                use nix::unistd::Whence;
                // ENXIO from SEEK_DATA means "only a hole from here to the end".
                let data = self
                    .lseek(self.pos, Whence::SeekData)
                    .unwrap_or(self.size)
                    .min(self.size);
                if data > self.pos {
                    let hole = Work::Hole {
                        offset: self.pos,
                        len: data - self.pos,
                    };
                    self.pos = data;
                    return Ok(Some(hole));
                }
                self.data_end = self
                    .lseek(self.pos, Whence::SeekHole)
                    .unwrap_or(self.size)
                    .clamp(self.pos + 1, self.size);
            }
        }
        let len = (self.data_end - self.pos).min(BLOCK as u64) as usize;
        let (mut buf, lead) = span::buf_for(self.pos, len);
        self.file
            .read_exact_at(&mut buf.as_mut_slice()[lead..lead + len], self.pos)
            .map_err(|e| src_err("reading image", &self.path, self.pos, e))?;
        let job = Work::Raw {
            offset: self.pos,
            buf,
            lead,
            len,
        };
        self.pos += len as u64;
        Ok(Some(job))
    }
}

impl Iterator for RawJobs {
    type Item = Result<Work, ImagerError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_job().transpose()
    }
}

/// Jobs over a compressed image file (zstd, gzip, xz, bzip2), from `start`: earlier bytes are
/// decoded and dropped, since these streams cannot be entered in the middle. The decoded bytes are
/// what [`crate::span::Span::from_trusted`] hashes, so read-back compares the disk with the
/// *decoded* image.
pub struct DecodedJobs {
    path: PathBuf,
    src: Source,
    pos: u64,
    start: u64,
    size: u64,
    done: bool,
}

impl DecodedJobs {
    /// Opens `path` whose decoded size is `size` (from [`scan_decoded`]), starting at `start`.
    pub fn open(path: &Path, size: u64, start: u64) -> Result<Self, ImagerError> {
        Ok(DecodedJobs {
            path: path.to_path_buf(),
            src: open_decoded(path)?,
            pos: 0,
            start,
            size,
            done: false,
        })
    }

    fn next_job(&mut self) -> Result<Option<Work>, ImagerError> {
        loop {
            if self.pos >= self.size {
                if !self.done {
                    self.done = true;
                    // The file was scanned at `size` bytes; if it decodes to more now, it changed
                    // under us and what was written is not that file.
                    let mut one = [0u8; 1];
                    let k = self
                        .src
                        .fill(&mut one)
                        .map_err(|e| decode_err(&self.path, e))?;
                    if k > 0 {
                        return Err(src_err(
                            "decompressing image",
                            &self.path,
                            self.size,
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the stream continues past the size it had when it was checked",
                            ),
                        ));
                    }
                }
                return Ok(None);
            }
            let len = (self.size - self.pos).min(BLOCK as u64) as usize;
            let (mut buf, lead) = span::buf_for(self.pos, len);
            let n = self
                .src
                .fill(&mut buf.as_mut_slice()[lead..lead + len])
                .map_err(|e| decode_err(&self.path, e))?;
            if n < len {
                return Err(src_err(
                    "decompressing image",
                    &self.path,
                    self.pos + n as u64,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "stream ends before its size"),
                ));
            }
            let off = self.pos;
            self.pos += len as u64;
            if self.pos <= self.start {
                span::give_buf(buf);
                continue;
            }
            // Skipping bytes keeps the layout congruent: `lead + skip` = `start` mod ALIGN.
            let skip = self.start.saturating_sub(off) as usize;
            return Ok(Some(Work::Raw {
                offset: off + skip as u64,
                buf,
                lead: lead + skip,
                len: len - skip,
            }));
        }
    }
}

impl Iterator for DecodedJobs {
    type Item = Result<Work, ImagerError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_job().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(jobs: impl Iterator<Item = Result<Work, ImagerError>>) -> Vec<(u64, u64, bool)> {
        jobs.map(|j| match j.unwrap() {
            Work::Raw { offset, len, .. } => (offset, len as u64, true),
            Work::Hole { offset, len } => (offset, len, false),
            Work::Stored { .. } => panic!(),
        })
        .collect()
    }

    #[test]
    fn raw_covers_the_file_and_skips_sparse_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create(&p).unwrap();
        let size = 3 * BLOCK as u64 + 8192;
        f.set_len(size).unwrap();
        f.write_all_at(&[5u8; 4096], 2 * BLOCK as u64).unwrap();
        drop(f);
        let got = offsets(RawJobs::open(&p, size, 0).unwrap());
        let total: u64 = got.iter().map(|g| g.1).sum();
        assert_eq!(total, size);
        let mut pos = 0;
        for g in &got {
            assert_eq!(g.0, pos);
            pos += g.1;
        }
        // A filesystem that reports holes makes the first 8 MiB a single hole job.
        assert!(got.iter().any(|g| g.2 && g.0 <= 2 * BLOCK as u64));
    }

    fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match kind {
            "zstd" => zstd::encode_all(data, 1).unwrap(),
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "xz" => {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 0);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "bzip2" => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            _ => unreachable!(),
        }
    }

    fn decoded(jobs: DecodedJobs) -> Result<Vec<u8>, ImagerError> {
        let mut back = Vec::new();
        for j in jobs {
            match j? {
                Work::Raw { buf, lead, len, .. } => {
                    back.extend_from_slice(&buf.as_slice()[lead..lead + len])
                }
                _ => panic!(),
            }
        }
        Ok(back)
    }

    #[test]
    fn every_format_round_trips_and_starts_at_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(BLOCK + 5000)).map(|i| (i % 251) as u8).collect();
        for kind in ["zstd", "gzip", "xz", "bzip2"] {
            let p = dir.path().join(format!("img.{kind}"));
            std::fs::write(&p, compress(kind, &data)).unwrap();
            assert_eq!(file_format(&p).unwrap().name(), kind);
            let mut head = [0u8; 8192];
            assert_eq!(
                scan_decoded(&p, &mut head).unwrap(),
                (data.len() as u64, 8192)
            );
            assert_eq!(head[..], data[..8192]);
            let back = decoded(DecodedJobs::open(&p, data.len() as u64, 0).unwrap()).unwrap();
            assert!(back == data, "{kind}");
            let first = DecodedJobs::open(&p, data.len() as u64, 100)
                .unwrap()
                .next()
                .unwrap();
            match first.unwrap() {
                Work::Raw {
                    offset,
                    buf,
                    lead,
                    len,
                } => {
                    assert_eq!(offset, 100);
                    assert_eq!(lead % 4096, 100);
                    assert_eq!(buf.as_slice()[lead..lead + len], data[100..BLOCK]);
                }
                _ => panic!(),
            }
        }
    }

    #[test]
    fn truncated_and_corrupt_streams_name_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        for kind in ["zstd", "gzip", "xz", "bzip2"] {
            let c = compress(kind, &data);
            let p = dir.path().join(format!("t.{kind}"));
            std::fs::write(&p, &c[..c.len() / 2]).unwrap();
            let e = scan_decoded(&p, &mut [0u8; 8192]).unwrap_err();
            assert!(
                matches!(e, ImagerError::Source { offset, .. } if offset < data.len() as u64),
                "{kind}: {e}"
            );
            assert!(e.to_string().contains(kind), "{kind}: {e}");
            // Scanned at one size, then the file is replaced by a shorter or longer one.
            std::fs::write(&p, &c).unwrap();
            let e = decoded(DecodedJobs::open(&p, data.len() as u64 + 10, 0).unwrap()).unwrap_err();
            assert!(
                e.to_string().contains(&format!("offset {}", data.len())),
                "{kind}: {e}"
            );
            let e = decoded(DecodedJobs::open(&p, data.len() as u64 - 10, 0).unwrap()).unwrap_err();
            assert!(e.to_string().contains("continues past"), "{kind}: {e}");
        }
    }
}
