//! Client data custody settings, from one place for the `tek data`/`tek backup` commands and
//! the daemon's job steps, so both open custody the same way (same KEK, same holidays, same
//! ages): the `[custody]` table of `agent.toml`, then the environment as an override.
//!
//! ```toml
//! [custody]
//! kek = "/etc/tek/secrets/kek"          # key-encryption key (default <state>/keys/kek)
//! holidays = "/etc/tek/holidays"        # YYYY-MM-DD lines, `#` comments
//! max_staging_age_days = 14             # `tek data list` flags datasets staged longer
//! backup_retention_days = 3             # working days a key-backup epoch stays readable
//! ```
//!
//! Environment overrides (a value set there wins over the file): `TEK_KEK`, `TEK_HOLIDAYS`,
//! `TEK_MAX_STAGING_AGE_DAYS`, `TEK_BACKUP_RETENTION_DAYS`, and for demos and tests only
//! `TEK_TEST_NOW` (RFC 3339) to fix the clock.
//!
//! The `[restore]` table sets how long a restore waits for a target that stops answering
//! (`client_data::RestoreOptions::stall_warning`, `stall_limit`), for the job's restore and
//! `tek data restore` alike:
//!
//! ```toml
//! [restore]
//! stall_warn_secs = 30     # warn after this long without progress
//! stall_abort_secs = 120   # then give up on the driver (kill ntfs-3g, abort FUSE)
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use client_data::{Custody, CustodyConfig, CustodyPaths};
use serde::{Deserialize, Serialize};

use crate::Depot;
use crate::config::Config;

/// The `[custody]` table of `agent.toml`. Every key is optional: missing ones take the
/// built-in defaults of [`CustodyConfig`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustodySettings {
    /// Key-encryption key file (absolute).
    #[serde(default)]
    pub kek: Option<PathBuf>,
    /// File of public holidays, `YYYY-MM-DD` lines (absolute).
    #[serde(default)]
    pub holidays: Option<PathBuf>,
    /// Datasets staged longer than this many days are flagged.
    #[serde(default)]
    pub max_staging_age_days: Option<u32>,
    /// Working days a key-backup epoch lives.
    #[serde(default)]
    pub backup_retention_days: Option<u32>,
}

impl CustodySettings {
    /// Checks what serde cannot: absolute paths, day counts in range.
    pub fn validate(&self) -> Result<()> {
        for (key, p) in [("kek", &self.kek), ("holidays", &self.holidays)] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                bail!("custody.{key}: {} must be an absolute path", p.display());
            }
        }
        let deadline = CustodyConfig::default().deletion_deadline_days;
        check_days(
            "custody.max_staging_age_days",
            self.max_staging_age_days,
            u32::MAX,
        )?;
        check_days(
            "custody.backup_retention_days",
            self.backup_retention_days,
            deadline,
        )?;
        Ok(())
    }
}

/// The `[restore]` table of `agent.toml`: how long a restore waits on a target's driver that
/// stops answering. Integers (seconds); TOML refuses anything else with its line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestoreSettings {
    /// Warn after this many seconds without progress.
    #[serde(default = "default_stall_warn")]
    pub stall_warn_secs: u64,
    /// Give up after this many seconds without progress (kill the ntfs-3g tek started, or
    /// abort the FUSE connection), failing the restore with that reason.
    #[serde(default = "default_stall_abort")]
    pub stall_abort_secs: u64,
}

/// The longest `stall_abort_secs`: an hour of a hung bay is long enough to notice.
const MAX_STALL_ABORT_SECS: u64 = 3600;

fn default_stall_warn() -> u64 {
    30
}

fn default_stall_abort() -> u64 {
    120
}

impl Default for RestoreSettings {
    fn default() -> Self {
        RestoreSettings {
            stall_warn_secs: default_stall_warn(),
            stall_abort_secs: default_stall_abort(),
        }
    }
}

impl RestoreSettings {
    /// Checks the ranges: warn at least 1 s, abort later than the warning, at most an hour.
    pub fn validate(&self) -> Result<()> {
        let (warn, abort) = (self.stall_warn_secs, self.stall_abort_secs);
        if warn < 1 {
            bail!("restore.stall_warn_secs = {warn}: must be at least 1");
        }
        if abort <= warn {
            bail!(
                "restore.stall_abort_secs = {abort}: must be more than \
                 restore.stall_warn_secs ({warn})"
            );
        }
        if abort > MAX_STALL_ABORT_SECS {
            bail!("restore.stall_abort_secs = {abort}: must be at most {MAX_STALL_ABORT_SECS}");
        }
        Ok(())
    }

    /// Restore options with these limits (the rest default).
    pub fn options(&self) -> client_data::RestoreOptions {
        client_data::RestoreOptions {
            stall_warning: std::time::Duration::from_secs(self.stall_warn_secs),
            stall_limit: std::time::Duration::from_secs(self.stall_abort_secs),
            ..Default::default()
        }
    }
}

fn check_days(what: &str, v: Option<u32>, max: u32) -> Result<()> {
    match v {
        Some(0) => bail!("{what} must be at least 1"),
        Some(d) if d > max => bail!(
            "{what} = {d}: key backups would stay readable past the {max}-working-day \
             withdrawal deadline"
        ),
        _ => Ok(()),
    }
}

/// The configuration the commands use: `TEK_CONFIG` if set, else `/etc/tek/agent.toml` if it
/// exists, else the built-in defaults (the same file `tek status` and `tek job` read).
pub fn command_config() -> Result<Config> {
    let path = std::env::var_os("TEK_CONFIG").map(PathBuf::from);
    Config::load_or_default(path.as_deref())
}

/// The custody settings of `file` with the process environment's overrides.
pub fn custody_config(file: &CustodySettings) -> Result<CustodyConfig> {
    custody_config_with(file, |k| std::env::var_os(k))
}

/// [`custody_config`] with the environment given as a lookup (tests).
pub fn custody_config_with(
    file: &CustodySettings,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<CustodyConfig> {
    let d = CustodyConfig::default();
    let env_str = |name: &str| -> Result<Option<String>> {
        env(name)
            .map(|v| {
                v.into_string()
                    .map_err(|v| anyhow::anyhow!("{name}={} is not UTF-8", v.to_string_lossy()))
            })
            .transpose()
    };
    let env_days = |name: &str| -> Result<Option<u32>> {
        env_str(name)?
            .map(|v| {
                v.trim().parse().with_context(|| {
                    format!(
                        "parsing {name}=\"{}\" as a number of days",
                        v.escape_debug()
                    )
                })
            })
            .transpose()
    };
    let merged = CustodySettings {
        kek: env("TEK_KEK").map(PathBuf::from).or(file.kek.clone()),
        holidays: env("TEK_HOLIDAYS")
            .map(PathBuf::from)
            .or(file.holidays.clone()),
        max_staging_age_days: env_days("TEK_MAX_STAGING_AGE_DAYS")?.or(file.max_staging_age_days),
        backup_retention_days: env_days("TEK_BACKUP_RETENTION_DAYS")?
            .or(file.backup_retention_days),
    };
    // The same rules for a value from the environment as for one from the file, except that
    // a relative TEK_KEK/TEK_HOLIDAYS stays allowed (relative to the caller's directory).
    check_days(
        "TEK_MAX_STAGING_AGE_DAYS / custody.max_staging_age_days",
        merged.max_staging_age_days,
        u32::MAX,
    )?;
    check_days(
        "TEK_BACKUP_RETENTION_DAYS / custody.backup_retention_days",
        merged.backup_retention_days,
        d.deletion_deadline_days,
    )?;
    let mut cfg = CustodyConfig {
        kek: merged.kek,
        max_staging_age_days: merged
            .max_staging_age_days
            .unwrap_or(d.max_staging_age_days),
        backup_retention_days: merged
            .backup_retention_days
            .unwrap_or(d.backup_retention_days),
        ..d
    };
    if let Some(p) = &merged.holidays {
        cfg.holidays = read_holidays(p)?;
    }
    if let Some(t) = env_str("TEK_TEST_NOW")? {
        cfg.now = Some(client_data::dataset::parse_rfc3339(&t).with_context(|| {
            format!("parsing TEK_TEST_NOW=\"{}\" as RFC 3339", t.escape_debug())
        })?);
    }
    Ok(cfg)
}

fn read_holidays(path: &Path) -> Result<Vec<time::Date>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading holiday list {}", path.display()))?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            client_data::withdraw::parse_date(l)
                .with_context(|| format!("parsing holiday list {}", path.display()))
        })
        .collect()
}

/// Opens the custody of `depot` with the settings of `cfg` and the environment: the one way
/// both the commands and the daemon open it.
pub fn open_custody(depot: &Depot, cfg: &Config) -> Result<Custody> {
    let mut settings = custody_config(&cfg.custody)?;
    settings.letterhead = cfg.depot.letterhead()?;
    let paths = CustodyPaths {
        staging: depot.staging(),
        keys: depot.keys(),
        audit: depot.audit(),
        reports: depot.reports(),
    };
    Custody::open_with(paths, settings)
        .with_context(|| format!("opening client data custody in {}", depot.root().display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text)
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn table_is_read_and_defaults_fill_the_rest() {
        let c = parse("[custody]\nkek = \"/srv/k/kek\"\nmax_staging_age_days = 9\n").unwrap();
        let s = custody_config_with(&c.custody, env(&[])).unwrap();
        assert_eq!(s.kek.as_deref(), Some(Path::new("/srv/k/kek")));
        assert_eq!(s.max_staging_age_days, 9);
        assert_eq!(
            s.backup_retention_days,
            CustodyConfig::default().backup_retention_days
        );
        let none = custody_config_with(&parse("").unwrap().custody, env(&[])).unwrap();
        assert_eq!(none.kek, None);
    }

    #[test]
    fn environment_wins_over_the_file() {
        let c = parse("[custody]\nkek = \"/srv/k/kek\"\nbackup_retention_days = 2\n").unwrap();
        let s = custody_config_with(
            &c.custody,
            env(&[
                ("TEK_KEK", "/other/kek"),
                ("TEK_BACKUP_RETENTION_DAYS", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kek.as_deref(), Some(Path::new("/other/kek")));
        assert_eq!(s.backup_retention_days, 4);
    }

    #[test]
    fn unknown_key_in_the_table_is_refused_with_its_position() {
        let e = format!(
            "{:#}",
            parse("socket = \"/x\"\n[custody]\nkek_path = \"/k\"\n").unwrap_err()
        );
        assert!(e.contains("kek_path") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let e = format!(
            "{:#}",
            parse("[custody]\nkek = \"keys/kek\"\n").unwrap_err()
        );
        assert!(e.contains("custody.kek") && e.contains("absolute"), "{e}");
        let e = format!(
            "{:#}",
            parse("[custody]\nbackup_retention_days = 9\n").unwrap_err()
        );
        assert!(e.contains("withdrawal deadline"), "{e}");
        let e = format!(
            "{:#}",
            parse("[custody]\nmax_staging_age_days = \"x\"\n").unwrap_err()
        );
        assert!(e.contains("line 2"), "{e}");
        let e = custody_config_with(
            &CustodySettings::default(),
            env(&[("TEK_BACKUP_RETENTION_DAYS", "x")]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("TEK_BACKUP_RETENTION_DAYS"));
    }

    #[test]
    fn restore_stall_limits_are_read_and_checked() {
        let d = parse("").unwrap().restore.options();
        assert_eq!(
            (d.stall_warning.as_secs(), d.stall_limit.as_secs()),
            (30, 120)
        );
        let c = parse("[restore]\nstall_warn_secs = 5\nstall_abort_secs = 600\n").unwrap();
        let o = c.restore.options();
        assert_eq!(
            (o.stall_warning.as_secs(), o.stall_limit.as_secs()),
            (5, 600)
        );
        for (text, want) in [
            (
                "stall_warn_secs = 0",
                "restore.stall_warn_secs = 0: must be at least 1",
            ),
            (
                "stall_warn_secs = 60\nstall_abort_secs = 60",
                "restore.stall_abort_secs = 60: must be more than restore.stall_warn_secs (60)",
            ),
            (
                "stall_warn_secs = 200",
                "restore.stall_abort_secs = 120: must be more than restore.stall_warn_secs (200)",
            ),
            (
                "stall_abort_secs = 3601",
                "restore.stall_abort_secs = 3601: must be at most 3600",
            ),
        ] {
            let e = format!("{:#}", parse(&format!("[restore]\n{text}\n")).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
        // Not an integer, negative, or misspelt: TOML's error with the key and the line.
        for text in [
            "stall_warn_secs = 2.5",
            "stall_abort_secs = \"120\"",
            "stall_warn_secs = -1",
        ] {
            let e = format!("{:#}", parse(&format!("[restore]\n{text}\n")).unwrap_err());
            let key = text.split(' ').next().unwrap();
            assert!(e.contains(key) && e.contains("line 2"), "{text}: {e}");
        }
        let e = format!("{:#}", parse("[restore]\nstall_secs = 3\n").unwrap_err());
        assert!(e.contains("stall_secs") && e.contains("line 2"), "{e}");
        // The sample config shows the defaults, and parses.
        let sample = parse(include_str!("../../packaging/agent.toml.example")).unwrap();
        assert_eq!(sample.restore, RestoreSettings::default());
        assert!(include_str!("../../packaging/agent.toml.example").contains("[restore]"));
    }

    #[test]
    fn holidays_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("holidays");
        std::fs::write(&h, "# bank holidays\n2026-12-25\n2026-12-26 # boxing day\n").unwrap();
        let c = parse(&format!(
            "[custody]\nholidays = {:?}\n",
            h.display().to_string()
        ))
        .unwrap();
        let s = custody_config_with(&c.custody, env(&[])).unwrap();
        assert_eq!(s.holidays.len(), 2);
        std::fs::write(&h, "25/12/2026\n").unwrap();
        let e = custody_config_with(&c.custody, env(&[])).unwrap_err();
        assert!(format!("{e:#}").contains(&h.display().to_string()));
    }
}
