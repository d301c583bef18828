//! Human and machine output of the `tek` commands, in one place: the one size formatter
//! ([`size`]), counts with their plural ([`count`]), times to the second ([`when`]), and
//! [`emit`], which prints a result as pretty JSON (`--json`) or as the command's text. Tables
//! are [`super::table::Table`]. Everything goes to stdout through a locked writer, so a reader
//! that closes the pipe early (`| head`, `| grep -q`) gives an error, never a panic.
//!
//! The JSON convention of every command (README "Output for scripts"): a list is an array of
//! objects, a size is a number in a key ending in `_bytes` (or `bytes`), a time is an RFC 3339
//! string, and a failure is `{"error": {"code": "...", "message": "..."}}` on stdout with a
//! non-zero exit ([`super::failure`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// A byte count in binary units with one decimal: `512 B`, `64.0 MiB`, `931.5 GiB` (the same
/// words the service report uses: both come from [`blockdev::sysfs::human_size`]).
pub fn size(bytes: u64) -> String {
    blockdev::sysfs::human_size(bytes)
}

/// `1 entry`, `2 entries`, `0 chunks`: a count and its noun, in the plural unless it is one.
/// Regular English plurals (`-s`, `-es` after s/x/ch/sh, `-ies` after a consonant's y).
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        return format!("1 {noun}");
    }
    let consonant_y = noun.len() >= 2
        && noun.ends_with('y')
        && !matches!(
            noun.as_bytes()[noun.len() - 2],
            b'a' | b'e' | b'i' | b'o' | b'u'
        );
    if consonant_y {
        format!("{n} {}ies", &noun[..noun.len() - 1])
    } else if ["s", "x", "ch", "sh"].iter().any(|e| noun.ends_with(e)) {
        format!("{n} {noun}es")
    } else {
        format!("{n} {noun}s")
    }
}

/// An RFC 3339 time as people read it, to the second and in UTC:
/// `2026-12-02T04:51:44.123456789+01:00` -> `2026-12-02 03:51:44 UTC`. Text that is no RFC
/// 3339 time is shown as it is.
pub fn when(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let Ok(t) = time::OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return rfc3339.to_string();
    };
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// Prints `value` as pretty JSON when `json`, else the text `human` makes of it (printed as is:
/// it ends with a newline when it should).
pub fn emit<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        print(&human(value))
    }
}

/// Set once a command printed its JSON result: a check that then fails (`tek image verify`,
/// `tek image audit`, `tek write`) exits non-zero with that result as its one JSON document,
/// and [`super::failure::report`] adds no error object after it.
static JSON_PRINTED: AtomicBool = AtomicBool::new(false);

/// Whether a JSON result was printed (see [`JSON_PRINTED`]).
pub fn json_printed() -> bool {
    JSON_PRINTED.load(Ordering::Relaxed)
}

/// Prints `value` as pretty JSON and a newline.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("serializing output")?;
    text.push('\n');
    JSON_PRINTED.store(true, Ordering::Relaxed);
    print(&text)
}

/// Prints `text` as is.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(64 << 20), "64.0 MiB");
        assert_eq!(size(1_000_204_886_016), "931.5 GiB");
    }

    #[test]
    fn counts_with_plurals() {
        assert_eq!(count(1u64, "entry"), "1 entry");
        assert_eq!(count(2u64, "entry"), "2 entries");
        assert_eq!(count(0u64, "chunk"), "0 chunks");
        assert_eq!(count(3u64, "mismatch"), "3 mismatches");
        assert_eq!(count(2u64, "key"), "2 keys");
        assert_eq!(count(2u64, "day"), "2 days");
    }

    #[test]
    fn times_to_the_second_in_utc() {
        assert_eq!(
            when("2026-12-02T04:51:44.123456789Z"),
            "2026-12-02 04:51:44 UTC"
        );
        assert_eq!(when("2026-12-02T05:51:44+01:00"), "2026-12-02 04:51:44 UTC");
        assert_eq!(when("not a time"), "not a time");
    }
}
