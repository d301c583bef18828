//! A remote library's URL: parsed and checked once ([`RemoteUrl::parse`]), and what every
//! message shows. A URL tek accepts has no user, password, query or fragment, and a refused
//! one is shown without them ([`redact`]): a query may carry a presigned token.

use std::fmt;

use crate::error::LibraryError;

/// A remote's URL as given, checked; what every message shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub(crate) kind: Kind,
    /// Without a trailing '/'.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    S3 { bucket: String, prefix: String },
    Http { base: String },
}

impl RemoteUrl {
    /// Parses `s3://BUCKET[/PREFIX]` or `http(s)://HOST[:PORT][/PATH]`.
    pub fn parse(input: &str) -> Result<RemoteUrl, LibraryError> {
        let bad = |reason: &str| LibraryError::BadUrl {
            url: redact(input),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(input).map_err(|e| bad(&format!("not a URL ({e})")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a library URL has no query or fragment"));
        }
        let path = url.path().trim_matches('/').to_string();
        // The URL parser resolves dot segments away; the text as given must not have them,
        // since messages show it.
        let raw_path = input.split_once("://").map_or("", |(_, rest)| rest);
        if raw_path.split('/').any(|c| c == "." || c == "..") {
            return Err(bad("the path must not contain '.' or '..' components"));
        }
        let kind = match url.scheme() {
            "s3" => {
                let bucket = url.host_str().unwrap_or("").to_string();
                if bucket.is_empty() {
                    return Err(bad("expected s3://BUCKET/PREFIX"));
                }
                Kind::S3 {
                    bucket,
                    prefix: path,
                }
            }
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(bad("expected http(s)://HOST/PATH"));
                }
                Kind::Http {
                    base: input.trim_end_matches('/').to_string(),
                }
            }
            other => {
                return Err(bad(&format!(
                    "unsupported scheme {other:?}; use s3://, https:// or http://"
                )));
            }
        };
        Ok(RemoteUrl {
            kind,
            text: input.trim_end_matches('/').to_string(),
        })
    }

    /// True for `http(s)://` remotes (they cannot be pushed to).
    pub fn is_read_only(&self) -> bool {
        matches!(self.kind, Kind::Http { .. })
    }

    /// The URL of an object of this remote, for messages.
    pub fn object(&self, key: &str) -> String {
        format!("{}/{key}", self.text)
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A client's message as tek may show it: every word holding a URL (`://`) redacted as
/// [`redact`] does (a message of the HTTP or S3 client repeats the URL it was given, e.g. an
/// `AWS_ENDPOINT_URL` with a token in its query).
pub(crate) fn redact_urls(message: &str) -> String {
    message
        .split_inclusive(char::is_whitespace)
        .map(|w| {
            if w.contains("://") {
                let end = w.trim_end();
                format!("{}{}", redact(end), &w[end.len()..])
            } else {
                w.to_string()
            }
        })
        .collect()
}

/// A URL as an error message may show it: anything between `://` and an `@` (user and
/// password) goes, and so does everything from the first `?` or `#` on (a query or fragment may
/// carry a presigned token); what went is shown as `***`. Works on text that is not a URL too.
fn redact(input: &str) -> String {
    let (kept, tail) = match input.find(['?', '#']) {
        Some(i) => (&input[..i], &input[i..i + 1]),
        None => (input, ""),
    };
    let mut out = match (kept.find("://"), kept.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &kept[..s], &kept[at..]),
        _ => kept.to_string(),
    };
    if !tail.is_empty() {
        out.push_str(tail);
        out.push_str("***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_message_shows_no_query_or_userinfo_of_any_url_in_it() {
        assert_eq!(
            redact_urls(
                "error sending request for url (http://u:pw@127.0.0.1:9/b/k?X-Amz-Signature=s3cr3t): boom"
            ),
            "error sending request for url (http://***@127.0.0.1:9/b/k?*** boom"
        );
        assert_eq!(redact_urls("no url here? fine"), "no url here? fine");
    }

    #[test]
    fn urls() {
        let u = RemoteUrl::parse("s3://lib/depot/images/").unwrap();
        assert_eq!(
            u.kind,
            Kind::S3 {
                bucket: "lib".into(),
                prefix: "depot/images".into()
            }
        );
        assert_eq!(u.to_string(), "s3://lib/depot/images");
        assert!(!u.is_read_only());
        assert_eq!(
            u.object("images/a/1.json"),
            "s3://lib/depot/images/images/a/1.json"
        );
        let h = RemoteUrl::parse("http://127.0.0.1:8080/lib").unwrap();
        assert!(h.is_read_only());
        assert_eq!(
            h.object("index.json"),
            "http://127.0.0.1:8080/lib/index.json"
        );
        for bad in [
            "",
            "lib",
            "/srv/lib",
            "ftp://host/lib",
            "s3:///prefix",
            "s3://b/../x",
            "http://host/a?x=1",
            "file:///srv/lib",
        ] {
            let e = RemoteUrl::parse(bad).unwrap_err();
            assert!(matches!(e, LibraryError::BadUrl { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_refused_url_never_shows_its_query_fragment_or_user() {
        for (bad, shown) in [
            (
                "https://host/lib?X-Amz-Signature=t0ken",
                "\"https://host/lib?***\": a library URL has no query or fragment",
            ),
            ("https://host/lib#t0ken", "\"https://host/lib#***\""),
            (
                "https://u:t0ken@host/lib?t0ken",
                "\"https://***@host/lib?***\"",
            ),
            ("s3:///?t0ken", "\"s3:///?***\""),
            ("not a url?t0ken#t0ken", "\"not a url?***\": not a URL"),
        ] {
            let e = RemoteUrl::parse(bad).unwrap_err();
            let (msg, debug) = (e.to_string(), format!("{e:?}"));
            assert!(msg.contains(shown), "{bad}: {msg}");
            for s in [&msg, &debug] {
                assert!(!s.contains("t0ken"), "{bad}: {s}");
            }
        }
    }

    #[test]
    fn credentials_in_a_url_are_refused_and_not_repeated() {
        for bad in [
            "https://user:s3cr3t@host/lib",
            "s3://AKIDEXAMPLE:s3cr3t@bucket/lib",
        ] {
            let e = RemoteUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("credentials do not belong in the URL"), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }
}
