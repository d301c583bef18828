//! The shared image library (issue 14): many benches pull signed images from one remote, an
//! S3-compatible object store (MinIO, Garage, Ceph RGW, AWS S3) or any static web server, and
//! the local image store is the verifying cache.
//!
//! Data flow: [`push`] uploads a signed image's chunks the remote lacks (format 2: in pack
//! files, [`packs`]), then its manifest (the claim on NAME@VERSION), its pack index and its
//! signature (the publication).
//! [`pull`] fetches the manifest, accepts it only with a valid signature by a trusted key, then
//! fetches the chunks the store lacks in parallel (format 2: ranged GETs of packs); the store
//! checks each one (BLAKE3) before it is written ([`image_store::Incoming`]) and commits the
//! manifest last. [`list`] names a remote's images. The remote layouts are in [`layout`].
//!
//! The remote is untrusted: nothing it sends reaches the store unchecked, and a bad object
//! fails the pull with the chunk id and the object's URL. Dependencies point one way:
//! `agent` -> `image-library` -> `image-store`.
#![forbid(unsafe_code)]

mod attempts;
pub mod error;
mod fetch;
pub mod layout;
mod listing;
pub mod packs;
mod pull;
mod push;
mod push_check;
mod push_packs;
pub mod remote;
mod remote_url;

use std::future::Future;

use futures::StreamExt;

pub use error::LibraryError;
pub use layout::RemoteImage;
pub use listing::list;
pub use pull::{Cancel, Pull, PullFailed, PullReport, fetch_checked, pull};
pub use push::{PushProgress, PushReport, push, push_with_progress};
pub use remote::{Remote, RemoteOptions, RemoteUrl, S3Settings, Secret};

/// The runtime the client runs on: two worker threads (requests are I/O; chunk checks run on
/// the blocking pool).
fn runtime() -> Result<tokio::runtime::Runtime, LibraryError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| image_store::StoreError::io("starting the network runtime", "", e).into())
}

/// Checks the remote's format file and says which layout it has; `None` (absent) means the URL
/// holds no tek library.
fn check_info(remote: &Remote, info: Option<bytes::Bytes>) -> Result<layout::Layout, LibraryError> {
    let object = remote.url().object(layout::INFO_KEY);
    let Some(b) = info else {
        return Err(LibraryError::BadLibrary {
            object,
            reason: "not found: no tek library at this URL (nothing was ever pushed there?)".into(),
        });
    };
    layout::LibraryInfo::parse(&b).map_err(|reason| LibraryError::BadLibrary { object, reason })
}

/// Runs `f` over `items`, `in_flight` at a time, summing the byte counts it returns. After the
/// first failure no new item starts, but those in flight finish (a pull keeps what they
/// fetched). Returns (items done, bytes) and the first error, if any.
async fn bounded<T, F, Fut>(
    items: Vec<T>,
    in_flight: usize,
    f: F,
) -> ((u64, u64), Option<LibraryError>)
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<u64, LibraryError>>,
{
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    let f = &f;
    let mut results = futures::stream::iter(items)
        .map(|item| async move {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let r = f(item).await;
            if r.is_err() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Some(r)
        })
        .buffer_unordered(in_flight.max(1));
    let mut done = (0u64, 0u64);
    let mut first_error = None;
    while let Some(r) = results.next().await {
        match r {
            Some(Ok(n)) => {
                done.0 += 1;
                done.1 += n;
            }
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {}
        }
    }
    (done, first_error)
}
