//! Opening an import source: a raw image, or one compressed with zstd, gzip or xz, told apart by
//! their magic bytes (never by the file name). Decoder errors (truncated or corrupt streams) become
//! [`StoreError::Decompress`] naming the file, the format and how far decoding got.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

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
}

impl SourceFormat {
    /// Detects the format from the first bytes of the file.
    pub fn detect(magic: &[u8]) -> SourceFormat {
        if magic.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            SourceFormat::Zstd
        } else if magic.starts_with(&[0x1F, 0x8B]) {
            SourceFormat::Gzip
        } else if magic.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
            SourceFormat::Xz
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
        }
    }
}

/// An opened source: a reader of the raw image bytes.
pub struct Source {
    path: PathBuf,
    format: SourceFormat,
    inner: Box<dyn Read + Send>,
    produced: u64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({}, {})", self.path.display(), self.format.name())
    }
}

impl Source {
    /// Opens `path`, refusing missing files, directories and empty files.
    pub fn open(path: &Path) -> Result<Source, StoreError> {
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
        let mut f = File::open(path).map_err(|e| StoreError::io("opening image", path, e))?;
        let mut magic = [0u8; 8];
        let n = read_full(&mut f, &mut magic).map_err(|e| StoreError::io("reading", path, e))?;
        if n == 0 {
            return Err(bad("is empty"));
        }
        let format = SourceFormat::detect(&magic[..n]);
        let head = std::io::Cursor::new(magic[..n].to_vec()).chain(f);
        let inner: Box<dyn Read + Send> = match format {
            SourceFormat::Raw => Box::new(head),
            SourceFormat::Zstd => Box::new(
                zstd::stream::read::Decoder::new(head)
                    .map_err(|e| StoreError::io("starting zstd decoder for", path, e))?,
            ),
            SourceFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(head))),
            SourceFormat::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(head)),
        };
        Ok(Source {
            path: path.to_path_buf(),
            format,
            inner,
            produced: 0,
        })
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
            _ => data.to_vec(),
        }
    }

    #[test]
    fn detects_and_decodes_each_format() {
        let d = tempfile::tempdir().unwrap();
        let data = sample();
        for kind in ["raw", "zstd", "gzip", "xz"] {
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
        for kind in ["zstd", "gzip", "xz"] {
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
