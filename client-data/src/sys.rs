//! The crate's only `unsafe`: turning file descriptors returned by nix's `openat2` into owned
//! handles, and `sync_file_range` and `statx` (which nix does not wrap). Everything else goes
//! through safe wrappers.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Opens `path` (relative, raw bytes) beneath `dir` with `openat2(2)`: the kernel refuses any
/// resolution that leaves `dir` (`..`, absolute paths), passes through any symlink, including
/// the last component (ELOOP), or crosses a mount point such as a bind mount planted in the
/// target (EXDEV), so no entry can redirect a write outside the restore target's filesystem.
pub fn open_beneath(
    dir: &impl AsRawFd,
    path: &[u8],
    flags: OFlag,
    mode: u32,
) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let p = if path.is_empty() {
        OsStr::new(".")
    } else {
        OsStr::from_bytes(path)
    };
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), p, how)?;
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor nix just returned (`openat`).
pub fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor freshly returned by a successful open call.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Starts writeback of `len` bytes at `offset` of `file` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a later fsync finds most pages already on their
/// way to the device. Only a hint: errors surface at the fsync, which is what counts.
pub fn start_writeback(file: &impl AsRawFd, offset: u64, len: u64) {
    // SAFETY: plain syscall on a descriptor the caller keeps open; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// What `statx(2)` says of an entry: enough to tell it from another one at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statx {
    /// Inode number (the MFT record on NTFS).
    pub ino: u64,
    /// File type and mode bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Status change time (seconds, nanoseconds).
    pub ctime: (i64, u32),
    /// Birth time, where the filesystem reports one (ext4 with 256-byte inodes, xfs, btrfs;
    /// not ntfs-3g through FUSE, not ext4 with 128-byte inodes).
    pub btime: Option<(i64, u32)>,
    /// Access and modification time.
    pub atime: (i64, u32),
    /// Modification time.
    pub mtime: (i64, u32),
}

/// `statx(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty `name` is `dir` itself (`AT_EMPTY_PATH`).
/// A symlink is described, never followed.
pub fn statx(dir: &impl AsRawFd, name: &[u8]) -> nix::Result<Statx> {
    // FORCE_SYNC: on FUSE the kernel's cached attributes hold a status change time it
    // computed itself after a setattr, which differs from the one the daemon (ntfs-3g) reports
    // later by up to microseconds; an identity must be the daemon's. A no-op on local
    // filesystems.
    statx_with(dir, name, libc::AT_STATX_FORCE_SYNC)
}

/// [`statx`] from the kernel's cached attributes where it has them (on FUSE: no round trip to
/// the daemon), for inode, type, link count and size of something just created: the cache
/// holds the daemon's reply to the create. Not for identities (see [`statx`]).
pub fn statx_cached(dir: &impl AsRawFd, name: &[u8]) -> nix::Result<Statx> {
    statx_with(dir, name, libc::AT_STATX_SYNC_AS_STAT)
}

fn statx_with(dir: &impl AsRawFd, name: &[u8], sync: libc::c_int) -> nix::Result<Statx> {
    let c = std::ffi::CString::new(name).map_err(|_| nix::errno::Errno::EINVAL)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | sync;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to writable memory of the
    // size statx fills; the descriptor stays open for the call (the caller holds it).
    let r = unsafe { libc::statx(dir.as_raw_fd(), c.as_ptr(), flags, mask, st.as_mut_ptr()) };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: statx returned 0, so it filled the buffer (and it was zeroed before).
    let st = unsafe { st.assume_init() };
    let t = |t: libc::statx_timestamp| (t.tv_sec, t.tv_nsec);
    Ok(Statx {
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        nlink: st.stx_nlink,
        size: st.stx_size,
        ctime: t(st.stx_ctime),
        btime: (st.stx_mask & libc::STATX_BTIME != 0).then(|| t(st.stx_btime)),
        atime: t(st.stx_atime),
        mtime: t(st.stx_mtime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escape_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("link")).unwrap();
        let root = std::fs::File::open(d.path()).unwrap();
        let ro = OFlag::O_RDONLY;
        assert!(open_beneath(&root, b"sub", ro | OFlag::O_DIRECTORY, 0).is_ok());
        assert!(open_beneath(&root, b"../", ro, 0).is_err());
        assert!(open_beneath(&root, b"/etc/passwd", ro, 0).is_err());
        assert!(open_beneath(&root, b"link/passwd", ro, 0).is_err());
        assert!(open_beneath(&root, b"link", ro, 0).is_err());
    }

    #[test]
    fn statx_describes_a_symlink_itself_and_a_directory_by_its_descriptor() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("link")).unwrap();
        let root = std::fs::File::open(d.path()).unwrap();
        let l = statx(&root, b"link").unwrap();
        assert_eq!(l.mode & libc::S_IFMT, libc::S_IFLNK);
        let me = statx(&root, b"").unwrap();
        assert_eq!(me.mode & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(statx(&root, b"gone"), Err(nix::errno::Errno::ENOENT));
    }
}
