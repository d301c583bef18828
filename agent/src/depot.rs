//! The depot: the one state root under which tek keeps everything (store, staging, keys, jobs,
//! reports, audit log), and where each of those lives inside it.
//!
//! Resolution order: `--state DIR`, else `TEK_STATE`, else `/var/lib/tek` when running as root,
//! else `$XDG_DATA_HOME/tek` (or `~/.local/share/tek`). The store may live elsewhere
//! (`--store DIR` / `TEK_STORE`), e.g. on a shared volume.
//!
//! A command that only reads opens the depot with [`Depot::open`], which refuses a root that
//! does not exist ([`StateRootMissing`]); a command that stores something uses
//! [`Depot::create`], which makes the root, `jobs/` and `reports/` private (0700).

use std::path::{Path, PathBuf};

use std::os::unix::fs::DirBuilderExt;

use anyhow::{Context, Result, bail};

/// Resolved locations of everything tek keeps.
#[derive(Debug, Clone)]
pub struct Depot {
    root: PathBuf,
    store: PathBuf,
    trusted_keys: PathBuf,
}

/// The state root a command reads does not exist. A command that only reads never creates
/// one: a misspelt `--state` must not make an empty depot and report that it holds nothing.
#[derive(Debug, thiserror::Error)]
#[error(
    "state root {} does not exist (check --state or TEK_STATE; a command that stores something, \
     such as `tek image import` or `tek data ingest`, creates it)",
    path.display()
)]
pub struct StateRootMissing {
    /// The root that was looked for.
    pub path: PathBuf,
}

/// Mode of the state root and of the directories holding client-identifying records (`jobs/`,
/// `reports/`): the depot's owner only, whatever the umask.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

impl Depot {
    /// The depot of a command that only reads it: the state root from the command line values
    /// (which clap already filled from `TEK_STATE` / `TEK_STORE`) must exist, else
    /// [`StateRootMissing`].
    pub fn open(state: Option<PathBuf>, store: Option<PathBuf>) -> Result<Depot> {
        let depot = Depot::locate(state, store)?;
        match std::fs::metadata(&depot.root) {
            Ok(m) if m.is_dir() => Ok(depot),
            Ok(_) => bail!("state root {} is not a directory", depot.root.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StateRootMissing { path: depot.root }.into())
            }
            Err(e) => {
                Err(e).with_context(|| format!("reading state root {}", depot.root.display()))
            }
        }
    }

    /// The depot of a command that stores something: creates the state root, `jobs/` and
    /// `reports/` (mode [`PRIVATE_DIR_MODE`]) when missing. Returns whether the root was made
    /// now, so the command can say so once.
    pub fn create(state: Option<PathBuf>, store: Option<PathBuf>) -> Result<(Depot, bool)> {
        let depot = Depot::locate(state, store)?;
        if let Some(parent) = depot.root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Whether this process made the root, from mkdir itself: of two first commands racing,
        // exactly one says it created the depot (a look before the mkdir let both say so).
        let created = make_private_dir(&depot.root)?;
        for dir in [depot.jobs(), depot.reports()] {
            private_dir(&dir)?;
        }
        Ok((depot, created))
    }

    /// Where the depot is, from the command line values, without looking at the disk (the
    /// agent, whose configuration may name another root; see [`Depot::for_agent`]).
    pub fn locate(state: Option<PathBuf>, store: Option<PathBuf>) -> Result<Depot> {
        let root = match state {
            Some(p) => p,
            None => default_root()?,
        };
        let store = store.unwrap_or_else(|| root.join("store"));
        let trusted_keys = if is_root() && root == Path::new("/var/lib/tek") {
            PathBuf::from("/etc/tek/trusted-keys")
        } else {
            root.join("trusted-keys")
        };
        Ok(Depot {
            root,
            store,
            trusted_keys,
        })
    }

    /// A depot rooted at `root` with default sub-paths (tests, the demo).
    pub fn at(root: &Path) -> Depot {
        Depot {
            root: root.to_path_buf(),
            store: root.join("store"),
            trusted_keys: root.join("trusted-keys"),
        }
    }

    /// The depot the agent uses: the configuration's `state` and `trusted_keys` override this
    /// one's.
    pub fn for_agent(&self, cfg: &crate::config::Config) -> Depot {
        let mut d = match &cfg.state {
            Some(s) => Depot::at(s),
            None => self.clone(),
        };
        if let Some(k) = &cfg.trusted_keys {
            d = d.with_trusted_keys(k.clone());
        }
        d
    }

    /// Overrides the trusted public keys directory.
    pub fn with_trusted_keys(mut self, dir: PathBuf) -> Depot {
        self.trusted_keys = dir;
        self
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The image store.
    pub fn store(&self) -> &Path {
        &self.store
    }
    /// Trusted public keys for manifest signatures.
    pub fn trusted_keys(&self) -> &Path {
        &self.trusted_keys
    }
    /// Encrypted client data staging.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    /// Key material (key-encryption key, wrapped dataset keys, backup epochs).
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// Persisted job journal.
    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }
    /// Service reports and sanitization records.
    pub fn reports(&self) -> PathBuf {
        self.root.join("reports")
    }
    /// The hash-chained audit log directory.
    pub fn audit(&self) -> PathBuf {
        self.root.join("audit")
    }
}

/// Creates `dir` with mode [`PRIVATE_DIR_MODE`] if it is missing (its parent must exist). The
/// mode is given to mkdir, so no umask widens it (a umask only removes bits); an existing
/// directory is left as its owner set it.
pub fn private_dir(dir: &Path) -> Result<()> {
    make_private_dir(dir).map(|_| ())
}

/// [`private_dir`], saying whether this call created it.
fn make_private_dir(dir: &Path) -> Result<bool> {
    match std::fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn default_root() -> Result<PathBuf> {
    if is_root() {
        return Ok(PathBuf::from("/var/lib/tek"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("tek"));
    }
    let home = std::env::var_os("HOME").context(
        "finding a state directory: neither --state, TEK_STATE, XDG_DATA_HOME nor HOME is set",
    )?;
    Ok(PathBuf::from(home).join(".local/share/tek"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_state_wins_and_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        let (d, created) = Depot::create(Some(root.clone()), None).unwrap();
        assert!(created && root.is_dir());
        assert_eq!(d.store(), root.join("store"));
        assert_eq!(d.staging(), root.join("staging"));
        assert!(!Depot::create(Some(root), None).unwrap().1, "created twice");
    }

    #[test]
    fn a_reader_refuses_a_missing_root_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("misspelt");
        let e = Depot::open(Some(root.clone()), None).unwrap_err();
        assert!(e.is::<StateRootMissing>(), "{e:#}");
        assert!(e.to_string().contains("misspelt"), "{e}");
        assert!(!root.exists());
        std::fs::write(&root, "x").unwrap();
        let e = Depot::open(Some(root), None).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn store_override() {
        let dir = tempfile::tempdir().unwrap();
        let d = Depot::open(Some(dir.path().into()), Some("/elsewhere".into())).unwrap();
        assert_eq!(d.store(), Path::new("/elsewhere"));
    }
}
