//! [`CustodyRecords`]: the custody records as a command that only reads sees them (`tek report`,
//! whether the agent runs or not). Opening one creates no directory, cleans no debris, takes no
//! lock and appends nothing to the audit log, unlike [`Custody::open_with`](crate::Custody):
//! a reader must never change the depot it reports on.

use std::path::Path;

use crate::cases::{DatasetFate, load_cases_in};
use crate::custody::CustodyPaths;
use crate::dataset::{DatasetId, DatasetInfo, Meta};
use crate::error::DataError;
use crate::keystore::Keystore;

/// Read-only access to the datasets' metadata, keys' presence, sanitization records and
/// deletion cases of one depot.
#[derive(Debug, Clone)]
pub struct CustodyRecords {
    paths: CustodyPaths,
    keys: Keystore,
}

impl CustodyRecords {
    /// The records under `paths`; `kek`: the key-encryption key's path when not the default
    /// (only where dataset keys live matters here: nothing is decrypted).
    pub fn open(paths: CustodyPaths, kek: Option<&Path>) -> CustodyRecords {
        let keys = Keystore::new(&paths.keys, kek);
        CustodyRecords { paths, keys }
    }

    pub(crate) fn of(paths: &CustodyPaths, keys: &Keystore) -> CustodyRecords {
        CustodyRecords {
            paths: paths.clone(),
            keys: keys.clone(),
        }
    }

    fn meta(&self, id: &DatasetId) -> Result<Meta, DataError> {
        load_meta(&self.paths.staging, id)
    }

    /// The clear metadata of one dataset.
    pub fn dataset(&self, id: &DatasetId) -> Result<DatasetInfo, DataError> {
        Ok(self.meta(id)?.info)
    }

    /// What the custody records say about dataset `id` now: its state, when its staging copy
    /// was destroyed, whether its key is still there, its sanitization record and deletion case.
    pub fn dataset_fate(&self, id: &DatasetId) -> Result<DatasetFate, DataError> {
        let meta = self.meta(id)?;
        let record = format!("san-{id}");
        let san = self
            .paths
            .reports
            .join("sanitization")
            .join(format!("{record}.json"));
        let case = load_cases_in(&self.paths.staging.join("cases"))?
            .into_iter()
            .rev()
            .find(|c| c.datasets.iter().any(|d| d == id.as_str()))
            .map(|c| c.case);
        Ok(DatasetFate {
            dataset: id.to_string(),
            client: Some(meta.info.client.clone()),
            state: meta.info.state,
            wiped_at: meta.wiped_at,
            key_present: self.keys.has(id.as_str()),
            sanitization_record: san.exists().then(|| san.display().to_string()),
            case,
        })
    }
}

/// The metadata of dataset `id` under `staging`; [`DataError::NotFound`] when it has none.
pub(crate) fn load_meta(staging: &Path, id: &DatasetId) -> Result<Meta, DataError> {
    let dir = staging.join(id.as_str());
    if !dir.join("meta.json").exists() {
        return Err(DataError::NotFound(id.to_string()));
    }
    Meta::load(&dir)
}
