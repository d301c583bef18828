//! The claimed disk, as the steps check and record it: still the one detected, and its
//! hardware identity for the audit log.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use client_data::DeviceIdentity;

use crate::job::Job;

/// The disk at `dev` must still be the one the job was started on: its kernel `diskseq` now
/// (sysfs) equals the one recorded at detection. The mount opens the node by path, and a disk
/// re-plugged or a loop device re-attached there since the write is another disk.
pub(super) fn still_the_detected_disk(job: &Job, dev: &Path) -> Result<()> {
    let Some(want) = job.device.as_ref().and_then(|d| d.diskseq) else {
        return Ok(());
    };
    let name = dev.file_name().unwrap_or_default().to_string_lossy();
    let p = PathBuf::from(format!("/sys/class/block/{name}/diskseq"));
    let now: u64 = std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {}", p.display()))?;
    if now != want {
        return Err(anyhow!(
            "the disk at {} changed since it was detected (diskseq {want}, now {now}); not \
             mounting it",
            dev.display()
        ));
    }
    Ok(())
}

/// The claimed disk's hardware identity for the audit log (never its node or backing file).
pub(super) fn device_identity(job: &Job) -> DeviceIdentity {
    job.device
        .as_ref()
        .map_or_else(DeviceIdentity::default, |d| {
            DeviceIdentity::new(
                d.serial.as_deref(),
                d.wwn.as_deref(),
                Some(&d.model),
                Some(d.size_bytes),
                Some(&d.name),
            )
        })
}
