//! A remote image library: its URL, the one client (`object_store`) for S3-compatible stores and
//! plain HTTP(S) servers, and the few requests push, pull and list make.
//!
//! - `s3://BUCKET/PREFIX`: endpoint, region and credentials come from the standard `AWS_*`
//!   environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). Without an access key, requests go
//!   unsigned (a public-read bucket); push needs one. Path-style requests, so any S3-compatible
//!   server works (MinIO, Garage, Ceph RGW, s3s).
//! - `http://HOST/PATH`, `https://HOST/PATH`: read-only, any static web server serving a pushed
//!   library's files.
//!
//! Credentials never appear in a URL tek accepts (user:password@ is refused) nor in anything it
//! prints: [`RemoteUrl`] is what messages show, and the client keeps secrets out of its errors.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::attempts::{Attempts, CountingConnector};
use crate::error::LibraryError;
use crate::remote_url::Kind;
pub use crate::remote_url::RemoteUrl;

/// Where and as whom an `s3://` remote is reached; [`S3Settings::from_env`] reads the standard
/// `AWS_*` variables. Its `Debug` never shows the secret.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// The endpoint (`http://127.0.0.1:9000`); None: AWS S3 for the region.
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`, what most S3-compatible servers expect).
    pub region: Option<String>,
    /// Access key id and secret; None: unsigned requests (a public-read bucket, pull only).
    pub credentials: Option<(String, Secret)>,
    /// A session token going with temporary credentials.
    pub session_token: Option<Secret>,
}

/// A secret string: its `Debug` and `Display` print `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.as_ref().map(|c| &c.0))
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// From `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    /// `AWS_ACCESS_KEY_ID` with `AWS_SECRET_ACCESS_KEY`, and `AWS_SESSION_TOKEN`.
    pub fn from_env() -> S3Settings {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        S3Settings {
            endpoint: var(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            region: var(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            credentials: var(&["AWS_ACCESS_KEY_ID"]).map(|id| {
                (
                    id,
                    Secret::new(var(&["AWS_SECRET_ACCESS_KEY"]).unwrap_or_default()),
                )
            }),
            session_token: var(&["AWS_SESSION_TOKEN"]).map(Secret::new),
        }
    }
}

/// How a remote is reached: concurrency, timeouts, retries, and S3 settings.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Endpoint, region and credentials of `s3://` remotes.
    pub s3: S3Settings,
    /// Chunk requests in flight at once.
    pub in_flight: usize,
    /// Longest a single request may take, end to end (a stalled server fails after this).
    pub timeout: Duration,
    /// Longest a connection may take to open.
    pub connect_timeout: Duration,
    /// Retries of a failed request (connection errors, 5xx, timeouts), with exponential
    /// backoff from [`RemoteOptions::backoff`].
    pub retries: usize,
    /// First backoff delay; doubled per retry.
    pub backoff: Duration,
    /// Largest pack file a push writes to a format-2 remote (compressed chunk bytes).
    pub pack_bytes: u64,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            s3: S3Settings::default(),
            in_flight: 16,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retries: 4,
            backoff: Duration::from_millis(200),
            pack_bytes: 64 << 20,
        }
    }
}

/// An opened remote: the client and where the library's objects live in it.
#[derive(Debug, Clone)]
pub struct Remote {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket ("" or "a/b/"); always "" for HTTP (the base URL has it).
    prefix: String,
    opts: RemoteOptions,
    /// Whether requests are signed (an access key was given).
    signed: bool,
    /// Requests made through this remote (retries not counted).
    requests: Arc<AtomicU64>,
}

impl Remote {
    /// Builds the client for `url` (no request is made yet).
    pub fn open(url: &RemoteUrl, opts: &RemoteOptions) -> Result<Remote, LibraryError> {
        let client_err = |e: object_store::Error| LibraryError::Client {
            url: url.clone(),
            reason: crate::remote_url::redact_urls(&e.to_string()),
        };
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: opts.backoff,
                max_backoff: opts.backoff * 16,
                base: 2.0,
            },
            max_retries: opts.retries,
            retry_timeout: opts.timeout * (opts.retries as u32 + 1),
        };
        let mut client = ClientOptions::new()
            .with_timeout(opts.timeout)
            .with_connect_timeout(opts.connect_timeout)
            .with_pool_max_idle_per_host(opts.in_flight.max(1));
        match &url.kind {
            Kind::S3 { bucket, prefix } => {
                let s3 = &opts.s3;
                // A plain-HTTP endpoint is the operator's explicit choice (a depot-internal
                // MinIO); https is the default everywhere else.
                client = client.with_allow_http(
                    s3.endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("http://")),
                );
                if let Some(e) = &s3.endpoint {
                    check_endpoint(e).map_err(|reason| LibraryError::Client {
                        url: url.clone(),
                        reason,
                    })?;
                }
                let signed = s3.credentials.is_some();
                // Not `from_env`: only what the settings say reaches the client.
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(s3.region.as_deref().unwrap_or("us-east-1"))
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_http_connector(CountingConnector {
                        s3: Some(crate::attempts::S3Client {
                            timeout: opts.timeout,
                            connect_timeout: opts.connect_timeout,
                            pool_max_idle_per_host: opts.in_flight.max(1),
                            allow_http: s3
                                .endpoint
                                .as_deref()
                                .is_some_and(|e| e.starts_with("http://")),
                        }),
                    })
                    .with_virtual_hosted_style_request(false)
                    .with_skip_signature(!signed);
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some((id, secret)) = &s3.credentials {
                    b = b.with_access_key_id(id).with_secret_access_key(&secret.0);
                }
                if let Some(t) = &s3.session_token {
                    b = b.with_token(&t.0);
                }
                let store = b.build().map_err(client_err)?;
                Ok(Remote {
                    url: url.clone(),
                    store: Arc::new(store),
                    prefix: if prefix.is_empty() {
                        String::new()
                    } else {
                        format!("{prefix}/")
                    },
                    opts: opts.clone(),
                    signed,
                    requests: Arc::default(),
                })
            }
            Kind::Http { base } => {
                client = client.with_allow_http(base.starts_with("http://"));
                let store = object_store::http::HttpBuilder::new()
                    .with_url(base.clone())
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_http_connector(CountingConnector::default())
                    .build()
                    .map_err(client_err)?;
                Ok(Remote {
                    url: url.clone(),
                    store: Arc::new(store),
                    prefix: String::new(),
                    opts: opts.clone(),
                    signed: false,
                    requests: Arc::default(),
                })
            }
        }
    }

    /// The remote's URL.
    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The options it was opened with.
    pub fn options(&self) -> &RemoteOptions {
        &self.opts
    }

    /// True when requests carry a signature (an access key was given).
    pub fn is_signed(&self) -> bool {
        self.signed
    }

    /// Requests made so far (GET, PUT, LIST calls; the client's retries are not counted, and a
    /// listing of more than 1,000 keys takes one request per 1,000).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{key}", self.prefix))
    }

    /// Fetches an object whole, refusing one larger than `limit` bytes before reading its body.
    /// `Ok(None)`: the remote has no such object.
    pub async fn get(&self, key: &str, limit: u64) -> Result<Option<Bytes>, LibraryError> {
        self.count();
        let attempts = Attempts::default();
        attempts
            .scope(self.get_counted(key, limit, &attempts))
            .await
    }

    async fn get_counted(
        &self,
        key: &str,
        limit: u64,
        attempts: &Attempts,
    ) -> Result<Option<Bytes>, LibraryError> {
        let r = match self.store.get(&self.path(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request_error("fetching", key, e, attempts)),
        };
        if r.meta.size > limit {
            return Err(LibraryError::Oversized {
                object: self.url.object(key),
                size: r.meta.size,
                limit,
            });
        }
        // A body cut off mid-way is resumed by the client (a ranged GET of the rest, if the
        // object's ETag is unchanged), within the same retries.
        let bytes = r
            .bytes()
            .await
            .map_err(|e| self.request_error("fetching", key, e, attempts))?;
        // The length header may lie; the body is what counts.
        if bytes.len() as u64 > limit {
            return Err(LibraryError::Oversized {
                object: self.url.object(key),
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(Some(bytes))
    }

    /// Fetches bytes `range` of an object (one ranged GET) as a stream of pieces as they
    /// arrive, so a caller checks what is complete while the rest is on its way. `Ok(None)`: the
    /// remote has no such object. The client checks the server answered with that range; the
    /// caller counts the bytes (a body longer or shorter than the range is the caller's error).
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<
        Option<futures::stream::BoxStream<'static, Result<Bytes, LibraryError>>>,
        LibraryError,
    > {
        use futures::StreamExt;
        self.count();
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..Default::default()
        };
        let attempts = Attempts::default();
        let got = attempts
            .scope(self.store.get_opts(&self.path(key), opts))
            .await;
        let r = match got {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request_error("fetching", key, e, &attempts)),
        };
        let this = self.clone();
        let key = key.to_string();
        // Each piece is awaited in the request's scope: the client's resumption of a cut body
        // counts as an attempt of this request, and an error says how many there were.
        let pieces =
            futures::stream::unfold((r.into_stream(), attempts), move |(mut body, attempts)| {
                let (this, key) = (this.clone(), key.clone());
                async move {
                    let piece = attempts.scope(body.next()).await?;
                    let piece =
                        piece.map_err(|e| this.request_error("fetching", &key, e, &attempts));
                    Some((piece, (body, attempts)))
                }
            });
        Ok(Some(pieces.boxed()))
    }

    /// An object's size (one HEAD); `Ok(None)`: the remote has no such object.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, LibraryError> {
        self.count();
        let attempts = Attempts::default();
        match attempts.scope(self.store.head(&self.path(key))).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.request_error("checking", key, e, &attempts)),
        }
    }

    /// Uploads an object whole (one PUT, atomic: readers see the old object or the new one).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), LibraryError> {
        if self.url.is_read_only() {
            return Err(LibraryError::ReadOnly {
                url: self.url.clone(),
            });
        }
        self.count();
        let attempts = Attempts::default();
        attempts
            .scope(
                self.store
                    .put(&self.path(key), PutPayload::from_bytes(data)),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.request_error("uploading", key, e, &attempts))
    }

    /// Uploads an object only if the remote has none of that name (S3 `If-None-Match: *`):
    /// `Ok(false)` when one exists already (a racing push won; the caller compares). A server
    /// that ignores the condition overwrites, as [`Remote::put`] would.
    pub async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, LibraryError> {
        if self.url.is_read_only() {
            return Err(LibraryError::ReadOnly {
                url: self.url.clone(),
            });
        }
        self.count();
        let opts = object_store::PutOptions::from(object_store::PutMode::Create);
        let attempts = Attempts::default();
        let path = self.path(key);
        let put = self
            .store
            .put_opts(&path, PutPayload::from_bytes(data), opts);
        match attempts.scope(put).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.request_error("uploading", key, e, &attempts)),
        }
    }

    /// Every object key under `dir` (relative to the library, e.g. `chunks/`), with its size.
    /// S3 only: a plain web server cannot list.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, LibraryError> {
        use futures::TryStreamExt;
        if self.url.is_read_only() {
            return Err(LibraryError::ReadOnly {
                url: self.url.clone(),
            });
        }
        self.count();
        let prefix = self.path(dir.trim_end_matches('/'));
        let attempts = Attempts::default();
        let listing = self.store.list(Some(&prefix)).try_collect::<Vec<_>>();
        let objects = attempts
            .scope(listing)
            .await
            .map_err(|e| self.request_error("listing", dir, e, &attempts))?;
        Ok(objects
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref();
                key.strip_prefix(&self.prefix)
                    .map(|k| (k.to_string(), m.size))
            })
            .collect())
    }

    /// Turns a client error into one naming the object; 401/403 become [`LibraryError::Denied`].
    /// The count of HTTP attempts is said only when there was more than one (the client
    /// retried): a status it never retries (400, 404, 416, ...) says nothing of retries.
    fn request_error(
        &self,
        action: &'static str,
        key: &str,
        e: object_store::Error,
        attempts: &Attempts,
    ) -> LibraryError {
        let object = self.url.object(key);
        match &e {
            object_store::Error::Unauthenticated { .. } => LibraryError::Denied {
                action,
                object,
                status: 401,
            },
            object_store::Error::PermissionDenied { .. } => LibraryError::Denied {
                action,
                object,
                status: 403,
            },
            object_store::Error::Generic { .. } => LibraryError::Request {
                action,
                object,
                reason: match (attempts.get(), root_cause(&e)) {
                    (_, r) if is_redirect(&r) && !self.url.is_read_only() => format!(
                        "{r} (a redirect: tek follows none from an S3 endpoint; point \
                         AWS_ENDPOINT_URL at the server that holds the bucket)"
                    ),
                    (n @ 2.., r) => format!("{r} (gave up after {n} attempts)"),
                    (_, r) => r,
                },
                status: attempts.last_status(),
            },
            _ => LibraryError::Request {
                action,
                object,
                reason: shortened(crate::remote_url::redact_urls(&e.to_string())),
                status: attempts.last_status(),
            },
        }
    }
}

/// Why an S3 endpoint (`AWS_ENDPOINT_URL`) cannot be used, if it cannot: the client would
/// panic on one it cannot parse, and an endpoint's user, password, query or fragment would be
/// a secret in the wrong place (refused, as they are in a remote URL; never shown).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let what = "the S3 endpoint (AWS_ENDPOINT_URL)";
    let u = url::Url::parse(endpoint).map_err(|e| {
        format!(
            "{what} {} is not a URL: {e}",
            crate::remote_url::redact_urls(endpoint).escape_debug()
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{what} must be http://HOST[:PORT] or https://HOST[:PORT], not {}",
            crate::remote_url::redact_urls(endpoint).escape_debug()
        ));
    }
    if !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
        || u.fragment().is_some()
    {
        return Err(format!(
            "{what} carries a user, password, query or fragment ({}); credentials go in \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            crate::remote_url::redact_urls(endpoint).escape_debug()
        ));
    }
    Ok(())
}

/// The innermost cause of a client error ("operation timed out", "Connection refused (os error
/// 111)", an HTTP status): the outer layers repeat the URL and the retry settings.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    // "...: 400 Bad Request: " when the body was empty.
    let text = cur.to_string();
    let mut text = text.trim_end_matches([':', ' ']);
    // The client's wording around a status adds nothing to it.
    text = text
        .strip_prefix("Server returned non-2xx status code: ")
        .unwrap_or(text);
    shortened(crate::remote_url::redact_urls(text))
}

/// True for a reason that is a 3xx status (see [`root_cause`]).
fn is_redirect(reason: &str) -> bool {
    reason.starts_with('3') && reason.as_bytes().get(3) == Some(&b' ')
}

/// At most [`MAX_REASON`] characters of a client's message: it may carry the server's whole
/// error body (a hostile server's 2 MB), which would go into job records and reports.
fn shortened(reason: String) -> String {
    match reason.char_indices().nth(MAX_REASON) {
        None => reason,
        Some((cut, _)) => format!(
            "{}... ({} more bytes of the server's answer not shown)",
            &reason[..cut],
            reason.len() - cut
        ),
    }
}

/// See [`shortened`].
const MAX_REASON: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_server_answer_is_cut_in_a_message() {
        assert_eq!(shortened("short".into()), "short");
        let long = format!("400 Bad Request: {}", "é".repeat(1000));
        let s = shortened(long);
        assert!(s.len() < 700 && s.starts_with("400 Bad Request: éé"), "{s}");
        assert!(
            s.ends_with("more bytes of the server's answer not shown)"),
            "{s}"
        );
    }
}
