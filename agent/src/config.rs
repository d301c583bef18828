//! The agent's configuration file (`/etc/tek/agent.toml` by default, `tek agent --config FILE`).
//!
//! ```toml
//! socket = "/run/tek/agent.sock"      # control socket (mode 0660)
//! socket_group = "tek"                # group owning it, when that group exists
//! state = "/var/lib/tek"              # optional; default: the depot (`--state`)
//! trusted_keys = "/etc/tek/trusted-keys"  # optional; default: the depot's
//!
//! [policy]
//! beyond_image = "auto"               # auto | overwrite | skip: what to do past the image's end
//! allow_unsigned = false              # write images with no valid trusted signature?
//! require_clean_image = true          # refuse images whose privacy audit is missing or not
//!                                     # clean (unaccepted personal/risk findings)
//! allowed_buses = ["usb", "ata", "nvme", "scsi", "virtual"]  # for jobs matched by serial
//!                                     # (only ever disks in a bay: see `serial_jobs`)
//! share_write_window_ms = 2000       # jobs writing the same image within this window share
//!                                     # one decode (0: every job writes alone, at once)
//!
//! [custody]                          # client data custody (`settings.rs`); env overrides
//! kek = "/etc/tek/secrets/kek"        # default <state>/keys/kek
//!
//! [depot]                            # the documents' letterhead (`letterhead.rs`)
//! name = "TEK Express Leeds"          # default: the host name
//! address = ["Unit 4, Mill Lane", "Leeds LS1 4AB"]
//! time_zone = "Europe/London"         # default: the system's
//!
//! [library]                          # images pulled on demand (`library/mod.rs`)
//! url = "s3://depot-images/benches"   # or https://HOST/PATH; cache_max_bytes, credentials
//!
//! [[bay]]
//! name = "left-dock"
//! port_path = "pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0"
//!
//! [[bay]]
//! name = "provisioning"
//! port_path = "pci-0000:00:17.0-ata-2"
//! default_image = "win11-base@2024.10"   # anything plugged in here gets this image, no data
//! serial_jobs = false                 # no `tek job add --serial` job takes a disk here
//!                                     # (default true; a disk outside every bay: never)
//!
//! [[bay]]
//! name = "virtual-1"
//! loop_backing = "/srv/tek-virtual/bay1-*.img"   # a virtual bay: loop devices over these files
//! ```
//!
//! Unknown keys are errors (a misspelt key must not silently disable a safety knob), and every
//! error names the file and, for syntax and type errors, the line and column.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use blockdev::Bus;
use image_store::ImageRef;
use serde::{Deserialize, Serialize};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/tek/agent.toml";
/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/tek/agent.sock";

/// The whole agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Control socket path.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group given ownership of the socket, if it exists on this system.
    #[serde(default = "default_group")]
    pub socket_group: String,
    /// State root override (store, staging, keys, jobs, reports, audit).
    #[serde(default)]
    pub state: Option<PathBuf>,
    /// Trusted public keys directory override.
    #[serde(default)]
    pub trusted_keys: Option<PathBuf>,
    /// Policy knobs.
    #[serde(default)]
    pub policy: Policy,
    /// Client data custody settings, shared by the commands and the daemon.
    #[serde(default)]
    pub custody: crate::settings::CustodySettings,
    /// How long a restore waits on a target's driver that stops answering.
    #[serde(default)]
    pub restore: crate::settings::RestoreSettings,
    /// How the printed documents name the depot (`letterhead.rs`).
    #[serde(default)]
    pub depot: crate::letterhead::DepotSettings,
    /// The image library jobs pull from on demand (`library/mod.rs`).
    #[serde(default)]
    pub library: crate::library::LibrarySettings,
    /// The bench bays.
    #[serde(default, rename = "bay")]
    pub bays: Vec<BayConfig>,
}

/// What to do with the part of a disk beyond the image's end (the imager's type).
pub use imager::BeyondImage;

/// Policy knobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Clearing beyond the image.
    #[serde(default)]
    pub beyond_image: BeyondImage,
    /// Whether images without a valid trusted signature may be written.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Refuse images whose privacy audit is missing, failed, or has unaccepted personal/risk
    /// findings (DESIGN invariant 7).
    #[serde(default = "default_true")]
    pub require_clean_image: bool,
    /// Buses on which a disk in a bay may be matched by a job's expected serial.
    #[serde(default = "default_buses")]
    pub allowed_buses: Vec<Bus>,
    /// Jobs that start writing the same image within this many milliseconds share one
    /// read/decode of it (`shared_write.rs`); 0 writes every job alone, at once.
    #[serde(default = "default_share_window")]
    pub share_write_window_ms: u64,
}

fn default_share_window() -> u64 {
    2000
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            beyond_image: BeyondImage::Auto,
            allow_unsigned: false,
            require_clean_image: true,
            allowed_buses: default_buses(),
            share_write_window_ms: default_share_window(),
        }
    }
}

/// Bus names accepted in `allowed_buses`.
pub const KNOWN_BUSES: &[&str] = &["usb", "ata", "nvme", "scsi", "virtual", "mmc", "other"];

/// One bench bay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BayConfig {
    /// Name shown to technicians and used by `tek job add --bay`.
    pub name: String,
    /// Physical port path (udev `ID_PATH` style), from `tek bays --discover`.
    #[serde(default)]
    pub port_path: Option<String>,
    /// For a virtual bay: a glob over loop devices' backing-file paths.
    #[serde(default)]
    pub loop_backing: Option<String>,
    /// A provisioning bay: every disk plugged in gets this image (`NAME@VERSION`), no data.
    #[serde(default)]
    pub default_image: Option<ImageRef>,
    /// Whether a job for a serial number may take a disk in this bay (default true). Disks
    /// outside every bay are never matched, whatever this says.
    #[serde(default = "default_true")]
    pub serial_jobs: bool,
}

fn default_true() -> bool {
    true
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_group() -> String {
    "tek".to_string()
}
fn default_buses() -> Vec<Bus> {
    vec![Bus::Usb, Bus::Ata, Bus::Nvme, Bus::Scsi]
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: default_socket(),
            socket_group: default_group(),
            state: None,
            trusted_keys: None,
            policy: Policy::default(),
            custody: Default::default(),
            restore: Default::default(),
            depot: Default::default(),
            library: Default::default(),
            bays: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("loading configuration {}", path.display()))
    }

    /// Reads `path` if given, else the default file if it exists, else the built-in defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config> {
        match path {
            Some(p) => Config::load(p),
            None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG)),
            None => Ok(Config::default()),
        }
    }

    /// The daemon's configuration: `path` (`--config FILE` or `TEK_CONFIG`), else
    /// [`DEFAULT_CONFIG`], which must then exist. Unlike the commands, the daemon never falls
    /// back to built-in defaults: an agent without its configuration would take the socket and
    /// serve no bays.
    pub fn load_for_daemon(path: Option<&Path>) -> Result<Config> {
        let file = path.unwrap_or(Path::new(DEFAULT_CONFIG));
        if path.is_none() && !file.exists() {
            anyhow::bail!(
                "not starting: no configuration at {} (write it from the annotated \
                 agent.toml.example, or give --config FILE)",
                file.display()
            );
        }
        Config::load(file)
    }

    /// Parses and validates configuration text. Syntax and type errors carry line and column.
    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: unique names, exactly one matcher per bay, valid globs and
    /// image references, known bus names.
    pub fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        for (i, bay) in self.bays.iter().enumerate() {
            let at = format!("bay #{} (\"{}\")", i + 1, bay.name.escape_debug());
            // At most 50: a provisioning bay's jobs get the ticket `provisioning-<name>`, which
            // must pass the id rule (64 characters) like every ticket.
            if bay.name.is_empty()
                || bay.name.len() > 50
                || !bay
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!("{at}: name must be 1-50 of [A-Za-z0-9._-]");
            }
            if !names.insert(bay.name.as_str()) {
                bail!("{at}: the name is used by another bay");
            }
            match (&bay.port_path, &bay.loop_backing) {
                (Some(_), Some(_)) => bail!("{at}: give port_path or loop_backing, not both"),
                (None, None) => bail!("{at}: needs port_path or loop_backing"),
                (Some(p), None) if p.trim().is_empty() => bail!("{at}: port_path is empty"),
                (None, Some(g)) => {
                    glob::Pattern::new(g).with_context(|| {
                        format!("{at}: parsing loop_backing glob \"{}\"", g.escape_debug())
                    })?;
                    if !g.starts_with('/') {
                        bail!(
                            "{at}: loop_backing \"{}\" must be an absolute path glob",
                            g.escape_debug()
                        );
                    }
                }
                _ => {}
            }
        }
        for bus in &self.policy.allowed_buses {
            if !KNOWN_BUSES.contains(&bus.to_string().as_str()) {
                bail!(
                    "policy.allowed_buses: unknown bus \"{bus}\" (known: {})",
                    KNOWN_BUSES.join(", ")
                );
            }
        }
        self.custody.validate()?;
        self.restore.validate()?;
        self.depot.validate()?;
        self.library.validate()?;
        Ok(())
    }

    /// The bay called `name`.
    pub fn bay(&self, name: &str) -> Option<&BayConfig> {
        self.bays.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
            socket = "/tmp/x.sock"
            [policy]
            beyond_image = "skip"
            allow_unsigned = true
            allowed_buses = ["usb", "virtual"]
            [[bay]]
            name = "left"
            port_path = "pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0"
            [[bay]]
            name = "prov"
            port_path = "pci-0000:00:17.0-ata-2"
            default_image = "base@1.0"
            [[bay]]
            name = "v1"
            loop_backing = "/tmp/t/*.img"
        "#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.socket_group, "tek");
        assert_eq!(c.policy.beyond_image, BeyondImage::Skip);
        assert!(c.policy.allow_unsigned);
        assert_eq!(c.bays.len(), 3);
        assert_eq!(
            c.bay("prov").unwrap().default_image,
            Some("base@1.0".parse().unwrap())
        );
    }

    #[test]
    fn empty_file_gives_safe_defaults() {
        let c = Config::parse("").unwrap();
        assert!(!c.policy.allow_unsigned);
        assert_eq!(c.policy.beyond_image, BeyondImage::Auto);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(c.bays.is_empty());
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e = err("[policy]\nalow_unsigned = true\n");
        assert!(e.contains("alow_unsigned"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_enum_value_names_the_line() {
        let e = err("[policy]\nbeyond_image = \"zap\"\n");
        assert!(e.contains("line 2") && e.contains("zap"), "{e}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = err("socket = \n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn bay_needs_exactly_one_matcher() {
        assert!(err("[[bay]]\nname = \"a\"\n").contains("needs port_path or loop_backing"));
        let e = err("[[bay]]\nname = \"a\"\nport_path = \"x\"\nloop_backing = \"/a*\"\n");
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn bay_name_fits_a_provisioning_ticket() {
        let name = "b".repeat(51);
        let e = err(&format!("[[bay]]\nname = \"{name}\"\nport_path = \"x\"\n"));
        assert!(e.contains("1-50 of"), "{e}");
        let name = "b".repeat(50);
        let c = Config::parse(&format!("[[bay]]\nname = \"{name}\"\nport_path = \"x\"\n")).unwrap();
        client_data::dataset::check_ident("ticket", &format!("provisioning-{}", c.bays[0].name))
            .unwrap();
    }

    #[test]
    fn duplicate_bay_names_refused() {
        let e = err(
            "[[bay]]\nname = \"a\"\nport_path = \"x\"\n[[bay]]\nname = \"a\"\nport_path = \"y\"\n",
        );
        assert!(e.contains("bay #2") && e.contains("another bay"), "{e}");
    }

    #[test]
    fn bad_glob_and_relative_glob_refused() {
        assert!(err("[[bay]]\nname = \"a\"\nloop_backing = \"/a[\"\n").contains("glob"));
        assert!(err("[[bay]]\nname = \"a\"\nloop_backing = \"a*\"\n").contains("absolute"));
    }

    #[test]
    fn bad_default_image_refused() {
        let e = err("[[bay]]\nname = \"a\"\nport_path = \"x\"\ndefault_image = \"noversion\"\n");
        assert!(e.contains("NAME@VERSION") && e.contains("line 4"), "{e}");
        let e = err("[[bay]]\nname = \"a\"\nport_path = \"x\"\ndefault_image = \"a@-1\"\n");
        assert!(e.contains("must not start with"), "{e}");
        let ok = "[[bay]]\nname = \"a\"\nport_path = \"x\"\ndefault_image = \"a.b_c@1.0+x\"\n";
        assert_eq!(
            Config::parse(ok).unwrap().bays[0].default_image,
            Some("a.b_c@1.0+x".parse().unwrap())
        );
    }

    #[test]
    fn unknown_bus_refused() {
        let e = err("[policy]\nallowed_buses = [\"firewire\"]\n");
        assert!(e.contains("firewire"), "{e}");
    }

    #[test]
    fn missing_file_names_it() {
        let e = format!(
            "{:#}",
            Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err()
        );
        assert!(e.contains("/nonexistent/agent.toml"), "{e}");
    }
}
