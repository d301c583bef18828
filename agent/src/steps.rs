//! The real [`JobSteps`]: the image store and imager for the write, client-data custody for the
//! migration and the staging wipe, the audit log, and the service report files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use client_data::{AuditEvent, Custody, CustodyPaths, DatasetId, DatasetState, Destination};
use image_store::{ImageRef, LoadedImage, Store};

use crate::Depot;
use crate::bay::Disk;
use crate::config::{BeyondImage, Config};
use crate::job::Job;
use crate::report::Report;
use crate::runner::{JobSteps, StepError, StepProgress};
use crate::shared_write::WriteSharing;

/// Operator name written into wipe records made by the agent.
const OPERATOR: &str = "tek-agent";

/// The steps, backed by the depot.
pub struct RealSteps {
    store: Arc<Store>,
    custody: Custody,
    trusted_keys: PathBuf,
    reports: PathBuf,
    allow_unsigned: bool,
    beyond: BeyondImage,
    sharing: WriteSharing<imager::TargetReport>,
}

impl RealSteps {
    /// Opens the store and custody of `depot` with the policy of `cfg`.
    pub fn open(depot: &Depot, cfg: &Config) -> Result<RealSteps> {
        let store = Store::open(depot.store())
            .with_context(|| format!("opening image store {}", depot.store().display()))?;
        let custody = Custody::open(CustodyPaths {
            staging: depot.staging(),
            keys: depot.keys(),
            audit: depot.audit(),
            reports: depot.reports(),
        })
        .with_context(|| format!("opening client data custody in {}", depot.root().display()))?;
        Ok(RealSteps {
            store: Arc::new(store),
            custody,
            trusted_keys: depot.trusted_keys().to_path_buf(),
            reports: depot.reports(),
            allow_unsigned: cfg.policy.allow_unsigned,
            beyond: cfg.policy.beyond_image,
            sharing: WriteSharing::new(Duration::from_millis(cfg.policy.share_write_window_ms)),
        })
    }

    fn load(&self, job: &Job) -> Result<LoadedImage> {
        let r: ImageRef = job
            .image
            .parse()
            .with_context(|| format!("parsing image reference {}", job.image))?;
        let img = self
            .store
            .load(&r, &self.trusted_keys)
            .with_context(|| format!("loading image {r}"))?;
        if !img.signature.is_valid() && !self.allow_unsigned {
            return Err(anyhow!(
                "image {r} has no valid trusted signature ({:?}) and policy forbids unsigned images",
                img.signature
            ));
        }
        Ok(img)
    }

    fn dataset(job: &Job) -> Result<DatasetId> {
        let d = job.dataset.as_deref().context("job has no dataset")?;
        d.parse()
            .map_err(|e| anyhow!("parsing dataset id {d}: {e:?}"))
    }
}

impl RealSteps {
    /// The custody's sanitization record of a dataset destroyed by a withdrawal, with the
    /// case that destroyed it.
    fn withdrawal_record(&self, id: &DatasetId) -> Result<serde_json::Value> {
        let fate = self
            .custody
            .dataset_fate(id)
            .with_context(|| format!("reading the custody records of dataset {id}"))?;
        let path = fate.sanitization_record.clone().with_context(|| {
            format!("dataset {id} is withdrawn but custody holds no sanitization record for it")
        })?;
        let text =
            std::fs::read(&path).with_context(|| format!("reading sanitization record {path}"))?;
        let mut v: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("parsing sanitization record {path}"))?;
        v["destroyed_by"] = serde_json::json!({
            "withdrawal_case": fate.case,
            "at": fate.wiped_at,
        });
        Ok(v)
    }
}

fn image_facts(img: &LoadedImage) -> serde_json::Value {
    serde_json::json!({
        "manifest_hash": img.manifest_hash,
        "signature": img.signature,
        "size": img.manifest.size,
        "sha256": img.manifest.sha256,
        "blake3": img.manifest.blake3,
        "data_partition": img.manifest.hints.data_partition,
    })
}

impl JobSteps for RealSteps {
    fn validate(&self, job: &Job) -> Result<()> {
        self.load(job)?;
        if job.dataset.is_some() {
            let id = Self::dataset(job)?;
            let info = self
                .custody
                .dataset(&id)
                .with_context(|| format!("looking up dataset {id}"))?;
            if info.state != DatasetState::Staged && info.state != DatasetState::Migrated {
                return Err(anyhow!("dataset {id} is {:?}, not staged", info.state));
            }
        }
        Ok(())
    }

    fn check(&self, job: &Job, disk: &Disk) -> Result<serde_json::Value, String> {
        let img = self.load(job).map_err(|e| format!("{e:#}"))?;
        if job.device.is_some() {
            // Resuming after a crash: our own data-partition mount from before may still hold
            // the disk (SIGKILL runs no destructors).
            crate::stale::release(&disk.dev_path);
        }
        if job.dataset.is_some() && img.manifest.hints.data_partition.is_none() {
            return Err(format!(
                "image {} declares no data partition, so client data cannot be migrated",
                job.image
            ));
        }
        let sector = img.manifest.gpt.as_ref().map(|g| g.logical_sector_size);
        imager::check_target(&disk.dev_path, img.manifest.size, sector)
            .map_err(|r| r.to_string())?;
        Ok(image_facts(&img))
    }

    fn write(
        &self,
        job: &Job,
        dev: &Path,
        stop: &Arc<AtomicBool>,
        progress: &dyn Fn(StepProgress),
    ) -> Result<serde_json::Value, StepError> {
        let img = self.load(job)?;
        // Same image, same content: NAME@VERSION plus the manifest hash it resolved to.
        let key = format!("{}#{}", job.image, img.manifest_hash);
        let source = imager::ImageSource::Stored {
            store: self.store.clone(),
            image: img,
        };
        let opts = imager::WriteOptions {
            beyond: match self.beyond {
                BeyondImage::Auto => imager::BeyondImage::Auto,
                BeyondImage::Overwrite => imager::BeyondImage::Overwrite,
                BeyondImage::Skip => imager::BeyondImage::Skip,
            },
            ..imager::WriteOptions::default()
        };
        // Only the batch's leader runs this, on every member's disk (shared_write.rs).
        let run = Box::new(move |targets: &[PathBuf], cancel: Arc<AtomicBool>, tx| {
            let opts = imager::WriteOptions { cancel, ..opts };
            imager::write_image(&source, targets, &opts, Some(tx))
                .into_iter()
                .map(|r| (r.path.clone(), r))
                .collect()
        });
        let report = self
            .sharing
            .write(&key, dev, stop, progress, run)
            .map_err(|e| anyhow!("writing the image: {e}"))?;
        let value = serde_json::to_value(&report).context("recording the imager report")?;
        if stop.load(std::sync::atomic::Ordering::SeqCst) && !report.ok() {
            return Err(StepError::Stopped);
        }
        if !report.ok() {
            return Err(StepError::Failed(anyhow!(
                "imager report: {}",
                serde_json::to_string(&value).unwrap_or_default()
            )));
        }
        Ok(value)
    }

    fn migrate(
        &self,
        job: &Job,
        dev: &Path,
        progress: &dyn Fn(StepProgress),
    ) -> Result<serde_json::Value, StepError> {
        let id = Self::dataset(job)?;
        let img = self.load(job)?;
        let part = img
            .manifest
            .hints
            .data_partition
            .clone()
            .context("image declares no data partition")?;
        let info = self
            .custody
            .dataset(&id)
            .with_context(|| format!("looking up dataset {id}"))?;
        progress(StepProgress {
            phase: "restoring".into(),
            bytes_done: 0,
            bytes_total: info.bytes,
            rate_bps: 0.0,
        });
        let mount = client_data::PartitionMount::mount(dev, &part, None)
            .with_context(|| format!("mounting partition {part} of {}", dev.display()))?;
        let target = match &img.manifest.hints.data_path {
            Some(p) => mount.path().join(p.trim_start_matches('/')),
            None => mount.path().to_path_buf(),
        };
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let dest = Destination {
            job: Some(job.id.clone()),
            device_serial: job.device.as_ref().and_then(|d| d.serial.clone()),
            device: dev.display().to_string(),
        };
        let result = self.custody.restore(&id, &target, &dest);
        let unmounted = mount.unmount();
        let result = result.with_context(|| format!("restoring dataset {id}"))?;
        unmounted.with_context(|| format!("unmounting partition {part}"))?;
        let value = serde_json::to_value(&result).context("recording the restore result")?;
        if !result.ok() {
            return Err(StepError::Failed(anyhow!(
                "verification of the restored data failed: {value}"
            )));
        }
        progress(StepProgress {
            phase: "restored".into(),
            bytes_done: info.bytes,
            bytes_total: info.bytes,
            rate_bps: 0.0,
        });
        Ok(value)
    }

    fn wipe(&self, job: &Job) -> Result<serde_json::Value, StepError> {
        let id = Self::dataset(job)?;
        // A previous run may have wiped and crashed before journaling: the record was saved.
        let saved = self.reports.join(format!("{}-sanitization.json", job.id));
        // A withdrawal may hold the dataset while it destroys it: wait for it to finish.
        let mut waited = 0;
        while let Err(client_data::DataError::Locked(_)) = self.custody.lock(&id) {
            if waited >= 600 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            waited += 1;
        }
        let info = self
            .custody
            .dataset(&id)
            .with_context(|| format!("looking up dataset {id}"))?;
        if info.state == DatasetState::Withdrawn {
            // Destroyed by the client's withdrawal after the verified migration: the custody
            // record of that destruction is the sanitization record of this job.
            return self.withdrawal_record(&id).map_err(StepError::Failed);
        }
        if info.state == DatasetState::Wiped {
            if let Ok(text) = std::fs::read(&saved)
                && let Ok(v) = serde_json::from_slice(&text)
            {
                return Ok(v);
            }
            // Crashed between the wipe and saving its record: custody kept its own copy.
            return Ok(serde_json::json!({
                "dataset": id.to_string(),
                "note": format!(
                    "wiped by an earlier run of this job; the sanitization record is in {}",
                    self.reports.display()
                ),
            }));
        }
        let rec = self
            .custody
            .wipe(
                &id,
                &client_data::WipeOptions {
                    force_reason: None,
                    operator: OPERATOR.into(),
                },
            )
            .with_context(|| format!("wiping staged dataset {id}"))?;
        let value = serde_json::to_value(&rec).context("recording the sanitization record")?;
        std::fs::create_dir_all(&self.reports)
            .with_context(|| format!("creating {}", self.reports.display()))?;
        std::fs::write(
            &saved,
            serde_json::to_vec_pretty(&value).unwrap_or_default(),
        )
        .with_context(|| format!("writing {}", saved.display()))?;
        Ok(value)
    }

    fn image_written(&self, job: &Job, dev: &Path, ok: bool) -> Result<()> {
        let manifest_hash = job
            .results
            .image
            .as_ref()
            .and_then(|v| v["manifest_hash"].as_str())
            .unwrap_or("")
            .to_string();
        let bytes = job
            .results
            .write
            .as_ref()
            .and_then(|v| v["bytes_written"].as_u64())
            .unwrap_or(0);
        self.custody
            .audit()
            .append(AuditEvent::ImageWritten {
                job: job.id.clone(),
                ticket: job.ticket.clone(),
                image: job.image.clone(),
                manifest_hash,
                device: dev.display().to_string(),
                device_serial: job.device.as_ref().and_then(|d| d.serial.clone()),
                bytes,
                result: if ok { "verified" } else { "failed" }.into(),
            })
            .context("appending ImageWritten to the audit log")
    }

    fn finish(&self, job: &Job) -> Result<()> {
        let r = Report::with_custody(job, Some(&self.custody));
        std::fs::create_dir_all(&self.reports)
            .with_context(|| format!("creating {}", self.reports.display()))?;
        let json = self.reports.join(format!("{}.json", job.id));
        std::fs::write(&json, serde_json::to_vec_pretty(&r).unwrap_or_default())
            .with_context(|| format!("writing {}", json.display()))?;
        let html = self.reports.join(format!("{}.html", job.id));
        std::fs::write(&html, r.to_html())
            .with_context(|| format!("writing {}", html.display()))?;
        self.custody
            .audit()
            .append(AuditEvent::JobFinished {
                job: job.id.clone(),
                ticket: job.ticket.clone(),
                dataset: job.dataset.clone(),
                result: job.state.to_string(),
            })
            .context("appending JobFinished to the audit log")
    }

    fn dataset_gone(&self, job: &Job) -> Result<Option<String>> {
        let Some(d) = job.dataset.as_deref() else {
            return Ok(None);
        };
        let id: DatasetId = d
            .parse()
            .map_err(|e| anyhow!("parsing dataset id {d}: {e}"))?;
        let fate = self
            .custody
            .dataset_fate(&id)
            .with_context(|| format!("reading the custody records of dataset {id}"))?;
        Ok(match fate.state {
            DatasetState::Staged | DatasetState::Migrated => None,
            _ => Some(crate::report::fate_line(&fate)),
        })
    }

    fn still_present(&self, dev: &Path) -> bool {
        let Some(name) = dev.file_name() else {
            return true;
        };
        let size = Path::new("/sys/class/block").join(name).join("size");
        match std::fs::read_to_string(&size) {
            Ok(s) => s.trim() != "0",
            // A plain file target (the demo without root) is always present.
            Err(_) => dev.exists() && !dev.starts_with("/dev"),
        }
    }
}
