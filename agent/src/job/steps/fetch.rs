//! Where a job's write reads its image: the local store, or the bench's library while it
//! arrives (`library/ondemand.rs`); and what the record says of it.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use image_store::{ImageRef, LoadedImage};

use super::RealSteps;
use crate::job::Job;
use crate::job::runner::StepError;
use crate::library::evict;
use crate::library::ondemand::Origin;

impl RealSteps {
    /// The write's source for `job`, whose manifest `img` was loaded and pinned: the store's
    /// image, or a fetch's (its store waits for chunks still arriving). For a cached image also
    /// the record's line (what the library said of the cached copy); None for a fetch, whose
    /// line is known when it ends ([`RealSteps::fetched`]).
    pub(super) fn source(
        &self,
        job: &Job,
        img: LoadedImage,
    ) -> Result<(Origin, imager::ImageSource, Option<String>)> {
        let r: ImageRef = job
            .image
            .parse()
            .with_context(|| format!("parsing image reference {}", job.image))?;
        if let Err(e) = evict::mark_used(self.depot.root(), &r) {
            tracing::warn!(image = %r, "{}", crate::errors::Chain(&e));
        }
        match self.library.origin(&r)? {
            Origin::Local => {
                let line = self.library.cached_line(&r, &img);
                tracing::info!(job = %job.id, image = %r, "{line}");
                let source = imager::ImageSource::Stored {
                    store: self.store.clone(),
                    image: img,
                };
                Ok((Origin::Local, source, Some(line)))
            }
            Origin::Fetching(f) => {
                crate::job::admission::check_pinned(job, f.image())?;
                tracing::info!(job = %job.id, image = %r, "writing while fetching");
                let source = imager::ImageSource::Stored {
                    store: Arc::new(f.store().clone()),
                    image: f.image().clone(),
                };
                Ok((Origin::Fetching(f), source, None))
            }
        }
    }

    /// The write's fetch error, if it failed already (a write that failed for want of its
    /// chunks says why in the fetch's words: the chunk and its URL).
    pub(super) fn failed_fetch(origin: &Origin) -> Result<(), StepError> {
        match origin {
            Origin::Fetching(f) => match f.error_now() {
                Some(e) => Err(StepError::Failed(anyhow!(e))),
                None => Ok(()),
            },
            Origin::Local => Ok(()),
        }
    }

    /// Waits for the write's fetch to end: its record line, or the fetch's error (a write that
    /// verified every byte while the fetch then failed to commit still fails the job: the cache
    /// does not hold what the record would claim). Then the cache is kept under its limit.
    pub(super) fn fetched(&self, job: &Job, origin: &Origin) -> Result<String, StepError> {
        let Origin::Fetching(f) = origin else {
            return Ok("local store".into());
        };
        let report = f.wait().map_err(|e| StepError::Failed(anyhow!(e)))?;
        if let (Some(max), Some(remote)) = (self.cache_max_bytes, self.library.remote()) {
            let r = &report.image;
            let audit = self.custody.audit();
            match evict::after_pull(&self.store, &self.depot, remote, max, r, audit) {
                Ok(e) if !e.kept.is_empty() && e.after_bytes > max => tracing::warn!(
                    job = %job.id,
                    "image cache over its limit ({} > {max} bytes); kept: {}",
                    e.after_bytes,
                    e.kept.join(", ")
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %job.id, "evicting: {}", crate::errors::Chain(&e)),
            }
        }
        Ok(f.source_line(&report))
    }
}
