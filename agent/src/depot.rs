//! The depot: the one state root under which tek keeps everything (store, staging, keys, jobs,
//! reports, audit log), and where each of those lives inside it.
//!
//! Resolution order: `--state DIR`, else `TEK_STATE`, else `/var/lib/tek` when running as root,
//! else `$XDG_DATA_HOME/tek` (or `~/.local/share/tek`). The store may live elsewhere
//! (`--store DIR` / `TEK_STORE`), e.g. on a shared volume.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Resolved locations of everything tek keeps.
#[derive(Debug, Clone)]
pub struct Depot {
    root: PathBuf,
    store: PathBuf,
    trusted_keys: PathBuf,
}

impl Depot {
    /// Resolves the state root and store from the command line values (which clap already
    /// filled from `TEK_STATE` / `TEK_STORE`), creating the root on first use.
    pub fn resolve(state: Option<PathBuf>, store: Option<PathBuf>) -> Result<Depot> {
        let root = match state {
            Some(p) => p,
            None => default_root()?,
        };
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating state directory {}", root.display()))?;
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
        let d = Depot::resolve(Some(root.clone()), None).unwrap();
        assert!(root.is_dir());
        assert_eq!(d.store(), root.join("store"));
        assert_eq!(d.staging(), root.join("staging"));
    }

    #[test]
    fn store_override() {
        let dir = tempfile::tempdir().unwrap();
        let d = Depot::resolve(Some(dir.path().into()), Some("/elsewhere".into())).unwrap();
        assert_eq!(d.store(), Path::new("/elsewhere"));
    }
}
