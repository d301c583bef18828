//! Pull on demand: a job whose image is not in the local store gets it from the bench's library
//! while its disk is being written.
//!
//! [`OnDemand::origin`] starts an [`image_library::Pull`] (manifest accepted only with a valid
//! signature by a trusted key, as for `tek image pull`) into a store whose arrivals name the
//! chunks still to come, and the fetch runs on its own thread: chunks in image order, 16 in
//! flight, each BLAKE3-checked before it is written and named in the store in batches. The
//! imager reads the image from [`Fetch::store`]: a chunk not there yet is waited for
//! (`image_store::arrivals`), never read unverified, and a failed fetch ends the write with the
//! fetch's error (chunk id and URL). Two jobs writing the same image share one fetch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use image_library::{LibraryError, Pull, PullReport, Remote, RemoteOptions};
use image_store::{Arrivals, ImageRef, LoadedImage, Store};

use blockdev::sysfs::human_size as size;

/// A fetch under way (or ended).
pub struct Fetch {
    store: Store,
    arrivals: Arc<Arrivals>,
    image: LoadedImage,
    url: String,
    done: Mutex<Option<Result<PullReport, String>>>,
    cv: Condvar,
}

impl Fetch {
    /// The store to read the image from: it waits for chunks still arriving.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The accepted manifest.
    pub fn image(&self) -> &LoadedImage {
        &self.image
    }

    /// Blocks until the fetch ended: its report, or its error as a sentence.
    pub fn wait(&self) -> Result<PullReport, String> {
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = &*d {
                return r.clone();
            }
            d = self.cv.wait(d).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The fetch's error if it failed (without waiting: the arrivals have it before any
    /// reader woke).
    pub fn error_now(&self) -> Option<String> {
        let why = self.arrivals.failure()?;
        Some(format!(
            "fetching {} from {}: {why}",
            format_args!(
                "{}@{}",
                self.image.manifest.name, self.image.manifest.version
            ),
            self.url
        ))
    }

    /// What the job's record says of where its image came from, once the fetch succeeded:
    /// "fetched from URL" only when at least one chunk or the manifest came from there.
    pub fn source_line(&self, r: &PullReport) -> String {
        if r.fetched == 0 && r.was_local {
            return "local store (every chunk already there)".into();
        }
        format!(
            "fetched from {}: {} of {} chunks ({} stored), {} already in the local store",
            self.url,
            r.fetched,
            r.chunks,
            size(r.fetched_bytes),
            r.present
        )
    }
}

/// Where a job's image comes from.
pub enum Origin {
    /// The local store has it.
    Local,
    /// The library, through this fetch.
    Fetching(Arc<Fetch>),
}

/// The bench's on-demand puller (one per agent).
pub struct OnDemand {
    remote: Option<Remote>,
    /// The same library with no retries and short timeouts: the cached-copy check, which must
    /// not hold a job for long when the library is down.
    probe: Option<Remote>,
    store: Arc<Store>,
    trusted_keys: PathBuf,
    fetches: Arc<Mutex<HashMap<ImageRef, Arc<Fetch>>>>,
    /// Manifests accepted from the library (a published NAME@VERSION never changes, and a job
    /// pins the hash it was checked with): the daemon's disk checks, which run under its lock,
    /// need no request for an image `tek job add` already asked about.
    manifests: Mutex<HashMap<ImageRef, LoadedImage>>,
}

impl OnDemand {
    /// The library of `remote` (None: no library) over `store`.
    pub fn new(remote: Option<Remote>, store: Arc<Store>, trusted_keys: &Path) -> Result<Self> {
        let probe = match &remote {
            Some(r) => {
                let opts = RemoteOptions {
                    retries: 0,
                    timeout: Duration::from_secs(5),
                    connect_timeout: Duration::from_secs(2),
                    ..r.options().clone()
                };
                Some(Remote::open(r.url(), &opts)?)
            }
            None => None,
        };
        Ok(OnDemand {
            remote,
            probe,
            store,
            trusted_keys: trusted_keys.to_path_buf(),
            fetches: Arc::default(),
            manifests: Mutex::default(),
        })
    }

    /// The library, when one is configured.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// Whether a job for `image` can get it: in the store, or a library is configured (which is
    /// asked when the job is added, [`OnDemand::load`]).
    pub fn can_get(&self, image: &ImageRef) -> bool {
        self.store.exists(image) || self.remote.is_some()
    }

    /// The image's manifest: the store's, else the library's (signature checked, nothing
    /// stored), else an error saying both.
    pub fn load(&self, image: &ImageRef) -> Result<LoadedImage> {
        if self.store.exists(image) || self.remote.is_none() {
            return self
                .store
                .load(image, &self.trusted_keys)
                .with_context(|| format!("loading image {image}"));
        }
        let known = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(img) = known.get(image) {
            return Ok(img.clone());
        }
        drop(known);
        let remote = self.remote.as_ref().expect("checked above");
        let img = image_library::fetch_checked(remote, image, &self.trusted_keys).map_err(|e| {
            anyhow!(
                "image {image} is not in the local store, and the library at {} cannot provide \
                 it: {e}",
                remote.url(),
            )
        })?;
        let mut known = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(image.clone(), img.clone());
        Ok(img)
    }

    /// Where a job writing `image` reads it from: the store, or a fetch (started now, or the
    /// one another job started).
    pub fn origin(&self, image: &ImageRef) -> Result<Origin> {
        let Some(remote) = &self.remote else {
            return Ok(Origin::Local);
        };
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fetches.get(image) {
            return Ok(Origin::Fetching(f.clone()));
        }
        if self.store.exists(image) {
            return Ok(Origin::Local);
        }
        let arrivals = Arrivals::new([]);
        let store = self.store.with_arrivals(arrivals.clone());
        let pull = Pull::start(remote, image, &store, &self.trusted_keys)
            .map_err(|e| anyhow!("fetching {image} from {}: {e}", remote.url()))?;
        let fetch = Arc::new(Fetch {
            store,
            arrivals,
            image: pull.image().clone(),
            url: remote.url().to_string(),
            done: Mutex::new(None),
            cv: Condvar::new(),
        });
        fetches.insert(image.clone(), fetch.clone());
        drop(fetches);
        let (f, all, r) = (fetch.clone(), self.fetches.clone(), image.clone());
        let url = remote.url().to_string();
        std::thread::Builder::new()
            .name("tek-fetch".into())
            .spawn(move || {
                let res = pull
                    .run(&|_| {})
                    .map_err(|e| format!("fetching {r} from {url}: {e}"));
                match &res {
                    Ok(p) => tracing::info!(image = %r, fetched = p.fetched, bytes = p.fetched_bytes, "fetched from {url}"),
                    Err(e) => tracing::warn!(image = %r, "{e}"),
                }
                all.lock().unwrap_or_else(|e| e.into_inner()).remove(&r);
                *f.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
                f.cv.notify_all();
            })
            .context("starting the fetch thread")?;
        Ok(Origin::Fetching(fetch))
    }

    /// What the job's record says of a cached image: the store's copy, and what the library
    /// said of it (one quick request, no retries), "library unreachable (...); using cached
    /// copy" when it did not answer.
    pub fn cached_line(&self, image: &ImageRef, local: &LoadedImage) -> String {
        let Some(probe) = &self.probe else {
            return "local store".into();
        };
        match image_library::fetch_checked(probe, image, &self.trusted_keys) {
            Ok(r) if r.manifest_hash == local.manifest_hash => {
                format!("local store (cached copy of {})", probe.url())
            }
            Ok(_) => format!(
                "local store; the library at {} holds another manifest under this name, the \
                 cached one was written",
                probe.url()
            ),
            Err(e @ LibraryError::NoSuchImage { .. }) => {
                format!("local store ({e}; using cached copy)")
            }
            Err(e) => format!("library unreachable ({e}); using cached copy"),
        }
    }
}
