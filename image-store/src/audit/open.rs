//! Where an audit reads from: a raw image file, or a stored image through its manifest.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::window::StoreReader;
use super::{AuditOptions, AuditReport, audit_image};
use crate::error::StoreError;
use crate::gpt_summary::{EDGE, SparseImage, summarize};
use crate::image_ref::ImageRef;
use crate::manifest::{GptSummary, Manifest};
use crate::store::Store;

/// The GPT of any seekable image (the same parser, and bounds, as import uses).
pub fn gpt_of<R: Read + Seek>(r: &mut R, size: u64) -> std::io::Result<Option<GptSummary>> {
    let e = (EDGE as u64).min(size);
    let mut head = vec![0u8; e as usize];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut head)?;
    let mut tail = vec![0u8; e as usize];
    r.seek(SeekFrom::Start(size - e))?;
    r.read_exact(&mut tail)?;
    Ok(summarize(SparseImage::new(head, tail, size)))
}

/// Audits a raw (uncompressed) image file.
pub fn audit_file(path: &Path, opts: &AuditOptions) -> Result<AuditReport, StoreError> {
    let mut f = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| StoreError::io("sizing", path, e))?;
    let gpt = gpt_of(&mut f, size).map_err(|e| StoreError::io("reading the GPT of", path, e))?;
    Ok(audit_image(f, size, gpt.as_ref(), opts))
}

impl Store {
    /// Audits a stored image by reading its chunks through the manifest (verified, a few cached;
    /// nothing exported).
    pub fn audit_manifest(&self, manifest: &Manifest, opts: &AuditOptions) -> AuditReport {
        let m = Arc::new(manifest.clone());
        let gpt = m.gpt.clone();
        audit_image(
            StoreReader::new(self.clone(), m.clone()),
            m.size,
            gpt.as_ref(),
            opts,
        )
    }

    /// Records a maintainer's acceptance of one finding (`tek image accept`) in the manifest,
    /// re-signed as `sign` says (under the manifest lock, like every manifest edit). Returns
    /// the audit as it now stands.
    pub fn accept_finding(
        &self,
        image: &ImageRef,
        finding: &str,
        reason: &str,
        sign: crate::edit::Resign<'_>,
    ) -> Result<AuditReport, StoreError> {
        let _edit = crate::lock::ManifestLock::take(self.root())?;
        let (mut m, _) = self.load_manifest(image)?;
        let no_such = |audited| StoreError::NoSuchFinding {
            image: image.to_string(),
            finding: finding.to_string(),
            audited,
        };
        let audit = m.audit.as_mut().ok_or_else(|| no_such(false))?;
        if !audit.findings.iter().any(|f| f.id == finding) {
            return Err(no_such(true));
        }
        audit.accepted.retain(|a| a.finding != finding);
        audit.accepted.push(super::Acceptance {
            finding: finding.to_string(),
            reason: reason.to_string(),
            at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        let report = audit.clone();
        self.commit_edited_audit(image, &m, sign)?;
        Ok(report)
    }

    /// Audits a stored image again with today's rules and records the new verdict in its
    /// manifest (`tek image audit NAME@VERSION --record`), re-signed as `sign` says; acceptances
    /// of findings the new audit still makes are kept, the others dropped. The audit runs
    /// without the manifest lock (it reads chunks, which no edit changes); the edit itself is
    /// made under it, on the manifest as it is then.
    pub fn record_audit(
        &self,
        image: &ImageRef,
        opts: &AuditOptions,
        sign: crate::edit::Resign<'_>,
    ) -> Result<AuditReport, StoreError> {
        let mut fresh = self.audit(image, opts)?;
        let _edit = crate::lock::ManifestLock::take(self.root())?;
        let (mut m, _) = self.load_manifest(image)?;
        if let Some(old) = &m.audit {
            fresh.accepted = old
                .accepted
                .iter()
                .filter(|a| fresh.findings.iter().any(|f| f.id == a.finding))
                .cloned()
                .collect();
        }
        m.audit = Some(fresh.clone());
        self.commit_edited_audit(image, &m, sign)?;
        Ok(fresh)
    }

    /// Commits a manifest whose audit was edited (the caller holds the manifest lock): a signed
    /// image must be re-signed (`Resign::With`) or explicitly unsigned.
    fn commit_edited_audit(
        &self,
        image: &ImageRef,
        m: &Manifest,
        sign: crate::edit::Resign<'_>,
    ) -> Result<(), StoreError> {
        let signed = self.signature_path(image).exists();
        let key = match sign {
            crate::edit::Resign::With(k) => Some(k),
            crate::edit::Resign::Unsign => None,
            crate::edit::Resign::Keep if signed => {
                return Err(StoreError::WouldUnsign {
                    image: image.to_string(),
                });
            }
            crate::edit::Resign::Keep => None,
        };
        let session = crate::lock::ImportSession::begin(self.root())?;
        self.commit_manifest(m, key, session.tmp_dir())
    }

    /// Audits a stored image.
    pub fn audit(&self, image: &ImageRef, opts: &AuditOptions) -> Result<AuditReport, StoreError> {
        let (m, _) = self.load_manifest(image)?;
        Ok(self.audit_manifest(&m, opts))
    }
}
