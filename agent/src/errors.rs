//! An error chain as one sentence for people: what was being done, then why, each cause once.
//!
//! anyhow's `{:#}` joins every cause's text with ": ". The library errors (`StoreError::Io`,
//! `DataError::Io`, `ImagerError::Target`, ...) write their `source` into their own text, so
//! that a report storing `e.to_string()` keeps the OS error, and also return it as their
//! source, so a program can find the `io::Error`; `{:#}` therefore said the OS error twice:
//! `creating /x: File exists (os error 17): File exists (os error 17)`. [`Chain`] leaves out
//! a cause whose text the one before it already ends with.

use std::fmt;

/// Displays an error and its causes, each cause once (see the module docs).
pub struct Chain<'a>(pub &'a anyhow::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text(self.0))
    }
}

/// The error and its causes as one line, each cause once (a cause already said by the one
/// above it, as `PullFailed` says its error, is not repeated). Control characters are shown
/// escaped: causes carry text from hostile sources (a remote's response body, a signature
/// file's key name), which must not move the cursor or forge a line on the terminal.
pub fn text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if out.is_empty() {
            out = part;
        } else if !out.contains(&part) {
            out.push_str(": ");
            out.push_str(&part);
        }
    }
    if out.chars().any(char::is_control) {
        return out
            .chars()
            .map(|c| match c {
                '\n' | '\r' | '\t' => ' '.to_string(),
                c if c.is_control() => c.escape_unicode().to_string(),
                c => c.to_string(),
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    #[error("creating {path}: {source}")]
    struct Io {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn an_os_error_is_said_once() {
        let e = Err::<(), _>(Io {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(17),
        })
        .context("exporting a@1 to /x")
        .unwrap_err();
        assert!(
            format!("{e:#}").matches("os error 17").count() == 2,
            "{e:#}"
        );
        let t = text(&e);
        assert_eq!(t.matches("os error 17").count(), 1, "{t}");
        assert!(
            t.starts_with("exporting a@1 to /x: creating /x: File exists"),
            "{t}"
        );
    }

    #[test]
    fn a_cause_said_inside_the_one_above_is_not_repeated_and_controls_are_escaped() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0} (3 chunks kept)")]
        struct Kept(#[source] std::io::Error);
        let inner = std::io::Error::other("HTTP 500: \u{1b}[2J<html>\nfake line");
        let e = anyhow::Error::new(Kept(inner)).context("pulling a@1");
        let t = text(&e);
        assert_eq!(t.matches("HTTP 500").count(), 1, "{t}");
        assert!(!t.chars().any(char::is_control), "{t:?}");
        assert!(t.contains("\\u{1b}[2J<html> fake line"), "{t}");
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let e = anyhow::anyhow!("no such key file")
            .context("loading key k")
            .context("signing a@1");
        assert_eq!(text(&e), "signing a@1: loading key k: no such key file");
        assert_eq!(Chain(&e).to_string(), text(&e));
    }
}
