//! The bench's image library (`[library]` in `agent.toml`, issue 14): where images a job needs
//! are pulled from on demand, with which credentials, and how much of it the local store may
//! keep as a cache.
//!
//! ```toml
//! [library]
//! url = "s3://depot-images/benches"     # or "https://images.depot.example/lib" (read-only)
//! credentials = "/etc/tek/library.toml" # optional, s3:// only: mode 0600, owned by root or
//!                                       # the agent's user
//! endpoint = "http://10.0.0.5:9000"     # optional, s3:// only (default: AWS_ENDPOINT_URL)
//! region = "us-east-1"                  # optional, s3:// only (default: AWS_REGION)
//! cache_max_bytes = 200_000_000_000     # optional: evict least recently used images past it
//! ```
//!
//! The credentials file (format 1, TOML, no other keys):
//!
//! ```toml
//! access_key_id = "AKIA..."
//! secret_access_key = "..."
//! session_token = "..."                 # optional
//! ```
//!
//! Without `credentials` the standard `AWS_*` variables apply, as for `tek image pull`. The
//! secret is read into [`image_library::Secret`] and appears in no log line and no message: a
//! refused file is named with the reason, never its content.

mod credentials;
pub mod evict;
pub mod ondemand;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use image_library::{Remote, RemoteOptions, RemoteUrl, S3Settings};
use serde::{Deserialize, Serialize};

pub use credentials::read_credentials;

/// The `[library]` table of `agent.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LibrarySettings {
    /// The library: `s3://BUCKET/PREFIX`, `https://HOST/PATH` or `http://HOST/PATH`. None: no
    /// library (jobs need their image in the local store).
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the S3 access key (see the module docs); absolute.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// S3 endpoint (overrides `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region (overrides `AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// Most bytes the store's chunk files may take after a pull; least recently used images
    /// that the library still has are evicted past it. None: never evict.
    #[serde(default)]
    pub cache_max_bytes: Option<u64>,
}

impl LibrarySettings {
    /// Checks what serde cannot: a URL tek reads, an absolute credentials path only with an
    /// `s3://` URL, an endpoint URL, a cache size above 0. The credentials file itself is
    /// checked when it is read ([`read_credentials`]), so a config check needs no secret.
    pub fn validate(&self) -> Result<()> {
        let Some(url) = &self.url else {
            for (key, set) in [
                ("credentials", self.credentials.is_some()),
                ("endpoint", self.endpoint.is_some()),
                ("region", self.region.is_some()),
                ("cache_max_bytes", self.cache_max_bytes.is_some()),
            ] {
                if set {
                    bail!("library.{key} is set but library.url is not");
                }
            }
            return Ok(());
        };
        let parsed = RemoteUrl::parse(url).context("library.url")?;
        if parsed.is_read_only() {
            for (key, set) in [
                ("credentials", self.credentials.is_some()),
                ("endpoint", self.endpoint.is_some()),
                ("region", self.region.is_some()),
            ] {
                if set {
                    bail!("library.{key} applies to s3:// libraries only; {parsed} is HTTP");
                }
            }
        }
        if let Some(p) = &self.credentials
            && !p.is_absolute()
        {
            bail!(
                "library.credentials: {} must be an absolute path",
                p.display()
            );
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            bail!(
                "library.endpoint \"{}\" must be an http:// or https:// URL",
                e.escape_debug()
            );
        }
        if self.cache_max_bytes == Some(0) {
            bail!(
                "library.cache_max_bytes = 0 would evict every image after each pull; give a \
                 size in bytes, or leave it out to never evict"
            );
        }
        Ok(())
    }

    /// The configured library, opened (no request made yet); None without `url`. Credentials:
    /// the `credentials` file when set, else `AWS_*`; endpoint and region: the table's, else
    /// `AWS_*`.
    pub fn open(&self) -> Result<Option<Remote>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let url = RemoteUrl::parse(url).context("library.url")?;
        let mut s3 = S3Settings::from_env();
        if let Some(p) = &self.credentials {
            let c = read_credentials(p)?;
            s3.credentials = Some((c.access_key_id, c.secret_access_key));
            s3.session_token = c.session_token;
        }
        if let Some(e) = &self.endpoint {
            s3.endpoint = Some(e.clone());
        }
        if let Some(r) = &self.region {
            s3.region = Some(r.clone());
        }
        let opts = RemoteOptions {
            s3,
            ..RemoteOptions::default()
        };
        // Its error names the URL already ("setting up the client for URL: ...").
        let remote = Remote::open(&url, &opts)?;
        Ok(Some(remote))
    }
}

#[cfg(test)]
mod tests {

    fn err(text: &str) -> String {
        format!("{:#}", crate::config::Config::parse(text).unwrap_err())
    }

    #[test]
    fn a_library_table_parses() {
        let c = crate::config::Config::parse(
            "[library]\nurl = \"s3://lib/bench\"\ncredentials = \"/etc/tek/lib.toml\"\n\
             endpoint = \"http://127.0.0.1:9000\"\ncache_max_bytes = 2_000_000_000\n",
        )
        .unwrap();
        assert_eq!(c.library.url.as_deref(), Some("s3://lib/bench"));
        assert_eq!(c.library.cache_max_bytes, Some(2_000_000_000));
        assert!(
            crate::config::Config::parse("")
                .unwrap()
                .library
                .url
                .is_none()
        );
    }

    #[test]
    fn bad_library_values_get_clear_errors() {
        for (text, want) in [
            ("[library]\nurl = \"ftp://x/y\"\n", "unsupported scheme"),
            ("[library]\nurl = \"s3://\"\n", "library.url"),
            (
                "[library]\nurl = \"https://u:pw@h/x\"\n",
                "credentials do not belong",
            ),
            (
                "[library]\ncache_max_bytes = 5000000\n",
                "library.url is not",
            ),
            (
                "[library]\nurl = \"s3://b/p\"\ncredentials = \"lib.toml\"\n",
                "must be an absolute path",
            ),
            (
                "[library]\nurl = \"http://h/lib\"\ncredentials = \"/etc/x\"\n",
                "s3:// libraries only",
            ),
            (
                "[library]\nurl = \"s3://b/p\"\nendpoint = \"h:9000\"\n",
                "http:// or https://",
            ),
            (
                "[library]\nurl = \"s3://b/p\"\ncache_max_bytes = 0\n",
                "evict every image",
            ),
            (
                "[library]\nurl = \"s3://b/p\"\ncache_max_bytes = -1\n",
                "cache_max_bytes",
            ),
            ("[library]\nurll = \"s3://b/p\"\n", "urll"),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }
}
