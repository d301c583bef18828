//! What every printed document shares: the depot's letterhead (name, address, time zone), how a
//! document says a time and a size, and the page every document template extends
//! (`templates/document.html`: an A4 sheet with the letterhead at the top and signature lines at
//! the bottom).
//!
//! Documents are [askama] templates, one per document, compiled into the binary:
//! `sanitization.html` (the staging wipe's record, [`crate::SanitizationRecord`]),
//! `deletion.html` (the client's deletion confirmation, [`crate::DeletionCase`]), and the agent's
//! service report, which extends this crate's `document.html` too. A template only lays out
//! values a view struct prepared as text: times in the depot's zone to the second, sizes in units
//! with the exact byte count, labels a client can read.

use std::path::Path;

use crate::error::DataError;

/// The depot as its documents name it: `[depot]` in `agent.toml`.
#[derive(Debug, Clone)]
pub struct Letterhead {
    /// The depot's name ("TEK Express Leeds depot"); the host name when not configured.
    pub name: String,
    /// Postal address, one line per element.
    pub address: Vec<String>,
    zone: jiff::tz::TimeZone,
    zone_name: String,
}

impl Default for Letterhead {
    /// The host name, no address, the system's time zone (UTC when it has none).
    fn default() -> Self {
        Letterhead::new(hostname(), Vec::new(), None).unwrap_or_else(|_| Letterhead {
            name: hostname(),
            address: Vec::new(),
            zone: jiff::tz::TimeZone::UTC,
            zone_name: "UTC".into(),
        })
    }
}

impl Letterhead {
    /// A letterhead; `time_zone` is an IANA name ("Europe/London"), `None` for the system's
    /// zone. An unknown zone is an error: a document must not silently show times in another
    /// zone than the one configured.
    pub fn new(
        name: String,
        address: Vec<String>,
        time_zone: Option<&str>,
    ) -> Result<Letterhead, DataError> {
        let (zone, zone_name) = match time_zone {
            Some(tz) => {
                let zone = jiff::tz::TimeZone::get(tz).map_err(|e| DataError::Invalid {
                    what: "time zone",
                    value: tz.to_string(),
                    reason: format!("not a time zone this system knows ({e})"),
                })?;
                (zone, tz.to_string())
            }
            None => {
                let zone = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
                let name = zone.iana_name().unwrap_or("UTC").to_string();
                (zone, name)
            }
        };
        Ok(Letterhead {
            name,
            address,
            zone,
            zone_name,
        })
    }

    /// The time zone's IANA name ("Europe/London").
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// An RFC 3339 time as the depot reads it, to the second: `2026-03-11 10:00:07 GMT`. A value
    /// that is not RFC 3339 is shown as it is (an old record), never dropped.
    pub fn time(&self, rfc3339: &str) -> String {
        self.zoned(rfc3339, "%Y-%m-%d %H:%M:%S %Z")
    }

    /// The calendar date of an RFC 3339 time in the depot's zone (`2026-03-11`); a bare date
    /// (`YYYY-MM-DD`, a deadline) is shown as it is.
    pub fn date(&self, rfc3339: &str) -> String {
        self.zoned(rfc3339, "%Y-%m-%d")
    }

    /// `rfc3339` in the depot's zone as `format` (strftime) says; as given when not RFC 3339.
    fn zoned(&self, rfc3339: &str, format: &str) -> String {
        match rfc3339.parse::<jiff::Timestamp>() {
            Ok(t) => t
                .to_zoned_datetime(self.zone.clone())
                .strftime(format)
                .to_string(),
            Err(_) => rfc3339.to_string(),
        }
    }
}

/// A size a reader can take in, with the exact count where exact bytes matter:
/// `1.5 GiB (1610612736 bytes)`; below 1 KiB just `512 bytes`.
pub fn size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} {}", if bytes == 1 { "byte" } else { "bytes" });
    }
    format!("{} ({bytes} bytes)", blockdev::sysfs::human_size(bytes))
}

/// `n` with its noun, singular or plural: `1 entry`, `3 entries`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A duration to a tenth of a second, or whole minutes and seconds from a minute on.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

/// This machine's host name ("unknown" when the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string(Path::new("/proc/sys/kernel/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Renders a document template; a template's only failure is a value's `Display` failing,
/// which none of ours do, so the error text stands in the page rather than losing the record.
pub(crate) fn render(t: &impl askama::Template) -> String {
    t.render()
        .unwrap_or_else(|e| format!("<!doctype html><p>rendering failed: {e}</p>\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_say_units_and_exact_bytes() {
        assert_eq!(size(1), "1 byte");
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(1_610_612_736), "1.5 GiB (1610612736 bytes)");
        assert_eq!(count(1, "entry", "entries"), "1 entry");
        assert_eq!(count(0, "entry", "entries"), "0 entries");
    }

    #[test]
    fn times_are_in_the_depot_zone_to_the_second() {
        let lh = Letterhead::new("D".into(), vec![], Some("Europe/Berlin")).unwrap();
        assert_eq!(
            lh.time("2026-03-11T10:00:07.123456Z"),
            "2026-03-11 11:00:07 CET"
        );
        assert_eq!(lh.time("2026-07-11T10:00:07Z"), "2026-07-11 12:00:07 CEST");
        assert_eq!(lh.date("2026-03-11T23:30:00Z"), "2026-03-12");
        assert_eq!(lh.time("yesterday"), "yesterday", "kept as recorded");
        assert_eq!(lh.zone_name(), "Europe/Berlin");
    }

    #[test]
    fn an_unknown_zone_is_refused() {
        let e = Letterhead::new("D".into(), vec![], Some("Mars/Olympus")).unwrap_err();
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn durations_read_as_time() {
        assert_eq!(duration(0.000037631), "0.0 s");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(125.0), "2 min 05 s");
        assert_eq!(duration(3.0 * 3600.0 + 61.0), "3 h 01 min");
    }
}
