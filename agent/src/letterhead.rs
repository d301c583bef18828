//! The `[depot]` table of `agent.toml`: how the depot's printed documents (service reports,
//! sanitization records, deletion confirmations) name it, and the time zone they give times in.
//!
//! ```toml
//! [depot]
//! name = "TEK Express Leeds"             # default: the host name
//! address = ["Unit 4, Mill Lane", "Leeds LS1 4AB"]   # lines, at most 4
//! time_zone = "Europe/London"            # IANA name; default: the system's (/etc/localtime)
//! ```
//!
//! Limits keep a document on one page and its header honest: a name of at most 60 characters,
//! at most 4 address lines of at most 60, no control characters, a time zone this system's tz
//! database knows.

use anyhow::{Context, Result, bail};
use client_data::Letterhead;
use serde::{Deserialize, Serialize};

/// Longest name or address line, in characters (the header of an A4 page holds about that).
const MAX_LINE: usize = 60;
/// Most address lines.
const MAX_ADDRESS_LINES: usize = 4;

/// The `[depot]` table; every key optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DepotSettings {
    /// The depot's name as its documents print it.
    #[serde(default)]
    pub name: Option<String>,
    /// Postal address lines.
    #[serde(default)]
    pub address: Vec<String>,
    /// IANA time zone of the documents' times.
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl DepotSettings {
    /// Checks the limits and the time zone.
    pub fn validate(&self) -> Result<()> {
        self.letterhead().map(|_| ())
    }

    /// The letterhead the documents print.
    pub fn letterhead(&self) -> Result<Letterhead> {
        if let Some(n) = &self.name {
            check_line("depot.name", n)?;
        }
        if self.address.len() > MAX_ADDRESS_LINES {
            bail!(
                "depot.address has {} lines; at most {MAX_ADDRESS_LINES} fit a document's header",
                self.address.len()
            );
        }
        for (i, l) in self.address.iter().enumerate() {
            check_line(&format!("depot.address line {}", i + 1), l)?;
        }
        let name = self
            .name
            .clone()
            .unwrap_or_else(client_data::document::hostname);
        Letterhead::new(name, self.address.clone(), self.time_zone.as_deref())
            .context("depot.time_zone")
    }
}

fn check_line(what: &str, s: &str) -> Result<()> {
    if s.trim().is_empty() {
        bail!("{what} is empty");
    }
    if s.chars().count() > MAX_LINE {
        bail!(
            "{what} is {} characters long; at most {MAX_LINE}",
            s.chars().count()
        );
    }
    if s.chars().any(char::is_control) {
        bail!("{what} \"{}\" holds a control character", s.escape_debug());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn the_table_names_the_depot() {
        let c = Config::parse(
            "[depot]\nname = \"TEK Express Leeds\"\naddress = [\"Unit 4\", \"Leeds LS1 4AB\"]\n\
             time_zone = \"Europe/London\"\n",
        )
        .unwrap();
        let lh = c.depot.letterhead().unwrap();
        assert_eq!(lh.name, "TEK Express Leeds");
        assert_eq!(lh.address, ["Unit 4", "Leeds LS1 4AB"]);
        assert_eq!(lh.time("2026-07-01T09:00:00Z"), "2026-07-01 10:00:00 BST");
        // Without the table: the host name and the system's zone.
        let lh = Config::parse("").unwrap().depot.letterhead().unwrap();
        assert_eq!(lh.name, client_data::document::hostname());
    }

    #[test]
    fn bad_tables_are_refused_saying_what() {
        assert!(err("[depot]\ntime_zone = \"Europe/Leeds\"\n").contains("Europe/Leeds"));
        assert!(err("[depot]\nname = \"\"\n").contains("depot.name is empty"));
        let long = "x".repeat(61);
        assert!(err(&format!("[depot]\nname = \"{long}\"\n")).contains("at most 60"));
        assert!(err("[depot]\nname = \"a\\u0007b\"\n").contains("control character"));
        let e = err("[depot]\naddress = [\"1\", \"2\", \"3\", \"4\", \"5\"]\n");
        assert!(e.contains("5 lines"), "{e}");
        assert!(err("[depot]\ncity = \"Leeds\"\n").contains("city"));
        assert!(err("[depot]\naddress = \"one line\"\n").contains("line 2"));
    }
}
