//! Proofs as values: "no wipe before a verified copy" is kept by the types.
//!
//! [`Custody::wipe`] takes a [`VerifiedRestore`], which only this crate makes, and only from a
//! check that could have failed: [`Custody::restore_into`] hands one out when every restored
//! entry read back equal (it is then in [`RestoreResult::verified`]), and
//! [`Custody::verified_restore`] loads one from the dataset's custody record after a restart,
//! re-checking that the record says Migrated with a verified migration. The one way around it is
//! the explicit, reasoned [`Custody::force_wipe`] (`tek data wipe --force --reason`).
//!
//! The wipe re-checks the record under the dataset's lock as well: a proof loaded before another
//! process changed the dataset does not outlive that change.
//!
//! [`RestoreResult::verified`]: crate::RestoreResult::verified

use crate::custody::Custody;
use crate::dataset::{DatasetId, DatasetState};
use crate::error::DataError;

/// Proof that dataset `dataset` was restored and every restored entry read back equal.
/// Fields are private: outside this crate a value exists only where a check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRestore {
    dataset: DatasetId,
}

impl VerifiedRestore {
    /// Made by the restore after its read-back found no difference.
    pub(crate) fn after_read_back(dataset: &DatasetId) -> Self {
        VerifiedRestore {
            dataset: dataset.clone(),
        }
    }

    /// The dataset whose copy was verified.
    pub fn dataset(&self) -> &DatasetId {
        &self.dataset
    }
}

impl Custody {
    /// The persisted proof of a verified migration, loaded from the dataset's custody record:
    /// refused ([`DataError::NotMigrated`]) unless the record says Migrated and lists at least
    /// one verified migration; a dataset no longer live is refused as the wipe would refuse it
    /// ([`DataError::BadState`]).
    pub fn verified_restore(&self, id: &DatasetId) -> Result<VerifiedRestore, DataError> {
        let meta = self.meta(id)?;
        if !meta.info.state.is_live() {
            return Err(DataError::BadState {
                id: id.to_string(),
                state: meta.info.state.to_string(),
                action: "wipe",
            });
        }
        if meta.info.state == DatasetState::Migrated && !meta.migrations.is_empty() {
            Ok(VerifiedRestore::after_read_back(id))
        } else {
            Err(DataError::NotMigrated(id.to_string()))
        }
    }
}
