//! Reading images back: a parallel, ordered piece pipeline, and on it `export` (byte-identical raw
//! image) and `verify` (every chunk present, decompresses and hashes right; deep: whole-image
//! hashes recomputed).
//!
//! One reader thread reads compressed chunk files in image order, a pool decompresses and
//! hash-checks them (both cores), and the caller receives the results back in image order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crossbeam_channel::{bounded, unbounded};
use serde::Serialize;
use sha2::Digest;

use crate::chunk::{ChunkId, CompressedChunk, Piece};
use crate::error::StoreError;
use crate::image_ref::ImageRef;
use crate::manifest::{Extent, Manifest};
use crate::store::Store;

enum Job {
    Chunk(CompressedChunk),
    Hole { offset: u64, len: u64 },
    Failed(StoreError),
}

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
    /// Walks `extents` in order, decompressing and verifying chunks on `threads` workers, and
    /// hands each piece (or its error) to `f` in image order. `f` returning an error stops.
    pub fn for_each_piece(
        &self,
        extents: &[Extent],
        threads: usize,
        mut f: impl FnMut(Result<Piece, StoreError>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (job_tx, job_rx) = bounded::<(usize, Job)>(32);
        let (res_tx, res_rx) = unbounded::<(usize, Result<Piece, StoreError>)>();
        std::thread::scope(|s| {
            s.spawn(move || {
                for (i, e) in extents.iter().enumerate() {
                    let job = match *e {
                        Extent::Hole { offset, len } => Job::Hole { offset, len },
                        Extent::Chunk { offset, len, id } => {
                            match self.read_compressed(id, offset, len) {
                                Ok(c) => Job::Chunk(c),
                                Err(e) => Job::Failed(e),
                            }
                        }
                    };
                    if job_tx.send((i, job)).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..threads.max(1) {
                let (rx, tx) = (job_rx.clone(), res_tx.clone());
                s.spawn(move || {
                    for (i, job) in rx {
                        let r = match job {
                            Job::Chunk(c) => c.decompress_verify().map(Piece::Data),
                            Job::Hole { offset, len } => Ok(Piece::Hole { offset, len }),
                            Job::Failed(e) => Err(e),
                        };
                        if tx.send((i, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop((job_rx, res_tx));
            let mut waiting = BTreeMap::new();
            let mut next = 0usize;
            for (i, r) in &res_rx {
                waiting.insert(i, r);
                while let Some(r) = waiting.remove(&next) {
                    next += 1;
                    // Dropping res_rx on error makes the workers and then the reader stop.
                    f(r)?;
                }
            }
            Ok(())
        })
    }

    /// Writes the raw image to `out` (which must not exist), byte-identical to the imported one:
    /// every chunk is hash-checked and the whole file's SHA-256 and BLAKE3 are compared with the
    /// manifest. Holes are left sparse. On any error the partial file is removed.
    pub fn export(&self, image: &ImageRef, out: &Path) -> Result<Manifest, StoreError> {
        let (m, _) = self.load_manifest(image)?;
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(|e| StoreError::io("creating export file", out, e))?;
        let res = self.export_into(&m, &mut f, out);
        if res.is_err() {
            let _ = std::fs::remove_file(out);
        }
        res.map(|_| m)
    }

    fn export_into(&self, m: &Manifest, f: &mut File, out: &Path) -> Result<(), StoreError> {
        let mut sha = sha2::Sha256::new();
        let mut b3 = blake3::Hasher::new();
        let zeros = vec![0u8; 1 << 20];
        let wr = |e| StoreError::io("writing export", out, e);
        self.for_each_piece(&m.extents, threads(), |p| {
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
            Ok(())
        })?;
        f.set_len(m.size).map_err(wr)?;
        f.sync_all().map_err(wr)?;
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
        self.for_each_piece(&extents, threads(), |p| {
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
                            return Ok(());
                        }
                    }
                    rep.bad_chunks.push(self.report_bad_chunk(e).to_string());
                }
            }
            Ok(())
        })?;
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

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
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
