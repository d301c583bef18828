//! Reading images back: a parallel, ordered piece pipeline, and on it `export` (byte-identical raw
//! image) and `verify` (every chunk present, decompresses and hashes right; deep: whole-image
//! hashes recomputed).
//!
//! Both read through [`crate::read`]: workers on every core read, decompress and hash-check the
//! chunks, and the pieces come back in image order through bounded channels, so a slow output
//! (a USB stick, a pipe) holds the readers back instead of buffering the image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use serde::Serialize;
use sha2::Digest;

use crate::chunk::{ChunkId, Piece};
use crate::error::StoreError;
use crate::export_io::{Watched, ZeroFill};
use crate::image_ref::ImageRef;
use crate::manifest::{Extent, Manifest};
use crate::read::Reader;
use crate::store::Store;

/// Chunks verified so far in a run over several images: chunk id -> the image (`name@version`)
/// under which it was read and found good, so a later image names where its chunks were checked.
pub type CheckedChunks = HashMap<ChunkId, String>;

/// Chunks of an image that were checked under an earlier image of the same run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlreadyChecked {
    /// `name@version` of the earlier image.
    pub image: String,
    /// How many of this image's distinct chunks.
    pub chunks: u64,
}

/// Result of verifying one image.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// `name@version`.
    pub image: String,
    /// Distinct chunks the image references.
    pub chunks: u64,
    /// Distinct chunks read and checked by this call.
    pub chunks_checked: u64,
    /// Distinct chunks not read again because an earlier image of the run checked them.
    pub already_checked: Vec<AlreadyChecked>,
    /// Bad chunks (each a [`StoreError::BadChunk`] message naming images and offsets).
    pub bad_chunks: Vec<String>,
    /// Whole-image hash problems found by a deep verify.
    pub hash_errors: Vec<String>,
    /// Whether the whole-image hashes were recomputed.
    pub deep: bool,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.bad_chunks.is_empty() && self.hash_errors.is_empty()
    }

    /// What was checked, in words: "412 chunks checked", "412 chunks, all already checked for
    /// a@1", "500 chunks: 88 checked, 412 already checked for a@1"; plus the whole-image
    /// hashes when deep.
    pub fn checked_summary(&self) -> String {
        let earlier: u64 = self.already_checked.iter().map(|a| a.chunks).sum();
        let names = self
            .already_checked
            .iter()
            .map(|a| {
                if earlier == a.chunks {
                    a.image.clone()
                } else {
                    format!("{} for {}", a.chunks, a.image)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let chunks = if earlier == 0 {
            format!("{} chunks checked", self.chunks_checked)
        } else if self.chunks_checked == 0 {
            format!("{} chunks, all already checked for {names}", self.chunks)
        } else if self.already_checked.len() == 1 {
            format!(
                "{} chunks: {} checked, {earlier} already checked for {names}",
                self.chunks, self.chunks_checked
            )
        } else {
            format!(
                "{} chunks: {} checked, {earlier} already checked ({names})",
                self.chunks, self.chunks_checked
            )
        };
        if !self.deep {
            chunks
        } else if self.hash_errors.is_empty() && self.bad_chunks.is_empty() {
            format!("{chunks}, whole-image SHA-256 and BLAKE3 match")
        } else if self.bad_chunks.is_empty() {
            format!("{chunks}, whole-image hashes DIFFER")
        } else {
            format!("{chunks}, whole-image hashes not comparable (bad chunks)")
        }
    }
}

impl Store {
    /// Writes the raw image to `out` (which must not exist), byte-identical to the imported one:
    /// every chunk is hash-checked and the whole file's SHA-256 and BLAKE3 are compared with the
    /// manifest. Holes are left sparse. On any error the partial file is removed.
    pub fn export(&self, image: &ImageRef, out: &Path) -> Result<Manifest, StoreError> {
        self.export_with(image, out, |_, _| {})
    }

    /// [`Store::export`], calling `progress(position, size)` as the export moves through the
    /// image (`tek image export`'s bar).
    pub fn export_with(
        &self,
        image: &ImageRef,
        out: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Manifest, StoreError> {
        let (m, _) = self.load_manifest(image)?;
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(|e| StoreError::io("creating export file", out, e))?;
        let res = self
            .export_to(
                &m,
                &mut Watched::new(&mut f, m.size, progress),
                out,
                Reader::default(),
            )
            .and_then(|()| {
                f.sync_all()
                    .map_err(|e| StoreError::io("writing export", out, e))
            });
        if res.is_err() {
            let _ = std::fs::remove_file(out);
        }
        res.map(|_| m)
    }

    /// Streams the raw image to `w`, which cannot seek (a pipe: holes are written as zeros),
    /// with the same checks as [`Store::export`]; `name` names `w` in errors. What `w` got
    /// before a failure stays there: the error (and the caller's exit status) is what tells the
    /// reader that the stream is not the image.
    pub fn export_stream<W: Write>(
        &self,
        image: &ImageRef,
        w: W,
        name: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Manifest, StoreError> {
        let (m, _) = self.load_manifest(image)?;
        let mut out = Watched::new(ZeroFill::new(w), m.size, progress);
        self.export_to(&m, &mut out, name, Reader::default())?;
        out.flush()
            .map_err(|e| StoreError::io("writing export", name, e))?;
        Ok(m)
    }

    /// Writes image `m` to `f` (named `out` in errors; from its current position, holes skipped
    /// with a seek, then `set_len` to the image size), reading with `reader`; checks every chunk
    /// and then the whole-image hashes. The first bad chunk stops the export and is reported
    /// (quarantined). Memory stays within [`Reader::bound_bytes`] however slow `f` is.
    pub fn export_to<W: Write + Seek + SetLen>(
        &self,
        m: &Manifest,
        f: &mut W,
        out: &Path,
        reader: Reader,
    ) -> Result<(), StoreError> {
        let mut sha = sha2::Sha256::new();
        let mut b3 = blake3::Hasher::new();
        let zeros = vec![0u8; 1 << 20];
        let wr = |e| StoreError::io("writing export", out, e);
        for p in self.pieces(m.extents.clone(), reader) {
            match p.map_err(|e| self.report_bad_chunk(e))? {
                Piece::Data(c) => {
                    sha.update(c.data());
                    b3.update(c.data());
                    f.write_all(c.data()).map_err(wr)?;
                }
                Piece::Hole { len, .. } => {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        sha.update(&zeros[..n]);
                        b3.update(&zeros[..n]);
                        left -= n as u64;
                    }
                    f.seek(SeekFrom::Current(len as i64)).map_err(wr)?;
                }
            }
        }
        f.set_len(m.size).map_err(wr)?;
        check_hashes(
            m,
            hex::encode(sha.finalize()),
            b3.finalize().to_hex().to_string(),
        )
        .map_err(|mut v| v.remove(0))
    }

    /// Verifies one image. `checked` holds the chunks already verified by an earlier image of
    /// a `--all` run (and which image): they are not read again unless `deep`, and the report
    /// says where they were checked. Chunks found good are added. Bad chunks are quarantined.
    pub fn verify(
        &self,
        image: &ImageRef,
        deep: bool,
        checked: &mut CheckedChunks,
    ) -> Result<VerifyReport, StoreError> {
        let (m, _) = self.load_manifest(image)?;
        let mut distinct = HashSet::new();
        let mut earlier: BTreeMap<String, u64> = BTreeMap::new();
        for e in &m.extents {
            if let Extent::Chunk { id, .. } = e
                && distinct.insert(*id)
                && !deep
                && let Some(under) = checked.get(id)
            {
                *earlier.entry(under.clone()).or_default() += 1;
            }
        }
        let mut rep = VerifyReport {
            image: image.to_string(),
            chunks: distinct.len() as u64,
            chunks_checked: 0,
            already_checked: earlier
                .into_iter()
                .map(|(image, chunks)| AlreadyChecked { image, chunks })
                .collect(),
            bad_chunks: Vec::new(),
            hash_errors: Vec::new(),
            deep,
        };
        let extents: Vec<Extent> = if deep {
            m.extents.clone()
        } else {
            let mut mine = HashSet::new();
            m.extents
                .iter()
                .filter(|e| match e {
                    Extent::Chunk { id, .. } => !checked.contains_key(id) && mine.insert(*id),
                    Extent::Hole { .. } => false,
                })
                .cloned()
                .collect()
        };
        let mut counted = HashSet::new();
        let mut sha = sha2::Sha256::new();
        let mut b3 = blake3::Hasher::new();
        let mut hashes_valid = true;
        let mut reported = HashSet::new();
        for p in self.pieces(extents, Reader::default()) {
            match p {
                Ok(Piece::Data(c)) => {
                    if counted.insert(c.id()) {
                        rep.chunks_checked += 1;
                    }
                    checked.entry(c.id()).or_insert_with(|| image.to_string());
                    if deep {
                        sha.update(c.data());
                        b3.update(c.data());
                    }
                }
                Ok(Piece::Hole { len, .. }) => {
                    let zeros = [0u8; 65536];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        sha.update(&zeros[..n]);
                        b3.update(&zeros[..n]);
                        left -= n as u64;
                    }
                }
                Err(e) => {
                    hashes_valid = false;
                    if let Some((id, _)) = e.bad_chunk() {
                        if counted.insert(id) {
                            rep.chunks_checked += 1;
                        }
                        if !reported.insert(id) {
                            continue;
                        }
                    }
                    rep.bad_chunks.push(self.report_bad_chunk(e).to_string());
                }
            }
        }
        if deep && hashes_valid {
            let sha = hex::encode(sha.finalize());
            let b3 = b3.finalize().to_hex().to_string();
            if let Err(errs) = check_hashes(&m, sha, b3) {
                rep.hash_errors = errs.iter().map(|e| e.to_string()).collect();
            }
        }
        Ok(rep)
    }
}

/// An export output that can be cut or extended to the image size (a file; a test's slow sink).
pub trait SetLen {
    /// Sets the output's length to `len` bytes.
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
}

impl SetLen for File {
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }
}

impl<T: SetLen> SetLen for &mut T {
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        (**self).set_len(len)
    }
}

fn check_hashes(m: &Manifest, sha: String, b3: String) -> Result<(), Vec<StoreError>> {
    let image = format!("{}@{}", m.name, m.version);
    let mut errs = Vec::new();
    for (algorithm, expected, actual) in [("sha256", &m.sha256, sha), ("blake3", &m.blake3, b3)] {
        if *expected != actual {
            errs.push(StoreError::ImageHashMismatch {
                image: image.clone(),
                algorithm,
                expected: expected.clone(),
                actual,
            });
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}
