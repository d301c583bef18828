//! An entry's identity as the restore journal's log records it (see `journal`'s module doc).

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use crate::sys::Statx;

/// An entry's identity as the log records it (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::restore) enum Ident {
    /// Inode and birth time: stable whatever is done to the entry later.
    Born { ino: u64, at: (i64, u32) },
    /// Inode and NTFS creation time (`system.ntfs_crtime_be`, 100 ns units) on ntfs-3g,
    /// which reports no birth time through statx and whose status change time is not stable
    /// (the kernel's and the daemon's differ by fractions of a microsecond). tek sets it
    /// right after the create (to the entry's staged creation time, else it keeps ntfs-3g's)
    /// and records it then; nothing tek or a reader does later changes it.
    Created { ino: u64, at: u64 },
    /// Inode, status change time and size (no birth time): changes with every change to
    /// the entry, so it is recorded after the last one tek makes.
    Changed { ino: u64, at: (i64, u32), size: u64 },
}

impl Ident {
    /// The identity of what `st` describes, `crtime` its NTFS creation time on ntfs-3g.
    pub(in crate::restore) fn of(st: &Statx, crtime: Option<u64>) -> Ident {
        match (st.btime, crtime) {
            (Some(at), _) => Ident::Born { ino: st.ino, at },
            (None, Some(at)) => Ident::Created { ino: st.ino, at },
            (None, None) => Ident::Changed {
                ino: st.ino,
                at: st.ctime,
                size: st.size,
            },
        }
    }

    /// The identity of `name` in the directory `at` (empty: `at` itself), described by `st`;
    /// on ntfs-3g (`ntfs3g`) by its NTFS creation time where statx has no birth time.
    pub(in crate::restore) fn at(
        at: &impl AsRawFd,
        name: &[u8],
        st: &Statx,
        ntfs3g: bool,
    ) -> Ident {
        if st.btime.is_some() || !ntfs3g {
            return Ident::of(st, None);
        }
        // Through the descriptor's /proc link: lgetxattr on a name in it (a symlink itself,
        // never followed), getxattr on the descriptor's own link.
        let mut p = format!("/proc/self/fd/{}", at.as_raw_fd()).into_bytes();
        let v = if name.is_empty() {
            xattr::get_deref(OsStr::from_bytes(&p), crate::xattrs::NTFS_CRTIME)
        } else {
            p.push(b'/');
            p.extend_from_slice(name);
            xattr::get(OsStr::from_bytes(&p), crate::xattrs::NTFS_CRTIME)
        };
        let crtime = v
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes);
        Ident::of(st, crtime)
    }

    /// The identity of what stands at `name` in the directory `at` now (`None`: nothing),
    /// for a check that it is still what was seen there before it is removed.
    pub(in crate::restore) fn standing(
        at: &impl AsRawFd,
        name: &[u8],
        ntfs3g: bool,
    ) -> Result<Option<Ident>, nix::errno::Errno> {
        match crate::sys::statx(at, name) {
            Ok(st) => Ok(Some(Ident::at(at, name, &st, ntfs3g))),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(in crate::restore) fn ino(&self) -> u64 {
        match self {
            Ident::Born { ino, .. } | Ident::Created { ino, .. } | Ident::Changed { ino, .. } => {
                *ino
            }
        }
    }

    /// True when later changes to the entry leave it as it is: a birth time, or an NTFS
    /// creation time (tek sets it right after the create, and nothing it does later changes
    /// it: see `Writer::stable_crtime`).
    pub(in crate::restore) fn stable(&self) -> bool {
        matches!(self, Ident::Born { .. } | Ident::Created { .. })
    }

    pub(super) fn parse(fields: &[&str]) -> Option<Ident> {
        let time = |s: &str| -> Option<(i64, u32)> {
            let (a, b) = s.split_once('.')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let ino = fields.first()?.parse().ok()?;
        match fields[1..] {
            ["b", t] => Some(Ident::Born { ino, at: time(t)? }),
            ["n", t] => Some(Ident::Created {
                ino,
                at: t.parse().ok()?,
            }),
            ["c", t, size] => Some(Ident::Changed {
                ino,
                at: time(t)?,
                size: size.parse().ok()?,
            }),
            _ => None,
        }
    }
}
