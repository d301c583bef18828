//! The writer's metadata setters: owner, mode, extended attributes (and the NTFS security
//! descriptor), times, the NTFS creation time and DOS attributes, each counted as not restored
//! where the target cannot hold it.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::sys::stat::{fchmod, futimens};
use nix::unistd::{Gid, Uid};
use xattr::FileExt as _;

use super::Writer;
use crate::error::{DataError, io};
use crate::manifest::{Entry, Xattr};
use crate::ntfs::{NTFS_TIMES, ntfs_times};
use crate::ownership::{Ownership, set_mode};
use crate::restore::ts;
use crate::target::TargetFs;
use crate::xattrs::NTFS_ATTRIB;

/// Why an attribute may fail to be set without failing the restore.
fn refused(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Some("the target filesystem does not support it"),
        Some(libc::EPERM | libc::EACCES) => Some("the kernel refused it (permission)"),
        Some(libc::EINVAL) => Some("the target filesystem refused the value"),
        Some(libc::ENOSPC | libc::E2BIG) => Some("no room for it on the target"),
        _ => None,
    }
}

/// What an attribute is, for the not-restored list.
fn kind_of(name: &[u8]) -> &'static str {
    if name.starts_with(b"user.") {
        "user extended attributes (alternate data streams on NTFS)"
    } else if name.starts_with(b"security.") {
        "security.* extended attributes"
    } else if name.starts_with(b"system.posix_acl") {
        "POSIX ACLs"
    } else {
        "DOS attributes"
    }
}

impl Writer {
    /// Sets the owner of `e` with `chown` (given the ids), or counts it as not restored.
    /// Nothing on Windows filesystems: ntfs-3g accepts a chown and stores nothing, so the
    /// result says so once instead (`security_note`).
    pub(super) fn owner(
        &mut self,
        e: &Entry,
        n: u64,
        chown: impl FnOnce(Option<Uid>, Option<Gid>) -> nix::Result<()>,
    ) -> Result<(), DataError> {
        if self.fs.windows_names() {
            return Ok(());
        }
        match self.own {
            Ownership::Restore => {
                match chown(Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid))) {
                    Ok(()) => {}
                    // EPERM: capability dropped meanwhile or refused by an LSM; EINVAL: the id
                    // has no mapping in this user namespace. Neither fails the restore.
                    Err(nix::errno::Errno::EPERM | nix::errno::Errno::EINVAL) => {
                        self.owners_not_restored += 1
                    }
                    Err(err) => return Err(self.err("setting owner", n)(err)),
                }
            }
            Ownership::Keep { uid, gid } => {
                if (e.uid, e.gid) != (uid, gid) {
                    self.owners_not_restored += 1;
                }
            }
        }
        Ok(())
    }

    /// Sets the mode of the open `fd` (after its owner: chown clears setuid/setgid bits).
    pub(super) fn mode(&mut self, fd: i32, mode: u32, n: u64) -> Result<(), DataError> {
        if self.fs.windows_names() {
            return Ok(());
        }
        let note = set_mode(mode, n, |m| fchmod(fd, m)).map_err(self.err("setting mode", n))?;
        self.setid_dropped.extend(note);
        Ok(())
    }

    /// Sets `e`'s extended attributes (after owner and mode: chown clears file capabilities,
    /// chmod rewrites an ACL's mask) and, on NTFS, its descriptor; keeps in `e.xattrs` only
    /// those set, which the read-back then checks. DOS attributes wait for [`Writer::finish_ntfs`].
    pub(super) fn xattrs(
        &mut self,
        f: &File,
        e: &mut Entry,
        dir: bool,
    ) -> Result<Option<Arc<Vec<u8>>>, DataError> {
        let mut set: Vec<Xattr> = Vec::with_capacity(e.xattrs.len());
        for x in std::mem::take(&mut e.xattrs) {
            let name = OsStr::from_bytes(&x.name);
            if x.name == NTFS_ATTRIB.as_bytes() {
                if self.fs.is_ntfs() {
                    set.push(x);
                } else {
                    self.skip(kind_of(&x.name), "the target filesystem has none");
                }
                continue;
            }
            if self.fs.windows_names() && !x.name.starts_with(b"user.") {
                self.skip(kind_of(&x.name), "NTFS and FAT have no such attributes");
                continue;
            }
            match f.set_xattr(name, &x.value) {
                Ok(()) => set.push(x),
                Err(err) => match refused(&err) {
                    Some(why) => self.skip(kind_of(&x.name), why),
                    None => {
                        return Err(io("setting extended attribute under", &self.target)(err));
                    }
                },
            }
        }
        e.xattrs = set;
        let sd = self.descriptor(&e.path, dir);
        if let (Some(sd), Some(name)) = (&sd, self.fs.security_xattr()) {
            f.set_xattr(name, sd)
                .map_err(io("setting security descriptor under", &self.target))?;
        }
        Ok(sd)
    }

    /// After the times: the NTFS creation time and, last (read-only would refuse the rest),
    /// the DOS attributes. Clears `e.btime` when it could not be set, so the read-back does
    /// not look for it.
    pub(super) fn finish_ntfs(&mut self, f: &File, e: &mut Entry) -> Result<(), DataError> {
        if e.btime.is_some() {
            // On ntfs-3g it was set with the other times (`times`).
            if self.fs != TargetFs::Ntfs3g {
                self.skip(
                    "creation times",
                    "the target filesystem sets them itself when a file is created",
                );
                e.btime = None;
            }
        }
        if let Some(x) = e.xattrs.iter().find(|x| x.name == NTFS_ATTRIB.as_bytes()) {
            let want = <[u8; 4]>::try_from(x.value.as_slice()).map(u32::from_be_bytes);
            let cur = f
                .get_xattr(NTFS_ATTRIB)
                .ok()
                .flatten()
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map_or(0, u32::from_be_bytes);
            match want {
                Ok(w) => {
                    let kept = crate::ntfs::ATTRIB_KEPT;
                    let v = ((cur & !kept) | (w & kept)).to_be_bytes();
                    f.set_xattr(NTFS_ATTRIB, &v)
                        .map_err(io("setting DOS attributes under", &self.target))?;
                }
                Err(_) => self.skip("DOS attributes", "the staged value is not 4 bytes"),
            }
        }
        Ok(())
    }

    /// Sets access and modification time, and on ntfs-3g the creation time with them in one
    /// `system.ntfs_times_be` (creation, modification, access: each request to the FUSE
    /// daemon counts on a bench).
    pub(super) fn times(&self, f: &File, e: &Entry, n: u64) -> Result<(), DataError> {
        if let (Some(bt), TargetFs::Ntfs3g) = (e.btime, self.fs) {
            return f
                .set_xattr(NTFS_TIMES, &ntfs_times(e, bt))
                .map_err(io("setting times under", &self.target));
        }
        let m = ts(e.mtime, e.mtime_nsec);
        let a = e.atime.map_or(m, |t| ts(t.sec, t.nsec));
        futimens(f.as_raw_fd(), &a, &m).map_err(self.err("setting times", n))
    }
}
