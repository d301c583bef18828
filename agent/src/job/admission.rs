//! What a job must satisfy before each of its steps may run, beyond the disk's eligibility:
//!
//! - **the manifest it was written with**: a job records the manifest hash its image resolved
//!   to when it claimed a disk (`results.image.manifest_hash`); every later step loads the image
//!   by name and refuses if the name now resolves to another manifest (`tek image import
//!   --replace` between the write and the migration would otherwise restore into the data
//!   partition and path of a layout that is not on the disk);
//! - **its own ticket's data**: the dataset must have been ingested for the job's ticket, unless
//!   the job carries an explicit, audited override (`--dataset-of-other-ticket REASON`);
//! - **a dataset that can still be migrated** (staged, or migrated and not yet wiped) and an
//!   image that declares a data partition to migrate it into.
//!
//! The checks run when the job is added (so a job that cannot succeed is refused at once), when
//! a disk is offered to it, and again right before the step that depends on them.

use client_data::{DatasetInfo, DatasetState};
use image_store::LoadedImage;

use crate::job::Job;

/// The image's name now resolves to another manifest than the one this job was written with.
#[derive(Debug, thiserror::Error)]
#[error(
    "image {image} was replaced after this job pinned it: it now resolves to manifest {now}, \
     but the disk was written from manifest {pinned}; refusing to go on with another image's \
     layout (staged data is kept; cancel this job and add a new one to write the current image)"
)]
pub struct ImageReplaced {
    /// `NAME@VERSION`.
    pub image: String,
    /// The manifest hash recorded when the job claimed its disk.
    pub pinned: String,
    /// The manifest hash the name resolves to now.
    pub now: String,
}

/// The job's image is refused by policy `require_clean_image`: its privacy audit is missing,
/// could not read a partition, or has unaccepted findings (DESIGN invariant 7). At `tek job
/// add` this refusal is recorded as a failed job, with its report and audit entry
/// (`Agent::add_job`), not only answered: the image library, not the technician, has to act.
#[derive(Debug, thiserror::Error)]
#[error("image {image} refused by policy require_clean_image: {reason}")]
pub struct ImageNotClean {
    /// `NAME@VERSION`.
    pub image: String,
    /// What the audit says.
    pub reason: image_store::audit::NotClean,
}

/// Why a job may not use a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetRefused {
    /// Ingested for another ticket, and no override was given.
    #[error(
        "dataset {dataset} was ingested for ticket {dataset_ticket} (client {client}), not for \
         this job's ticket {ticket}: a job migrates only its own ticket's data (if this is \
         intended, add the job with --dataset-of-other-ticket REASON; it is audited)"
    )]
    OtherTicket {
        /// Dataset id.
        dataset: String,
        /// The dataset's ticket.
        dataset_ticket: String,
        /// The dataset's client.
        client: String,
        /// The job's ticket.
        ticket: String,
    },
    /// Wiped or withdrawn: there is nothing left to migrate.
    #[error("dataset {dataset} is {state}, so there is nothing to migrate")]
    NotStaged {
        /// Dataset id.
        dataset: String,
        /// Its state.
        state: DatasetState,
    },
}

/// The manifest hash a job pinned when it claimed its disk, if it did.
pub fn pinned_manifest(job: &Job) -> Option<&str> {
    job.results
        .image
        .as_ref()
        .and_then(|v| v.get("manifest_hash"))
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty())
}

/// Refuses `img` if the job pinned another manifest.
pub fn check_pinned(job: &Job, img: &LoadedImage) -> Result<(), ImageReplaced> {
    match pinned_manifest(job) {
        Some(p) if p != img.manifest_hash => Err(ImageReplaced {
            image: job.image.clone(),
            pinned: p.to_string(),
            now: img.manifest_hash.clone(),
        }),
        _ => Ok(()),
    }
}

/// Refuses a dataset of another ticket (without the job's override), and, when `need_live`,
/// a dataset that is no longer staged.
pub fn check_dataset(job: &Job, info: &DatasetInfo, need_live: bool) -> Result<(), DatasetRefused> {
    if info.ticket != job.ticket && job.dataset_of_other_ticket.is_none() {
        return Err(DatasetRefused::OtherTicket {
            dataset: info.id.to_string(),
            dataset_ticket: info.ticket.clone(),
            client: info.client.clone(),
            ticket: job.ticket.clone(),
        });
    }
    if need_live && !info.state.is_live() {
        return Err(DatasetRefused::NotStaged {
            dataset: info.id.to_string(),
            state: info.state,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobTarget;

    fn info(ticket: &str, state: DatasetState) -> DatasetInfo {
        DatasetInfo {
            id: "ds-20260306-5f2c9a1e".parse().unwrap(),
            client: "C-ALICE".into(),
            ticket: ticket.into(),
            created: "2026-03-06T10:00:00Z".into(),
            entries: 1,
            bytes: 1,
            state,
        }
    }

    fn job(ticket: &str) -> Job {
        Job::new(
            ticket,
            "img@1",
            Some("ds-20260306-5f2c9a1e".into()),
            JobTarget::Bay("a".into()),
        )
    }

    #[test]
    fn a_dataset_of_another_ticket_needs_the_override() {
        let e =
            check_dataset(&job("T-BOB"), &info("T-ALICE", DatasetState::Staged), true).unwrap_err();
        assert!(matches!(e, DatasetRefused::OtherTicket { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("T-ALICE") && msg.contains("T-BOB") && msg.contains("C-ALICE"),
            "{msg}"
        );
        assert!(msg.contains("--dataset-of-other-ticket"), "{msg}");
        let mut j = job("T-BOB");
        j.dataset_of_other_ticket = Some("follow-up ticket for the same repair".into());
        check_dataset(&j, &info("T-ALICE", DatasetState::Staged), true).unwrap();
        check_dataset(
            &job("T-ALICE"),
            &info("T-ALICE", DatasetState::Migrated),
            true,
        )
        .unwrap();
    }

    #[test]
    fn a_wiped_dataset_is_refused_only_where_it_must_still_be_live() {
        let j = job("T-ALICE");
        let e = check_dataset(&j, &info("T-ALICE", DatasetState::Wiped), true).unwrap_err();
        assert!(e.to_string().contains("is wiped"), "{e}");
        // Resuming a wipe or report after the data was verified on the disk: fine.
        check_dataset(&j, &info("T-ALICE", DatasetState::Wiped), false).unwrap();
        // The ticket binding holds at every step.
        assert!(check_dataset(&job("T-X"), &info("T-ALICE", DatasetState::Wiped), false).is_err());
    }

    #[test]
    fn the_pinned_manifest_is_read_from_the_job_results() {
        let mut j = job("T");
        assert_eq!(pinned_manifest(&j), None);
        j.results.image = Some(serde_json::json!({"manifest_hash": "abc"}));
        assert_eq!(pinned_manifest(&j), Some("abc"));
    }
}
