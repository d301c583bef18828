//! `list`: the images a remote holds. An S3 remote is listed (`images/`, the truth); a plain
//! web server cannot list, so its `index.json` (rewritten by every push) is read instead.

use crate::error::LibraryError;
use crate::layout::{self, MAX_DOCUMENT, RemoteImage};
use crate::remote::Remote;

/// The images on `remote`, sorted. Nothing here is trusted: a pull checks the signature.
pub fn list(remote: &Remote) -> Result<Vec<RemoteImage>, LibraryError> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let info = remote.get(layout::INFO_KEY, MAX_DOCUMENT).await?;
        let library = crate::check_info(remote, info)?;
        let mut out: Vec<RemoteImage> = if remote.url().is_read_only() {
            let object = remote.url().object(layout::INDEX_KEY);
            let Some(b) = remote.get(layout::INDEX_KEY, MAX_DOCUMENT).await? else {
                return Err(LibraryError::BadLibrary {
                    object,
                    reason: "not found (every push writes it)".into(),
                });
            };
            let index: layout::Index =
                serde_json::from_slice(&b).map_err(|e| LibraryError::BadLibrary {
                    object: object.clone(),
                    reason: format!("not a tek library index: {e}"),
                })?;
            if index.format != layout::INDEX_FORMAT {
                return Err(LibraryError::BadLibrary {
                    object,
                    reason: format!(
                        "index format {}; this tek reads {}",
                        index.format,
                        layout::INDEX_FORMAT
                    ),
                });
            }
            index.images
        } else {
            listed(remote, library).await?
        };
        out.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(out)
    })
}

/// The manifests an S3 remote's listing of `images/` shows, sorted.
pub(crate) async fn listed(
    remote: &Remote,
    library: layout::Layout,
) -> Result<Vec<RemoteImage>, LibraryError> {
    let keys = remote.list("images/").await?;
    // An image is published once its signature is beside its manifest (the push writes it
    // after the manifest): a manifest alone is a push cut off or still running.
    let signed: std::collections::HashSet<&str> = keys
        .iter()
        .filter(|(k, _)| k.ends_with(".sig"))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut out: Vec<RemoteImage> = keys
        .iter()
        .filter_map(|(k, size)| {
            let image = library.image_of_key(k)?;
            signed
                .contains(layout::signature_key(&image).as_str())
                .then_some((image, *size))
        })
        .map(|(image, size)| RemoteImage {
            image,
            manifest_bytes: size,
        })
        .collect();
    out.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(out)
}
