//! The real [`JobSteps`]: the image store and imager for the write, client-data custody for the
//! migration and the staging wipe, the audit log, and the service report files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use client_data::{AuditEvent, Custody, DatasetId, DatasetState, Destination};
use image_store::{ImageRef, LoadedImage, SignatureStatus, Store};

use crate::Depot;
use crate::config::{BeyondImage, Config};
use crate::job::report::{AuditAnchor, Report};
use crate::job::runner::{JobSteps, StepError, StepProgress, WriteDone};
use crate::job::shared_write::WriteSharing;
use crate::job::{Job, RestoreRecord, SanitizationRecord, WriteRecord};
use crate::library::ondemand::OnDemand;
use blockdev::DiskInfo;

/// Operator name written into wipe records made by the agent.
const OPERATOR: &str = "tek-agent";

/// The steps, backed by the depot.
pub struct RealSteps {
    store: Arc<Store>,
    /// The bench's library: images not in the store are fetched while they are written.
    library: OnDemand,
    depot: Depot,
    cache_max_bytes: Option<u64>,
    custody: Custody,
    reports: PathBuf,
    allow_unsigned: bool,
    require_clean_image: bool,
    beyond: BeyondImage,
    /// agent.toml's `[restore]`: how long the restore waits on a driver that stops answering.
    restore: crate::settings::RestoreSettings,
    sharing: WriteSharing<imager::TargetReport>,
    /// Each writing job's disk (by node) and the `diskseq` it had when detected, so the batch
    /// leader's imager call refuses a node that now reaches another disk.
    detected: Mutex<HashMap<PathBuf, u64>>,
}

impl RealSteps {
    /// Opens the store and custody of `depot` with the policy of `cfg`.
    pub fn open(depot: &Depot, cfg: &Config) -> Result<RealSteps> {
        let store = Store::open(depot.store())
            .with_context(|| format!("opening image store {}", depot.store().display()))?;
        // The same settings as `tek data` (agent.toml's [custody], then the environment).
        let custody = crate::settings::open_custody(depot, cfg)?;
        let store = Arc::new(store);
        let library = OnDemand::new(cfg.library.open()?, store.clone(), depot.trusted_keys())?;
        Ok(RealSteps {
            store,
            library,
            depot: depot.clone(),
            cache_max_bytes: cfg.library.cache_max_bytes,
            custody,
            reports: depot.reports(),
            allow_unsigned: cfg.policy.allow_unsigned,
            require_clean_image: cfg.policy.require_clean_image,
            beyond: cfg.policy.beyond_image,
            restore: cfg.restore.clone(),
            sharing: WriteSharing::new(Duration::from_millis(cfg.policy.share_write_window_ms)),
            detected: Mutex::new(HashMap::new()),
        })
    }

    /// Loads the job's image by name and, once the job pinned a manifest (at claim), refuses
    /// another one under that name (`admission.rs`).
    fn load_pinned(&self, job: &Job) -> Result<LoadedImage> {
        let img = self.load(job)?;
        crate::job::admission::check_pinned(job, &img)?;
        Ok(img)
    }

    /// The job's dataset, bound to its ticket; `need_live`: still staged (not wiped).
    fn bound_dataset(&self, job: &Job, need_live: bool) -> Result<client_data::DatasetInfo> {
        let id = Self::dataset(job)?;
        let info = self
            .custody
            .dataset(&id)
            .with_context(|| format!("looking up dataset {id}"))?;
        crate::job::admission::check_dataset(job, &info, need_live)?;
        Ok(info)
    }

    fn load(&self, job: &Job) -> Result<LoadedImage> {
        let r: ImageRef = job
            .image
            .parse()
            .with_context(|| format!("parsing image reference {}", job.image))?;
        let img = self.library.load(&r)?;
        signature_allowed(&r, &img.signature, self.allow_unsigned)?;
        if self.require_clean_image {
            image_store::audit::require_clean(img.manifest.audit.as_ref()).map_err(|reason| {
                crate::job::admission::ImageNotClean {
                    image: r.to_string(),
                    reason,
                }
            })?;
        }
        Ok(img)
    }

    fn dataset(job: &Job) -> Result<DatasetId> {
        let d = job.dataset.as_deref().context("job has no dataset")?;
        d.parse()
            .map_err(|e| anyhow!("parsing dataset id {d}: {e}"))
    }
}

/// The signature policy: a valid trusted signature always passes; unsigned or unknown-key
/// images only with `allow_unsigned`; an INVALID signature (the manifest changed after signing)
/// never, whatever the policy, as for `tek write`.
fn signature_allowed(r: &ImageRef, sig: &SignatureStatus, allow_unsigned: bool) -> Result<()> {
    match sig {
        SignatureStatus::Valid { .. } => Ok(()),
        SignatureStatus::Invalid { reason } => Err(anyhow!(
            "image {r} has an invalid signature ({reason}): its manifest changed after signing"
        )),
        s if allow_unsigned => {
            tracing::debug!("image {r}: {s}, allowed by policy");
            Ok(())
        }
        s => Err(anyhow!(
            "image {r} has no valid trusted signature ({s}) and policy forbids unsigned images"
        )),
    }
}

/// The job's ticket for the audit log. The socket and the CLI accept only ids; a job journaled
/// before they checked may hold free text, recorded as `unchecked-` + 16 hex of its BLAKE3, so the
/// job still finishes and its entries still match each other, without the text.
fn audit_ticket(job: &Job) -> String {
    match client_data::dataset::check_ident("ticket", &job.ticket) {
        Ok(()) => job.ticket.clone(),
        Err(_) => format!(
            "unchecked-{}",
            &blake3::hash(job.ticket.as_bytes()).to_hex()[..16]
        ),
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
        "size_bytes": img.manifest.size,
        "sha256": img.manifest.sha256,
        "blake3": img.manifest.blake3,
        "data_partition": img.manifest.hints.data_partition,
        "privacy_audit": privacy_audit(&img.manifest.audit),
    })
}

/// The image's privacy audit as the report names it: the verdict line (rules version and
/// accepted findings included), or "not audited".
fn privacy_audit(a: &Option<image_store::audit::AuditReport>) -> String {
    match a {
        None => "not audited".into(),
        Some(r) => r.verdict_line(),
    }
}

impl JobSteps for RealSteps {
    fn validate(&self, job: &Job) -> Result<()> {
        let img = self.load(job)?;
        if job.dataset.is_none() {
            return Ok(());
        }
        if img.manifest.hints.data_partition.is_none() {
            return Err(anyhow!(
                "image {} declares no data partition, so client data cannot be migrated \
                 (set one with `tek image set {} --data-partition NAME`)",
                job.image,
                job.image
            ));
        }
        let info = self.bound_dataset(job, true)?;
        if info.ticket != job.ticket {
            // Accepted on the technician's explicit override: audited before it is journaled.
            self.custody
                .audit()
                .append(AuditEvent::DatasetOfOtherTicket {
                    job: job.id.to_string(),
                    ticket: job.ticket.clone(),
                    dataset: info.id.to_string(),
                    dataset_ticket: info.ticket.clone(),
                    dataset_client: info.client.clone(),
                })
                .context("appending DatasetOfOtherTicket to the audit log")?;
        }
        Ok(())
    }

    fn image_exists(&self, job: &Job) -> bool {
        job.image
            .parse::<ImageRef>()
            .is_ok_and(|r| self.library.can_get(&r))
    }

    fn check(&self, job: &Job, disk: &DiskInfo) -> Result<serde_json::Value, String> {
        let img = self.load_pinned(job).map_err(|e| crate::errors::text(&e))?;
        // A stat per chunk, before the disk is claimed: a write that stops at a missing chunk
        // has already destroyed what the disk held.
        let local = job.image.parse().is_ok_and(|r| self.store.exists(&r));
        let absent = self
            .store
            .absent_chunks(&img.manifest)
            .map(|a| if local { a } else { Vec::new() }) // not local: fetched as it is written
            .map_err(|e| format!("checking the chunks of image {}: {e}", job.image))?;
        if !absent.is_empty() {
            return Err(format!(
                "image {} cannot be written: {}",
                job.image,
                image_store::describe_absent(&absent)
            ));
        }
        if job.dataset.is_some() {
            // Until the data is verified on the disk, staging must still hold it.
            let need_live = job.results.restore.is_none();
            self.bound_dataset(job, need_live)
                .map_err(|e| crate::errors::text(&e))?;
        }
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
        let mut facts = image_facts(&img);
        // A disk a killed write left behind (ours after a crash, or another bench's): say so in
        // the log and the job record; the write that follows replaces it.
        if let Some(m) = imager::read_unfinished_marker(&disk.dev_path) {
            tracing::warn!(disk = %disk.name, job = %job.id, "{m}");
            facts["unfinished_write"] = serde_json::json!(m);
        }
        Ok(facts)
    }

    fn write(
        &self,
        job: &Job,
        dev: &Path,
        stop: &Arc<AtomicBool>,
        progress: &dyn Fn(StepProgress),
    ) -> Result<WriteDone, StepError> {
        let img = self.load_pinned(job)?;
        // Same image, same content: NAME@VERSION plus the manifest hash it resolved to.
        let key = format!("{}#{}", job.image, img.manifest_hash);
        let (origin, source, cached) = self.source(job, img)?;
        let opts = imager::WriteOptions {
            beyond: self.beyond,
            ..imager::WriteOptions::default()
        };
        // Registered before joining a batch, so the leader sees every member's diskseq.
        let seq = job.device.as_ref().and_then(|d| d.diskseq);
        if let Some(seq) = seq {
            self.detected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(dev.to_path_buf(), seq);
        }
        let detected = &self.detected;
        // Only the batch's leader runs this, on every member's disk (shared_write.rs).
        let run = Box::new(move |targets: &[PathBuf], cancel: Arc<AtomicBool>, tx| {
            let expected_diskseq = {
                let d = detected.lock().unwrap_or_else(|p| p.into_inner());
                targets
                    .iter()
                    .filter_map(|t| d.get(t).map(|s| (t.clone(), *s)))
                    .collect()
            };
            let opts = imager::WriteOptions {
                cancel,
                expected_diskseq,
                ..opts
            };
            imager::write_image(&source, targets, &opts, Some(tx))
                .into_iter()
                .map(|r| (r.path.clone(), r))
                .collect()
        });
        let report = self.sharing.write(&key, dev, stop, progress, run);
        if seq.is_some() {
            self.detected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(dev);
        }
        let report = report.map_err(|e| anyhow!("writing the image: {e}"))?;
        let record = WriteRecord::of(&report)?;
        let Some(proof) = report.verified().cloned() else {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StepError::Stopped);
            }
            Self::failed_fetch(&origin)?; // the fetch's error says more than the imager's
            return Err(StepError::Failed(anyhow!(
                "imager report: {}",
                serde_json::to_string(record.json()).unwrap_or_default()
            )));
        };
        let source_line = match cached {
            Some(line) => line,
            None => self.fetched(job, &origin)?,
        };
        Ok(WriteDone {
            record,
            proof,
            source: Some(source_line),
        })
    }

    fn migrate(
        &self,
        job: &Job,
        dev: &Path,
        image: &imager::VerifiedImage,
        progress: &dyn Fn(StepProgress),
    ) -> Result<RestoreRecord, StepError> {
        let id = Self::dataset(job)?;
        tracing::debug!(
            job = %job.id,
            image = image.image(),
            bytes_verified = image.bytes_verified(),
            "migrating onto a verified image"
        );
        let img = self.load_pinned(job)?;
        self.bound_dataset(job, true)?;
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
        still_the_detected_disk(job, dev)?;
        let mount = client_data::PartitionMount::mount(dev, &part, None)
            .with_context(|| format!("mounting partition {part} of {}", dev.display()))?;
        // The image's filesystem is hostile input: `data_path` is resolved beneath the mount as
        // a descriptor (no symlink, no other filesystem), and the restore writes relative to it.
        // A re-run of this step (the job resumed) replaces the entries its interrupted run
        // wrote (the restore journal says which); anything else in the way refuses. A stalled
        // ntfs-3g is given up on after `[restore] stall_abort_secs` (two minutes), its dead
        // mount detached, and the job fails with that reason; this covers opening the data
        // path too.
        let opts = client_data::RestoreOptions {
            driver: mount.driver(),
            ..self.restore.options()
        };
        let data_path = img.manifest.hints.data_path.as_deref().unwrap_or("/");
        let target = mount
            .guarded(&opts, || {
                client_data::RestoreTarget::beneath(mount.path(), data_path)
            })
            .with_context(|| format!("opening data path {data_path} in partition {part}"))?;
        let dest = Destination {
            job: Some(job.id.to_string()),
            device: device_identity(job),
        };
        let result = self.custody.restore_with(&id, &target, &dest, &opts);
        drop(target);
        let unmounted = mount.unmount();
        let result = result.with_context(|| format!("restoring dataset {id}"))?;
        unmounted.with_context(|| format!("unmounting partition {part}"))?;
        let record = RestoreRecord::of(&result)?;
        if !result.ok() {
            return Err(StepError::Failed(anyhow!(
                "verification of the restored data failed: {}",
                record.json()
            )));
        }
        progress(StepProgress {
            phase: "restored".into(),
            bytes_done: info.bytes,
            bytes_total: info.bytes,
            rate_bps: 0.0,
        });
        Ok(record)
    }

    fn wipe(&self, job: &Job) -> Result<SanitizationRecord, StepError> {
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
            return self
                .withdrawal_record(&id)
                .map(SanitizationRecord::from_json)
                .map_err(StepError::Failed);
        }
        if info.state == DatasetState::Wiped {
            if let Ok(text) = std::fs::read(&saved)
                && let Ok(v) = serde_json::from_slice(&text)
            {
                return Ok(SanitizationRecord::from_json(v));
            }
            // Crashed between the wipe and saving its record: custody kept its own copy.
            return Ok(SanitizationRecord::from_json(serde_json::json!({
                "dataset": id.to_string(),
                "note": format!(
                    "wiped by an earlier run of this job; the sanitization record is in {}",
                    self.reports.display()
                ),
            })));
        }
        // The proof of the verified migration, re-checked in the custody record (the migrate
        // step may have run in an earlier process).
        let opts = client_data::WipeOptions {
            note: None,
            operator: OPERATOR.into(),
        };
        let rec = self
            .custody
            .verified_restore(&id)
            .and_then(|proof| self.custody.wipe(&proof, &opts))
            .with_context(|| format!("wiping staged dataset {id}"))?;
        let record = SanitizationRecord::of(&rec)?;
        crate::depot::private_dir(&self.reports)?;
        std::fs::write(
            &saved,
            serde_json::to_vec_pretty(record.json()).unwrap_or_default(),
        )
        .with_context(|| format!("writing {}", saved.display()))?;
        Ok(record)
    }

    fn image_written(&self, job: &Job, _dev: &Path, ok: bool) -> Result<()> {
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
            .and_then(|w| w.json()["bytes_written"].as_u64())
            .unwrap_or(0);
        let (image, version) = job.image.split_once('@').unwrap_or((&job.image, ""));
        self.custody
            .audit()
            .append(AuditEvent::ImageWritten {
                job: job.id.to_string(),
                ticket: audit_ticket(job),
                image: image.to_string(),
                version: version.to_string(),
                manifest_hash,
                device: device_identity(job),
                bytes,
                result: if ok { "verified" } else { "failed" }.into(),
            })
            .context("appending ImageWritten to the audit log")
    }

    fn finish(&self, job: &Job) -> Result<()> {
        // The entry first, with a checkpoint signed over it, printed in the report.
        let cp = self
            .custody
            .audit()
            .append_checkpointed(AuditEvent::JobFinished {
                job: job.id.to_string(),
                ticket: audit_ticket(job),
                dataset: job.dataset.clone(),
                result: job.state.to_string(),
            })
            .context("appending JobFinished to the audit log")?;
        let mut r = Report::with_custody(job, Some(&self.custody));
        r.audit = Some(AuditAnchor::of(cp));
        crate::depot::private_dir(&self.reports)?;
        let json = self.reports.join(format!("{}.json", job.id));
        std::fs::write(&json, serde_json::to_vec_pretty(&r).unwrap_or_default())
            .with_context(|| format!("writing {}", json.display()))?;
        let html = self.reports.join(format!("{}.html", job.id));
        let page = r.to_html(&self.custody.config().letterhead);
        std::fs::write(&html, page).with_context(|| format!("writing {}", html.display()))
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
            _ => Some(crate::job::report::fate_line(&fate)),
        })
    }

    fn still_present(&self, dev: &Path) -> bool {
        let Some(name) = dev.file_name() else {
            return true;
        };
        match blockdev::SysRoot::system().media_present(&name.to_string_lossy()) {
            Some(present) => present,
            // A plain file target (the demo without root) is always present.
            None => dev.exists() && !dev.starts_with("/dev"),
        }
    }
}

mod device;
mod fetch;
use device::{device_identity, still_the_detected_disk};
#[cfg(test)]
mod tests;
