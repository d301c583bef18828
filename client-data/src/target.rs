//! The directory a restore writes beneath, held as an open descriptor.
//!
//! A restore never re-resolves its target by path: the path is resolved once, here, and every
//! later open is relative to the descriptor (`restore`, `readback`). For the agent the target is
//! an image's `data_path` inside the freshly mounted data partition, and that filesystem came
//! from the image: hostile input. [`RestoreTarget::beneath`] walks `data_path` one component at a
//! time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` relative to the
//! previous component, creating missing ones with `mkdirat`, so a symlink at any component
//! (`Users -> /srv/host`) or a mount point (a bind mount over `Users`) is refused instead of
//! followed off the disk.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, mkdirat};

use crate::error::{DataError, io};
use crate::sys::open_beneath;

/// An open directory to restore beneath, with the path it was opened as (for messages only).
#[derive(Debug)]
pub struct RestoreTarget {
    dir: File,
    label: PathBuf,
    fs: TargetFs,
    /// `st_dev` of the directory and whether it is on FUSE, read once at open: a restore's
    /// watchdog needs them when the driver may no longer answer a `fstat`.
    dev: Option<u64>,
    fuse: bool,
}

/// The kind of filesystem a restore writes into, which decides names and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetFs {
    /// A POSIX filesystem (ext4, xfs, btrfs, tmpfs...): names as staged; owners, modes, extended
    /// attributes and ACLs set.
    Posix,
    /// NTFS through ntfs-3g (FUSE): Windows names, DOS attributes, creation time
    /// (`system.ntfs_crtime_be`), alternate data streams (`user.*`), inherited descriptors
    /// (`system.ntfs_acl`).
    Ntfs3g,
    /// NTFS through the kernel's ntfs3 driver: as [`TargetFs::Ntfs3g`], descriptor through
    /// `system.ntfs_security`, no way to set the creation time.
    Ntfs3,
    /// FAT (vfat, exFAT): Windows names; no owners, modes or extended attributes.
    Fat,
}

/// `statfs` magic numbers.
const FUSE_MAGIC: i64 = 0x6573_5546;
const NTFS3_MAGIC: i64 = 0x7366_746e;
const MSDOS_MAGIC: i64 = 0x4d44;
const EXFAT_MAGIC: i64 = 0x2011_BAB0;

impl TargetFs {
    /// The kind of the filesystem holding the open directory `dir`: by `fstatfs` magic, and
    /// for FUSE by whether ntfs-3g's `system.ntfs_attrib_be` answers.
    pub fn detect(dir: &File) -> TargetFs {
        let Ok(st) = nix::sys::statfs::fstatfs(dir) else {
            return TargetFs::Posix;
        };
        #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
        match st.filesystem_type().0 as i64 {
            NTFS3_MAGIC => TargetFs::Ntfs3,
            MSDOS_MAGIC | EXFAT_MAGIC => TargetFs::Fat,
            FUSE_MAGIC => {
                use xattr::FileExt;
                match dir.get_xattr(crate::xattrs::NTFS_ATTRIB) {
                    Ok(Some(_)) => TargetFs::Ntfs3g,
                    _ => TargetFs::Posix,
                }
            }
            _ => TargetFs::Posix,
        }
    }

    /// Names must be mapped to ones Windows can hold (`winnames`).
    pub fn windows_names(self) -> bool {
        self != TargetFs::Posix
    }

    /// An NTFS filesystem (DOS attributes, descriptors, streams).
    pub fn is_ntfs(self) -> bool {
        matches!(self, TargetFs::Ntfs3g | TargetFs::Ntfs3)
    }

    /// Granularity of its file times in nanoseconds (what read-back tolerates).
    pub fn time_granularity_ns(self) -> u32 {
        match self {
            TargetFs::Posix => 1,
            TargetFs::Ntfs3g | TargetFs::Ntfs3 => 100,
            TargetFs::Fat => 2_000_000_000,
        }
    }

    /// The xattr carrying a file's NTFS security descriptor.
    pub fn security_xattr(self) -> Option<&'static str> {
        match self {
            TargetFs::Ntfs3g => Some("system.ntfs_acl"),
            TargetFs::Ntfs3 => Some("system.ntfs_security"),
            _ => None,
        }
    }

    /// Shown in results: "posix", "ntfs (ntfs-3g)", ...
    pub fn describe(self) -> &'static str {
        match self {
            TargetFs::Posix => "posix",
            TargetFs::Ntfs3g => "ntfs (ntfs-3g)",
            TargetFs::Ntfs3 => "ntfs (ntfs3)",
            TargetFs::Fat => "fat",
        }
    }
}

/// Checks an image's `data_path`: `/` or `/a/b` (a leading `/` optional), no empty, `.` or
/// `..` component, no NUL, each component at most 255 bytes. Returns the components.
pub fn data_path_components(data_path: &str) -> Result<Vec<&str>, String> {
    if data_path.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let rel = data_path.strip_prefix('/').unwrap_or(data_path);
    if rel.is_empty() {
        return Ok(Vec::new());
    }
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps {
        match *c {
            "" => return Err("has an empty component (\"//\" or a trailing '/')".into()),
            "." | ".." => return Err(format!("has a {c:?} component")),
            c if c.len() > 255 => return Err("has a component longer than 255 bytes".into()),
            _ => {}
        }
    }
    Ok(comps)
}

impl RestoreTarget {
    /// Opens the directory `path` (the technician's choice for `tek data restore`; a symlink
    /// given as the target itself is followed, nothing beneath it will be).
    pub fn open(path: &Path) -> Result<RestoreTarget, DataError> {
        let dir = File::open(path).map_err(io("opening restore target", path))?;
        let meta = dir
            .metadata()
            .map_err(io("reading metadata of restore target", path))?;
        if !meta.is_dir() {
            return Err(DataError::UnsafeTarget {
                target: path.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        Ok(RestoreTarget::new(dir, path.to_path_buf()))
    }

    /// Resolves `data_path` (see [`data_path_components`]) beneath the directory `root` (a mount
    /// point), creating missing directories (mode 0755), without following any symlink and
    /// without leaving `root`'s filesystem.
    pub fn beneath(root: &Path, data_path: &str) -> Result<RestoreTarget, DataError> {
        let label = root.join(data_path.trim_start_matches('/'));
        let refuse = |reason: String| DataError::UnsafeTarget {
            target: label.clone(),
            reason,
        };
        let comps = data_path_components(data_path)
            .map_err(|r| refuse(format!("data path {data_path:?} {r}")))?;
        let root_fd: OwnedFd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(crate::sys::owned)
        .map_err(|e| io("opening mount point", root)(e.into()))?;
        let mut cur = root_fd;
        let mut walked = PathBuf::new();
        for c in comps {
            walked.push(c);
            let name = c.as_bytes();
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            let next = match open_beneath(&cur, name, flags, 0) {
                Err(Errno::ENOENT) => {
                    match mkdirat(
                        Some(cur.as_raw_fd()),
                        OsStr::from_bytes(name),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        // EEXIST: made meanwhile (or a dangling symlink: the open says which).
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(io("creating directory", root.join(&walked))(e.into()));
                        }
                    }
                    open_beneath(&cur, name, flags, 0)
                }
                r => r,
            };
            cur = next.map_err(|e| {
                let shown = Path::new("/").join(&walked);
                // O_NOFOLLOW | O_DIRECTORY on a symlink reports ENOTDIR: say what is there.
                let e = match e {
                    Errno::ENOTDIR if is_symlink(&cur, name) => Errno::ELOOP,
                    e => e,
                };
                match e {
                    Errno::ELOOP => refuse(format!(
                        "{} is a symlink in the image's filesystem; refusing to follow it",
                        shown.display()
                    )),
                    Errno::EXDEV => refuse(format!(
                        "{} is a mount point (another filesystem); refusing to cross it",
                        shown.display()
                    )),
                    Errno::ENOTDIR => refuse(format!("{} is not a directory", shown.display())),
                    e => io("opening directory", root.join(&walked))(e.into()),
                }
            })?;
        }
        Ok(RestoreTarget::new(File::from(cur), label))
    }

    fn new(dir: File, label: PathBuf) -> RestoreTarget {
        use std::os::unix::fs::MetadataExt;
        #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
        let fuse = nix::sys::statfs::fstatfs(&dir)
            .is_ok_and(|s| s.filesystem_type().0 as i64 == FUSE_MAGIC);
        RestoreTarget {
            fs: TargetFs::detect(&dir),
            dev: dir.metadata().ok().map(|m| m.dev()),
            fuse,
            dir,
            label,
        }
    }

    /// The open directory.
    pub fn dir(&self) -> &File {
        &self.dir
    }

    /// The kind of filesystem it is on.
    pub fn fs(&self) -> TargetFs {
        self.fs
    }

    /// The device number of its filesystem (`st_dev`, as read when it was opened).
    pub fn dev(&self) -> Option<u64> {
        self.dev
    }

    /// True when its filesystem is served by a FUSE daemon (as found when it was opened).
    pub fn is_fuse(&self) -> bool {
        self.fuse
    }

    /// The path it was opened as (messages only; never re-resolved).
    pub fn label(&self) -> &Path {
        &self.label
    }
}

fn is_symlink(dir: &OwnedFd, name: &[u8]) -> bool {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        OsStr::from_bytes(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_path_rules() {
        assert_eq!(data_path_components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(data_path_components("").unwrap(), Vec::<&str>::new());
        assert_eq!(data_path_components("/a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(data_path_components("a").unwrap(), vec!["a"]);
        for bad in ["/a/../b", "/..", "/a//b", "/a/", "//a", "/./a", "/a\0b"] {
            assert!(data_path_components(bad).is_err(), "{bad:?}");
        }
        assert!(data_path_components(&format!("/{}", "x".repeat(256))).is_err());
    }

    #[test]
    fn creates_missing_components() {
        let d = tempfile::tempdir().unwrap();
        let t = RestoreTarget::beneath(d.path(), "/Users/data").unwrap();
        assert!(d.path().join("Users/data").is_dir());
        assert_eq!(t.label(), d.path().join("Users/data"));
        // Existing ones are opened as they are.
        RestoreTarget::beneath(d.path(), "/Users/data").unwrap();
        RestoreTarget::beneath(d.path(), "/").unwrap();
    }

    #[test]
    fn refuses_a_symlink_at_every_component() {
        let outside = tempfile::tempdir().unwrap();
        for depth in 0..3 {
            let d = tempfile::tempdir().unwrap();
            let comps = ["Users", "jane", "Documents"];
            let mut p = d.path().to_path_buf();
            for c in &comps[..depth] {
                p.push(c);
                std::fs::create_dir(&p).unwrap();
            }
            std::os::unix::fs::symlink(outside.path(), p.join(comps[depth])).unwrap();
            let err = RestoreTarget::beneath(d.path(), "/Users/jane/Documents").unwrap_err();
            assert!(
                matches!(&err, DataError::UnsafeTarget { reason, .. } if reason.contains("symlink")),
                "depth {depth}: {err}"
            );
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        }
        // A dangling symlink is refused too, nothing is created through it.
        let d = tempfile::tempdir().unwrap();
        let gone = outside.path().join("gone");
        std::os::unix::fs::symlink(&gone, d.path().join("Users")).unwrap();
        assert!(RestoreTarget::beneath(d.path(), "/Users").is_err());
        assert!(!gone.exists());
    }

    #[test]
    fn refuses_bad_paths_and_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        assert!(RestoreTarget::beneath(d.path(), "/f").is_err());
        assert!(RestoreTarget::beneath(d.path(), "/../x").is_err());
        assert!(RestoreTarget::open(&d.path().join("f")).is_err());
    }
}
