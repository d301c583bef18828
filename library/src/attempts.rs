//! Counting the HTTP attempts behind one request. The client (`object_store`) retries inside
//! a request (connection errors, 5xx, timeouts; a body cut off mid-transfer is resumed with a
//! ranged request) and does not say how often it tried, so an error that says "gave up after N
//! attempts" needs its own count: every request of [`crate::Remote`] runs in a [`scope`] with a
//! fresh counter, and the connector below counts each HTTP exchange the client starts in it.
//! An error then states the true count (a 400 or a 416, never retried, says nothing of
//! retries). The counter also keeps the HTTP status of the last exchange, so a caller asks
//! "was it a 416?" of a number, not of the client's wording.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};

tokio::task_local! {
    static ATTEMPTS: Arc<Counter>;
}

#[derive(Debug, Default)]
struct Counter {
    exchanges: AtomicU32,
    /// The status of the last exchange's response; 0 when it got none (a connection error,
    /// a timeout).
    status: AtomicU16,
}

/// One request's attempt counter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempts(Arc<Counter>);

impl Attempts {
    /// HTTP exchanges started so far for this request.
    pub fn get(&self) -> u32 {
        self.0.exchanges.load(Ordering::Relaxed)
    }

    /// The HTTP status the last exchange was answered with, if it was answered.
    pub fn last_status(&self) -> Option<u16> {
        match self.0.status.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    /// Runs `f` counting its HTTP exchanges in this counter.
    pub async fn scope<F: Future>(&self, f: F) -> F::Output {
        ATTEMPTS.scope(Arc::clone(&self.0), f).await
    }
}

/// The client's own connector, counting each exchange in the current request's counter.
#[derive(Debug, Default)]
pub(crate) struct CountingConnector {
    /// For S3: the client is built here, as object_store builds it, but following no
    /// redirect. reqwest follows them by default and strips `Authorization` on another host
    /// but not `x-amz-security-token`: a 307 from a hostile endpoint sent the session token
    /// to the host it named. A redirect is then the status it is, refused.
    pub s3: Option<S3Client>,
}

/// The settings of an S3 client built by [`CountingConnector`].
#[derive(Debug, Clone)]
pub(crate) struct S3Client {
    pub timeout: std::time::Duration,
    pub connect_timeout: std::time::Duration,
    pub pool_max_idle_per_host: usize,
    pub allow_http: bool,
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = match &self.s3 {
            None => ReqwestConnector::default().connect(options)?,
            Some(s) => HttpClient::new(
                reqwest::ClientBuilder::new()
                    .user_agent(concat!("tek/", env!("CARGO_PKG_VERSION")))
                    .timeout(s.timeout)
                    .connect_timeout(s.connect_timeout)
                    .pool_max_idle_per_host(s.pool_max_idle_per_host)
                    .redirect(reqwest::redirect::Policy::none())
                    // As object_store: compression would hide objects' sizes.
                    .no_gzip()
                    .no_brotli()
                    .no_zstd()
                    .no_deflate()
                    .https_only(!s.allow_http)
                    .build()
                    .map_err(|e| object_store::Error::Generic {
                        store: "S3",
                        source: Box::new(e),
                    })?,
            ),
        };
        Ok(HttpClient::new(Counting(inner)))
    }
}

#[derive(Debug)]
struct Counting(HttpClient);

#[async_trait::async_trait]
impl HttpService for Counting {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        // Outside a scope (no request of ours), nothing to count.
        let _ = ATTEMPTS.try_with(|a| {
            a.exchanges.fetch_add(1, Ordering::Relaxed);
            a.status.store(0, Ordering::Relaxed);
        });
        let got = self.0.execute(req).await;
        if let Ok(resp) = &got {
            let status = resp.status().as_u16();
            let _ = ATTEMPTS.try_with(|a| a.status.store(status, Ordering::Relaxed));
        }
        got
    }
}
