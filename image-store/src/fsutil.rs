//! Crash-safe file primitives: write to a temporary name, fsync, rename, fsync the directory.
//! A reader therefore sees either the old file or the complete new one, never a torn one, and
//! after `write_atomic` returns the new name survives a power loss.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::error::StoreError;

/// Writes `data` to `tmp`, fsyncs it and renames it to `dest` (both on the same filesystem), then
/// fsyncs `dest`'s directory so the rename itself is durable.
pub(crate) fn write_atomic(tmp: &Path, dest: &Path, data: &[u8]) -> Result<(), StoreError> {
    write_synced(tmp, data)?;
    rename_synced(tmp, dest)
}

/// Creates `path` (truncating) with `data` and fsyncs it. On error the partial file is removed.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let res = (|| {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(path);
        StoreError::io("writing", path, e)
    })
}

/// Renames and fsyncs the destination directory.
pub(crate) fn rename_synced(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| StoreError::io("renaming into place", to, e))?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory (makes entries created or renamed in it durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("syncing directory", dir, e))
}

/// Flushes every dirty page and inode of the filesystem holding `path` (one call instead of one
/// fsync per file).
pub(crate) fn syncfs(path: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    let d = File::open(path).map_err(|e| StoreError::io("opening for syncfs", path, e))?;
    nix::unistd::syncfs(d.as_raw_fd())
        .map_err(|e| StoreError::io("syncing filesystem of", path, e.into()))
}

/// Opens an unnamed file (`O_TMPFILE`) in `dir` for writing. It has no name until
/// [`link_tmpfile`]; if the process dies first, the kernel frees it (no leftover temporaries), and
/// creating it touches no directory entry (no lock on a shared temporary directory).
pub(crate) fn open_tmpfile(dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)
}

/// Gives a file from [`open_tmpfile`] the name `dest`. Through `/proc/self/fd` (linkat with
/// `AT_SYMLINK_FOLLOW`), which, unlike `AT_EMPTY_PATH`, needs no capability. Fails with
/// `AlreadyExists` if `dest` exists.
pub(crate) fn link_tmpfile(f: &File, dest: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let src = format!("/proc/self/fd/{}", f.as_raw_fd());
    nix::unistd::linkat(
        None,
        Path::new(&src),
        None,
        dest,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(std::io::Error::from)
}

/// Raises the soft limit on open files towards `want` (never above the hard limit) and returns
/// the soft limit now in force.
pub(crate) fn raise_fd_limit(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let target = want.min(hard);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

/// Sets a file's mtime (and atime) to now without opening it. Returns false if it does not exist.
/// gc keeps every chunk whose mtime is newer than its cutoff, so touching is how an import or the
/// gc mark phase says "in use".
pub(crate) fn touch(path: &Path) -> Result<bool, StoreError> {
    match utimensat(
        None,
        path,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::FollowSymlink,
    ) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(StoreError::io("touching", path, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_touch() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("f");
        write_atomic(&d.path().join("f.tmp"), &dest, b"hello").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(!d.path().join("f.tmp").exists());
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        File::options()
            .write(true)
            .open(&dest)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(touch(&dest).unwrap());
        let m = std::fs::metadata(&dest).unwrap().modified().unwrap();
        assert!(m > old);
        assert!(!touch(&d.path().join("missing")).unwrap());
    }

    #[test]
    fn tmpfile_gets_a_name_only_when_linked() {
        let d = tempfile::tempdir().unwrap();
        let mut f = match open_tmpfile(d.path()) {
            Ok(f) => f,
            Err(e) => {
                tek_testkit::skip!("O_TMPFILE unsupported here: {e}");
                return;
            }
        };
        f.write_all(b"chunk").unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let dest = d.path().join("c");
        link_tmpfile(&f, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"chunk");
        let e = link_tmpfile(&f, &dest).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(raise_fd_limit(256) >= 256);
    }
}
