//! The crate's only `unsafe`: turning file descriptors returned by nix's `openat2` into owned
//! handles, and `sync_file_range` (which nix does not wrap). Everything else goes through safe
//! wrappers.

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
}
