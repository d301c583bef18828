//! Opening an image file (for import, and for `tek write` of a one-off file): a raw image, or one
//! compressed with zstd, gzip, xz or bzip2, told apart by their magic bytes (never by the file
//! name). A file in a container or compression format tek cannot decode (lz4, zip, 7z, qcow2, ...)
//! is refused by name rather than taken for a raw image. Decoder errors (truncated or corrupt
//! streams) become [`StoreError::Decompress`] naming the file, the format and how far decoding got.
//!
//! Decompression bombs are refused by [`DecodeLimits`], checked as the stream is read: the size a
//! zstd frame header declares, before anything is decoded; every decoded byte against the maximum
//! image size; and, past [`DecodeLimits::ratio_after`] decoded bytes, the decoded/compressed
//! ratio. The numbers are explained in ARCHITECTURE.md ("Decompression bombs"); other decoders of
//! image files (the imager's `tek write FILE`) can reuse [`DecodeLimits::check`] and
//! [`CountingReader`].

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::StoreError;

/// What a compressed source may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest image accepted, in decoded bytes (default [`DecodeLimits::DEFAULT_MAX_SIZE`]).
    pub max_size: u64,
    /// Largest decoded/compressed ratio accepted once `ratio_after` bytes have been decoded
    /// (default [`DecodeLimits::DEFAULT_MAX_RATIO`]; 0 turns the ratio check off).
    pub max_ratio: u64,
    /// Decoded bytes before the ratio is checked (default 1 GiB).
    pub ratio_after: u64,
}

impl DecodeLimits {
    /// 64 TiB: larger than any disk a bench writes today, small enough to stop a stream that
    /// would decode forever.
    pub const DEFAULT_MAX_SIZE: u64 = 64 << 40;
    /// 8192:1. zstd turns 128 KiB of zeros into a 4-byte block (32768:1, its limit), so an
    /// all-zero stream is far above this; xz reaches about 6800:1 on zeros and gzip 1032:1, so
    /// for those the ratio never trips and their output per input byte is bounded by the format.
    /// A real image carries an OS: a 1 TiB image would need under ~100 MB of compressed data
    /// to exceed 8192:1.
    pub const DEFAULT_MAX_RATIO: u64 = 8192;
    /// 1 GiB decoded before the ratio counts: the first GiB of a real image (mostly-empty ESP,
    /// alignment gaps) can be very compressible; a bomb is stopped after about a second.
    pub const DEFAULT_RATIO_AFTER: u64 = 1 << 30;

    /// Checks `decoded` bytes produced from `compressed` input bytes so far.
    pub fn check(&self, decoded: u64, compressed: u64) -> Result<(), LimitExceeded> {
        if decoded > self.max_size {
            return Err(LimitExceeded::Size {
                decoded,
                limit: self.max_size,
            });
        }
        if self.max_ratio > 0
            && decoded > self.ratio_after
            && decoded / compressed.max(1) > self.max_ratio
        {
            return Err(LimitExceeded::Ratio {
                decoded,
                compressed,
                limit: self.max_ratio,
            });
        }
        Ok(())
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_size: Self::DEFAULT_MAX_SIZE,
            max_ratio: Self::DEFAULT_MAX_RATIO,
            ratio_after: Self::DEFAULT_RATIO_AFTER,
        }
    }
}

/// Which limit a stream crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// More decoded bytes than the maximum image size.
    #[error("decodes to more than {limit} bytes, the maximum image size (at {decoded} bytes)")]
    Size {
        /// Decoded bytes so far.
        decoded: u64,
        /// The maximum image size.
        limit: u64,
    },
    /// The header declares more than the maximum image size.
    #[error("declares {declared} bytes, more than the maximum image size of {limit} bytes")]
    Declared {
        /// The size its header declares.
        declared: u64,
        /// The maximum image size.
        limit: u64,
    },
    /// Expands more than the maximum ratio.
    #[error(
        "expanded {compressed} bytes into {decoded} (more than {limit}:1): a decompression bomb, \
         or an almost empty image (raise the ratio limit if it is one)"
    )]
    Ratio {
        /// Decoded bytes so far.
        decoded: u64,
        /// Compressed bytes read so far.
        compressed: u64,
        /// The maximum ratio.
        limit: u64,
    },
}

/// A reader that counts the bytes read through it (the compressed side of a decoder).
#[derive(Debug)]
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`; `count` is shared with whoever checks the limits.
    pub fn new(inner: R) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            CountingReader {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The container format of an import source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Uncompressed raw disk image.
    Raw,
    /// zstd stream (one or more frames).
    Zstd,
    /// gzip stream (one or more members).
    Gzip,
    /// xz stream.
    Xz,
    /// bzip2 stream (one or more streams).
    Bzip2,
}

/// Formats recognised by their magic bytes that tek does not decode: writing or importing such a
/// file as a raw image would put the container's bytes on the disk.
const UNDECODABLE: &[(&[u8], &str)] = &[
    (&[0x04, 0x22, 0x4D, 0x18], "lz4"),
    (b"LZIP", "lzip"),
    (&[0x1F, 0x9D], "compress (.Z)"),
    (b"PK\x03\x04", "zip"),
    (&[b'7', b'z', 0xBC, 0xAF, 0x27, 0x1C], "7z"),
    (b"QFI\xFB", "qcow2"),
    (b"KDMV", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vhd"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>", "vdi"),
];

/// The name of an undecodable format the bytes start with, if any.
pub fn undecodable_format(magic: &[u8]) -> Option<&'static str> {
    UNDECODABLE
        .iter()
        .find(|(m, _)| magic.starts_with(m))
        .map(|(_, name)| *name)
}

/// Bytes of a file's start that [`SourceFormat::detect`] and [`undecodable_format`] look at.
pub const MAGIC_LEN: usize = 64;

impl SourceFormat {
    /// Detects the format from the first bytes of the file.
    pub fn detect(magic: &[u8]) -> SourceFormat {
        if magic.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            SourceFormat::Zstd
        } else if magic.starts_with(&[0x1F, 0x8B]) {
            SourceFormat::Gzip
        } else if magic.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
            SourceFormat::Xz
        } else if magic.len() >= 10
            && magic.starts_with(b"BZh")
            && (b'1'..=b'9').contains(&magic[3])
            && (magic[4..10] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
                || magic[4..10] == [0x17, 0x72, 0x45, 0x38, 0x50, 0x90])
        {
            // "BZh" + block size + the first block's (or, for empty input, the end-of-stream)
            // magic: three letters alone could start a raw image.
            SourceFormat::Bzip2
        } else {
            SourceFormat::Raw
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Raw => "raw",
            SourceFormat::Zstd => "zstd",
            SourceFormat::Gzip => "gzip",
            SourceFormat::Xz => "xz",
            SourceFormat::Bzip2 => "bzip2",
        }
    }
}

/// An opened source: a reader of the raw image bytes.
pub struct Source {
    path: PathBuf,
    format: SourceFormat,
    inner: Box<dyn Read + Send>,
    produced: u64,
    /// Compressed bytes read so far.
    consumed: Arc<AtomicU64>,
    limits: DecodeLimits,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({}, {})", self.path.display(), self.format.name())
    }
}

impl Source {
    /// Opens `path` with the default [`DecodeLimits`].
    pub fn open(path: &Path) -> Result<Source, StoreError> {
        Self::open_with(path, DecodeLimits::default())
    }

    /// Opens `path`, refusing missing files, directories, empty files and a zstd frame that
    /// declares more than `limits.max_size`.
    pub fn open_with(path: &Path, limits: DecodeLimits) -> Result<Source, StoreError> {
        let bad = |reason: &str| StoreError::BadSource {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad("no such file"),
            _ => StoreError::io("opening image", path, e),
        })?;
        if meta.is_dir() {
            return Err(bad("is a directory, expected an image file"));
        }
        if meta.is_file() && meta.len() > limits.max_size {
            return Err(StoreError::ExpansionLimit {
                path: path.to_path_buf(),
                format: SourceFormat::Raw.name(),
                limit: LimitExceeded::Declared {
                    declared: meta.len(),
                    limit: limits.max_size,
                },
            });
        }
        let mut f = File::open(path).map_err(|e| StoreError::io("opening image", path, e))?;
        // At least 18 bytes: the longest zstd frame header, which may declare the content size.
        let mut magic = [0u8; MAGIC_LEN];
        let n = read_full(&mut f, &mut magic).map_err(|e| StoreError::io("reading", path, e))?;
        if n == 0 {
            return Err(bad("is empty"));
        }
        if let Some(name) = undecodable_format(&magic[..n]) {
            return Err(bad(&format!(
                "is a {name} file, which tek cannot decode; convert it to a raw image \
                 (or zstd, gzip, xz, bzip2) first"
            )));
        }
        let format = SourceFormat::detect(&magic[..n]);
        if format == SourceFormat::Zstd
            && let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(&magic[..n])
            && declared > limits.max_size
        {
            return Err(StoreError::ExpansionLimit {
                path: path.to_path_buf(),
                format: format.name(),
                limit: LimitExceeded::Declared {
                    declared,
                    limit: limits.max_size,
                },
            });
        }
        let (head, consumed) =
            CountingReader::new(std::io::Cursor::new(magic[..n].to_vec()).chain(f));
        let inner: Box<dyn Read + Send> = match format {
            SourceFormat::Raw => Box::new(head),
            SourceFormat::Zstd => Box::new(
                zstd::stream::read::Decoder::new(head)
                    .map_err(|e| StoreError::io("starting zstd decoder for", path, e))?,
            ),
            SourceFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(head))),
            SourceFormat::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(head)),
            SourceFormat::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(head))),
        };
        Ok(Source {
            path: path.to_path_buf(),
            format,
            inner,
            produced: 0,
            consumed,
            limits,
        })
    }

    /// Zeroes `ranges` (absolute offsets) of the decoded stream from here on, hashing the
    /// original bytes first (`--scrub-free`); the slot holds them once the stream ended.
    pub fn zero_ranges(
        &mut self,
        ranges: crate::audit::free::Ranges,
    ) -> std::sync::Arc<std::sync::Mutex<Option<crate::scrub::Scrubbed>>> {
        let inner = std::mem::replace(&mut self.inner, Box::new(std::io::empty()));
        let (z, slot) = crate::scrub::ZeroRanges::new(inner, ranges);
        self.inner = Box::new(z);
        slot
    }

    /// The detected format.
    pub fn format(&self) -> SourceFormat {
        self.format
    }

    /// Fills `buf` as far as the stream allows; returns the count (short only at end of stream).
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let n = read_full(&mut self.inner, buf).map_err(|e| {
            if self.format == SourceFormat::Raw {
                StoreError::io("reading image", &self.path, e)
            } else {
                StoreError::Decompress {
                    path: self.path.clone(),
                    format: self.format.name(),
                    offset: self.produced,
                    reason: e.to_string(),
                }
            }
        })?;
        self.produced += n as u64;
        if self.format != SourceFormat::Raw {
            let consumed = self.consumed.load(Ordering::Relaxed);
            self.limits
                .check(self.produced, consumed)
                .map_err(|limit| StoreError::ExpansionLimit {
                    path: self.path.clone(),
                    format: self.format.name(),
                    limit,
                })?;
        } else if self.produced > self.limits.max_size {
            return Err(StoreError::ExpansionLimit {
                path: self.path.clone(),
                format: self.format.name(),
                limit: LimitExceeded::Size {
                    decoded: self.produced,
                    limit: self.limits.max_size,
                },
            });
        }
        Ok(n)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn read_all(p: &Path) -> Result<Vec<u8>, StoreError> {
        let mut s = Source::open(p)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.fill(&mut buf)?;
            out.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                return Ok(out);
            }
        }
    }

    fn compressed(kind: &str, data: &[u8]) -> Vec<u8> {
        match kind {
            "zstd" => zstd::encode_all(data, 3).unwrap(),
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "xz" => {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "bzip2" => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            _ => data.to_vec(),
        }
    }

    #[test]
    fn detects_and_decodes_each_format() {
        let d = tempfile::tempdir().unwrap();
        let data = sample();
        for kind in ["raw", "zstd", "gzip", "xz", "bzip2"] {
            let p = d.path().join(format!("img-{kind}.bin"));
            std::fs::write(&p, compressed(kind, &data)).unwrap();
            assert_eq!(Source::open(&p).unwrap().format().name(), kind);
            assert_eq!(read_all(&p).unwrap(), data, "{kind}");
        }
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let d = tempfile::tempdir().unwrap();
        let data = sample();
        for kind in ["zstd", "gzip", "xz", "bzip2"] {
            let c = compressed(kind, &data);
            let p = d.path().join(format!("trunc-{kind}"));
            std::fs::write(&p, &c[..c.len() / 2]).unwrap();
            let e = read_all(&p).unwrap_err();
            assert!(matches!(e, StoreError::Decompress { .. }), "{kind}: {e}");
            let mut bad = c.clone();
            let mid = bad.len() / 2;
            for b in &mut bad[mid..mid + 64] {
                *b ^= 0x5a;
            }
            let p = d.path().join(format!("corrupt-{kind}"));
            std::fs::write(&p, &bad).unwrap();
            let e = read_all(&p).unwrap_err();
            assert!(matches!(e, StoreError::Decompress { .. }), "{kind}: {e}");
        }
    }

    #[test]
    fn concatenated_streams_decode_whole() {
        let d = tempfile::tempdir().unwrap();
        let data = sample();
        for kind in ["zstd", "gzip", "xz", "bzip2"] {
            let mut c = compressed(kind, &data[..data.len() / 3]);
            c.extend(compressed(kind, &data[data.len() / 3..]));
            let p = d.path().join(format!("cat-{kind}"));
            std::fs::write(&p, &c).unwrap();
            assert_eq!(read_all(&p).unwrap(), data, "{kind}");
        }
    }

    #[test]
    fn undecodable_formats_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        let mut lz4 = vec![0x04, 0x22, 0x4D, 0x18];
        lz4.extend(sample());
        std::fs::write(&p, &lz4).unwrap();
        let e = Source::open(&p).unwrap_err();
        assert!(matches!(e, StoreError::BadSource { .. }), "{e}");
        assert!(e.to_string().contains("lz4 file"), "{e}");
        // "BZh" alone is not bzip2: a raw image may start with it.
        let mut raw = b"BZh9 not a bzip2 stream".to_vec();
        raw.extend(sample());
        std::fs::write(&p, &raw).unwrap();
        assert_eq!(Source::open(&p).unwrap().format(), SourceFormat::Raw);
        assert_eq!(read_all(&p).unwrap(), raw);
    }

    #[test]
    fn refuses_missing_dir_and_empty() {
        let d = tempfile::tempdir().unwrap();
        let e = Source::open(&d.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        let e = Source::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        std::fs::write(d.path().join("empty"), b"").unwrap();
        let e = Source::open(&d.path().join("empty")).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
