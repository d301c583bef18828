//! Where an image comes from, what we know about it up front ([`ImageInfo`]), and the ordered
//! stream of verified pieces it yields ([`open_stream`]), starting at any piece boundary.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;
use std::sync::Arc;

use image_store::Store;
use image_store::read::{self, ReadJob};
use image_store::source::SourceFormat;
use image_store::{Hints, LoadedImage, SignatureStatus, StoreError};
use serde::Serialize;

use crate::decode::{self, Item, Work};
use crate::error::ImagerError;
use crate::reader::{self, DecodedJobs, RawJobs, src_err};
use crate::writer::BIG_HOLE;

/// Jobs the decode pool may hold at once (each a span of about 4 MiB).
pub const DECODE_DEPTH: usize = 8;

/// The image to write. (The variants' sizes differ, but there is one per job: no point boxing.)
#[allow(clippy::large_enum_variant)]
pub enum ImageSource {
    /// An image from the store (manifest loaded and signature checked by the caller).
    Stored {
        /// The store holding the chunks.
        store: Arc<Store>,
        /// The loaded manifest.
        image: LoadedImage,
    },
    /// A raw image file, or one compressed with zstd, gzip, xz or bzip2 (detected by content;
    /// one-off use, no stored hashes: the decoded bytes are hashed before they are written and
    /// read-back compares the disk with those hashes).
    File(PathBuf),
}

/// What is known about an image before writing it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Image name (store name, or the file name).
    pub name: String,
    /// Version (store images only).
    pub version: Option<String>,
    /// BLAKE3 hex of the manifest file (store images only).
    pub manifest_hash: Option<String>,
    /// Signature status as checked by the caller (store images only).
    pub signature: Option<SignatureStatus>,
    /// Size in bytes (`size_bytes` in JSON, as every size tek prints).
    #[serde(rename = "size_bytes")]
    pub size: u64,
    /// Logical sector size of the image's GPT, when it has one.
    pub gpt_sector: Option<u64>,
    /// How a one-off file is stored (`raw`, `zstd`, `gzip`, `xz`, `bzip2`); `size` is always
    /// the decoded size. `None` for store images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_format: Option<&'static str>,
    /// Manifest hints (empty for files).
    #[serde(skip)]
    pub hints: Hints,
    /// The manifest's GPT summary, with the partitions' probed filesystems and labels (store
    /// images only): the layout map is planned from it before anything is written.
    #[serde(skip)]
    pub gpt: Option<image_store::manifest::GptSummary>,
}

/// Decode workers: one per core (the store's chunks decompress in parallel).
pub fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Finds "EFI PART" at LBA 1 for 512- or 4096-byte sectors in the image's first bytes.
pub fn detect_gpt_sector(head: &[u8]) -> Option<u64> {
    [512usize, 4096]
        .into_iter()
        .find(|&s| head.len() >= s + 8 && &head[s..s + 8] == b"EFI PART")
        .map(|s| s as u64)
}

fn file_size(path: &Path) -> Result<u64, ImagerError> {
    let f = File::open(path).map_err(|e| src_err("opening image", path, 0, e))?;
    let md = f
        .metadata()
        .map_err(|e| src_err("reading metadata of image", path, 0, e))?;
    if md.is_file() {
        Ok(md.len())
    } else {
        crate::ioctl::get_size64(f.as_fd())
            .map_err(|e| src_err("getting size of image", path, 0, e))
    }
}

impl ImageSource {
    /// Looks at the source: size, name, GPT sector size, hints. A store image whose chunks are
    /// not all in the store (one stat each) is refused here, before any target is touched; a
    /// compressed file is decoded once end to end (see [`reader::scan_decoded`]).
    pub fn info(&self) -> Result<ImageInfo, ImagerError> {
        match self {
            ImageSource::Stored { image, .. } => {
                self.check_chunks()?;
                let m = &image.manifest;
                Ok(ImageInfo {
                    name: m.name.clone(),
                    version: Some(m.version.clone()),
                    manifest_hash: Some(image.manifest_hash.clone()),
                    signature: Some(image.signature.clone()),
                    size: m.size,
                    gpt_sector: m.gpt.as_ref().map(|g| g.logical_sector_size),
                    file_format: None,
                    hints: m.hints.clone(),
                    gpt: m.gpt.clone(),
                })
            }
            ImageSource::File(path) => {
                let format = reader::file_format(path)?;
                let mut head = vec![0u8; 8192];
                let (size, n) = if format == SourceFormat::Raw {
                    let mut f =
                        File::open(path).map_err(|e| src_err("opening image", path, 0, e))?;
                    let n = reader::read_full(&mut f, &mut head)
                        .map_err(|e| src_err("reading image", path, 0, e))?;
                    (file_size(path)?, n)
                } else {
                    reader::scan_decoded(path, &mut head)?
                };
                if size == 0 {
                    return Err(ImagerError::BadImage {
                        path: path.clone(),
                        reason: "image is empty".into(),
                    });
                }
                Ok(ImageInfo {
                    name: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    version: None,
                    manifest_hash: None,
                    signature: None,
                    size,
                    gpt_sector: detect_gpt_sector(&head[..n]),
                    file_format: Some(format.name()),
                    hints: Hints::default(),
                    gpt: None,
                })
            }
        }
    }

    /// Refuses a store image whose chunks are not all in the store (one stat per chunk, no
    /// read), naming them; nothing to check for a file.
    pub fn check_chunks(&self) -> Result<(), ImagerError> {
        if let ImageSource::Stored { store, image } = self {
            let m = &image.manifest;
            let absent = store.absent_chunks(m)?;
            if !absent.is_empty() {
                return Err(ImagerError::MissingChunks {
                    image: format!("{}@{}", m.name, m.version),
                    absent,
                });
            }
        }
        Ok(())
    }

    /// Starts reading and decoding from image offset `start`, which must be a piece boundary
    /// of an earlier stream (or 0). Pieces arrive in order; an error ends the stream.
    pub fn open_stream(&self, info: &ImageInfo, start: u64) -> Result<Receiver<Item>, ImagerError> {
        match self {
            ImageSource::Stored { store, image } => {
                let first = image
                    .manifest
                    .extents
                    .partition_point(|e| e.offset() + e.len() <= start);
                let extents = image.manifest.extents[first..].to_vec();
                let reader = store.clone();
                let jobs = read::plan(&extents, BIG_HOLE)
                    .into_iter()
                    .map(move |j| match j {
                        ReadJob::Hole { offset, len } => Ok(Work::Hole { offset, len }),
                        ReadJob::Run(r) => Ok(Work::Stored {
                            store: reader.clone(),
                            extents: extents[r].to_vec(),
                        }),
                    });
                let store = store.clone();
                // A chunk that fails its check is moved aside so the next job does not trip on
                // it again and `tek image verify` shows it.
                let on_error = move |e: &ImagerError| {
                    if let ImagerError::Store(
                        StoreError::HashMismatch { chunk, .. }
                        | StoreError::CorruptChunk { chunk, .. },
                    ) = e
                    {
                        if let Err(q) = store.quarantine(*chunk) {
                            tracing::warn!("quarantining chunk {chunk}: {q}");
                        }
                    }
                };
                Ok(decode::spawn(jobs, worker_count(), DECODE_DEPTH, on_error))
            }
            ImageSource::File(path) => {
                let workers = worker_count();
                if reader::file_format(path)? == SourceFormat::Raw {
                    let jobs = RawJobs::open(path, info.size, start)?;
                    Ok(decode::spawn(jobs, workers, DECODE_DEPTH, |_| {}))
                } else {
                    let jobs = DecodedJobs::open(path, info.size, start)?;
                    Ok(decode::spawn(jobs, workers, DECODE_DEPTH, |_| {}))
                }
            }
        }
    }
}

/// Reads a whole source into memory through the pipeline (tests and small images only).
#[cfg(test)]
pub fn read_all(src: &ImageSource) -> Result<Vec<u8>, ImagerError> {
    let info = src.info()?;
    let mut out = vec![0u8; info.size as usize];
    for item in src.open_stream(&info, 0)? {
        let piece = item.map_err(|e| ImagerError::BadImage {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        if let crate::span::Piece::Data(c) = &*piece {
            let o = c.offset() as usize;
            out[o..o + c.data().len()].copy_from_slice(c.data());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_detection() {
        let mut h = vec![0u8; 8192];
        assert_eq!(detect_gpt_sector(&h), None);
        h[4096..4104].copy_from_slice(b"EFI PART");
        assert_eq!(detect_gpt_sector(&h), Some(4096));
        h[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(detect_gpt_sector(&h), Some(512));
    }

    #[test]
    fn file_source_round_trips_every_format_decoded() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.img");
        let mut data = vec![0u8; 9 << 20];
        for (i, b) in data[3 << 20..5 << 20].iter_mut().enumerate() {
            *b = (i % 253) as u8 + 1;
        }
        std::fs::write(&raw, &data).unwrap();
        let zst = dir.path().join("a.img.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let gz = dir.path().join("a.img.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        std::fs::write(&gz, e.finish().unwrap()).unwrap();
        let xz = dir.path().join("a.img.xz");
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 0);
        e.write_all(&data).unwrap();
        std::fs::write(&xz, e.finish().unwrap()).unwrap();
        let bz = dir.path().join("a.img.bz2");
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(&data).unwrap();
        std::fs::write(&bz, e.finish().unwrap()).unwrap();
        for (p, format) in [
            (raw, "raw"),
            (zst, "zstd"),
            (gz, "gzip"),
            (xz, "xz"),
            (bz, "bzip2"),
        ] {
            let src = ImageSource::File(p.clone());
            let info = src.info().unwrap();
            assert_eq!(info.size, data.len() as u64, "{format}");
            assert_eq!(info.file_format, Some(format));
            assert!(read_all(&src).unwrap() == data, "{}", p.display());
        }
    }

    #[test]
    fn empty_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.img");
        std::fs::write(&p, b"").unwrap();
        let e = ImageSource::File(p).info().unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
