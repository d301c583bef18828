//! The read stage for one-off image files: raw (holes found with SEEK_DATA/SEEK_HOLE where the
//! filesystem knows them) or zstd-compressed, cut into [`BLOCK`]-sized jobs for the decode pool.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::decode::Job;
use crate::error::ImagerError;
use crate::span;

/// Size of one raw job: big enough to amortise channel traffic, small enough to keep memory low.
pub const BLOCK: usize = 4 << 20;

/// The zstd frame magic number, little-endian on disk.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// True when the file starts with a zstd frame.
pub fn is_zstd(path: &Path) -> Result<bool, ImagerError> {
    let mut f = open(path)?;
    let mut magic = [0u8; 4];
    let n = read_full(&mut f, &mut magic).map_err(|e| src_err("reading image", path, 0, e))?;
    Ok(n == 4 && magic == ZSTD_MAGIC)
}

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

/// Uncompressed size of a zstd image: the frame header's content size when present (zstd writes
/// it when compressing a file), else a counting pass over the whole stream.
pub fn zstd_size(path: &Path) -> Result<u64, ImagerError> {
    let mut f = open(path)?;
    let mut head = [0u8; 18];
    let n = read_full(&mut f, &mut head).map_err(|e| src_err("reading image", path, 0, e))?;
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(&head[..n]) {
        return Ok(size);
    }
    let f = open(path)?;
    let mut dec = zstd::stream::read::Decoder::new(f)
        .map_err(|e| src_err("decompressing image", path, 0, e))?;
    io::copy(&mut dec, &mut io::sink()).map_err(|e| src_err("decompressing image", path, 0, e))
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

    fn next_job(&mut self) -> Result<Option<Job>, ImagerError> {
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
                    let hole = Job::Hole {
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
        let job = Job::Raw {
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
    type Item = Result<Job, ImagerError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_job().transpose()
    }
}

/// Jobs over a zstd-compressed raw image, from `start` (earlier bytes are decompressed and
/// dropped: zstd streams cannot be entered in the middle).
pub struct ZstdJobs {
    path: PathBuf,
    dec: zstd::stream::read::Decoder<'static, io::BufReader<File>>,
    pos: u64,
    start: u64,
    size: u64,
}

impl ZstdJobs {
    /// Opens `path` whose uncompressed size is `size`, starting at `start`.
    pub fn open(path: &Path, size: u64, start: u64) -> Result<Self, ImagerError> {
        let dec = zstd::stream::read::Decoder::new(open(path)?)
            .map_err(|e| src_err("decompressing image", path, 0, e))?;
        Ok(ZstdJobs {
            path: path.to_path_buf(),
            dec,
            pos: 0,
            start,
            size,
        })
    }

    fn next_job(&mut self) -> Result<Option<Job>, ImagerError> {
        loop {
            if self.pos >= self.size {
                return Ok(None);
            }
            let len = (self.size - self.pos).min(BLOCK as u64) as usize;
            let (mut buf, lead) = span::buf_for(self.pos, len);
            let n = read_full(&mut self.dec, &mut buf.as_mut_slice()[lead..lead + len])
                .map_err(|e| src_err("decompressing image", &self.path, self.pos, e))?;
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
            return Ok(Some(Job::Raw {
                offset: off + skip as u64,
                buf,
                lead: lead + skip,
                len: len - skip,
            }));
        }
    }
}

impl Iterator for ZstdJobs {
    type Item = Result<Job, ImagerError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_job().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(jobs: impl Iterator<Item = Result<Job, ImagerError>>) -> Vec<(u64, u64, bool)> {
        jobs.map(|j| match j.unwrap() {
            Job::Raw { offset, len, .. } => (offset, len as u64, true),
            Job::Hole { offset, len } => (offset, len, false),
            Job::Stored { .. } => panic!(),
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

    #[test]
    fn zstd_round_trip_and_start_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.zst");
        let data: Vec<u8> = (0..(BLOCK + 5000)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, zstd::encode_all(&data[..], 1).unwrap()).unwrap();
        assert!(is_zstd(&p).unwrap());
        assert_eq!(zstd_size(&p).unwrap(), data.len() as u64);
        let mut back = Vec::new();
        for j in ZstdJobs::open(&p, data.len() as u64, 0).unwrap() {
            match j.unwrap() {
                Job::Raw { buf, lead, len, .. } => {
                    back.extend_from_slice(&buf.as_slice()[lead..lead + len])
                }
                _ => panic!(),
            }
        }
        assert_eq!(back, data);
        let first = ZstdJobs::open(&p, data.len() as u64, 100)
            .unwrap()
            .next()
            .unwrap();
        match first.unwrap() {
            Job::Raw {
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

    #[test]
    fn truncated_zstd_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.zst");
        let data = vec![7u8; 100_000];
        std::fs::write(&p, zstd::encode_all(&data[..], 1).unwrap()).unwrap();
        let e = ZstdJobs::open(&p, 200_000, 0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("offset 100000"), "{e}");
    }
}
