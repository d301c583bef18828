//! Extended attributes a dataset carries: which names are allowed, how large they may be, and
//! reading them from a source entry.
//!
//! Allowed: `user.*` (on an ntfs-3g source mounted with `streams_interface=xattr`, the default,
//! these are the file's alternate data streams, e.g. `user.Zone.Identifier`), `security.*`
//! (SELinux labels, file capabilities), the POSIX ACLs `system.posix_acl_access` and
//! `system.posix_acl_default` (kept in the kernel's binary form), and the NTFS DOS attributes
//! [`NTFS_ATTRIB`] (read explicitly: ntfs-3g does not list them). Anything else
//! (`trusted.*`, other `system.*`) is refused at ingest: it is not the client's data, and
//! restoring it would change how the target system treats the file. The NTFS creation time is
//! not an attribute here but the entry's `btime`.
//!
//! Bounds, checked at ingest and again when a manifest is read: a value at most 64 KiB (the
//! kernel's own limit, `XATTR_SIZE_MAX`; a larger alternate data stream cannot be read as an
//! attribute at all), at most [`MAX_COUNT`] attributes and [`MAX_TOTAL`] bytes per entry.

use std::fs::File;
use std::path::Path;

use crate::manifest::Xattr;

/// Largest value (the kernel's `XATTR_SIZE_MAX`).
pub const MAX_VALUE: usize = 64 * 1024;
/// Most attributes per entry.
pub const MAX_COUNT: usize = 1024;
/// Most bytes (names and values) per entry.
pub const MAX_TOTAL: usize = 1 << 20;
/// NTFS file attributes (read-only, hidden, system, archive...) as a big-endian u32, as
/// ntfs-3g exposes them.
pub const NTFS_ATTRIB: &str = "system.ntfs_attrib_be";
/// NTFS creation time (100 ns units since 1601) as a big-endian u64, as ntfs-3g exposes it.
pub const NTFS_CRTIME: &str = "system.ntfs_crtime_be";

/// Checks one attribute name: an allowed namespace, no NUL, not empty past the namespace.
pub fn check_name(name: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(name);
    if name.contains(&0) {
        return Err(format!(
            "extended attribute name {shown} contains a NUL byte"
        ));
    }
    let ok = [&b"user."[..], b"security."]
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
        || matches!(
            name,
            b"system.posix_acl_access" | b"system.posix_acl_default" | b"system.ntfs_attrib_be"
        );
    if !ok {
        return Err(format!(
            "extended attribute {shown} is outside the namespaces a dataset carries (user.*, \
             security.*, system.posix_acl_access/default, {NTFS_ATTRIB})"
        ));
    }
    if name.len() > 255 {
        return Err(format!(
            "extended attribute name {shown} is longer than 255 bytes"
        ));
    }
    Ok(())
}

/// Checks one entry's attributes: allowed names, sorted and unique, within the bounds.
pub fn check_set(x: &[Xattr]) -> Result<(), String> {
    if x.len() > MAX_COUNT {
        return Err(format!(
            "{} extended attributes on one entry (at most {MAX_COUNT})",
            x.len()
        ));
    }
    let mut total = 0usize;
    for (i, a) in x.iter().enumerate() {
        check_name(&a.name)?;
        if a.value.len() > MAX_VALUE {
            return Err(format!(
                "extended attribute {} is {} bytes (at most {MAX_VALUE})",
                String::from_utf8_lossy(&a.name),
                a.value.len()
            ));
        }
        if i > 0 && x[i - 1].name >= a.name {
            return Err("extended attributes not sorted by unique name".into());
        }
        total += a.name.len() + a.value.len();
    }
    if total > MAX_TOTAL {
        return Err(format!(
            "extended attributes of one entry take {total} bytes (at most {MAX_TOTAL})"
        ));
    }
    Ok(())
}

/// Where to read a source entry's attributes from: its open file, or its path (directories;
/// the `l*` calls, so a symlink swapped in is not followed).
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    File(&'a File),
    Path(&'a Path),
}

impl Source<'_> {
    fn list(&self) -> std::io::Result<Vec<std::ffi::OsString>> {
        use xattr::FileExt;
        match self {
            Source::File(f) => Ok(f.list_xattr()?.collect()),
            Source::Path(p) => Ok(xattr::list(p)?.collect()),
        }
    }
    fn get(&self, name: &std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>> {
        use xattr::FileExt;
        match self {
            Source::File(f) => f.get_xattr(name),
            Source::Path(p) => xattr::get(p, name),
        }
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENODATA))
}

/// Reads an entry's attributes (see the module doc for which): sorted, checked. An attribute
/// outside the allowed namespaces, or too large, is an error naming it.
pub(crate) fn read(src: Source<'_>) -> Result<Vec<Xattr>, String> {
    use std::os::unix::ffi::OsStrExt;
    let names = match src.list() {
        Ok(n) => n,
        Err(e) if unsupported(&e) => Vec::new(),
        Err(e) => return Err(format!("listing extended attributes: {e}")),
    };
    let mut out = Vec::with_capacity(names.len() + 1);
    let get = |name: &std::ffi::OsStr, out: &mut Vec<Xattr>| -> Result<(), String> {
        match src.get(name) {
            Ok(Some(value)) => {
                out.push(Xattr {
                    name: name.as_bytes().to_vec(),
                    value,
                });
                Ok(())
            }
            Ok(None) => Ok(()), // removed meanwhile
            Err(e) if unsupported(&e) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG | libc::ERANGE)) => Err(format!(
                "extended attribute {} is larger than {MAX_VALUE} bytes (an alternate data \
                 stream that large cannot be carried as an attribute)",
                name.to_string_lossy()
            )),
            Err(e) => Err(format!(
                "reading extended attribute {}: {e}",
                name.to_string_lossy()
            )),
        }
    };
    for n in &names {
        check_name(n.as_bytes())?;
        get(n, &mut out)?;
    }
    if !names.iter().any(|n| n.as_bytes() == NTFS_ATTRIB.as_bytes()) {
        get(std::ffi::OsStr::new(NTFS_ATTRIB), &mut out)?;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    check_set(&out)?;
    Ok(out)
}

/// The NTFS creation time of a source entry, when its filesystem has one (ntfs-3g).
pub(crate) fn ntfs_crtime(src: Source<'_>) -> Option<crate::manifest::Time> {
    let v = src.get(std::ffi::OsStr::new(NTFS_CRTIME)).ok()??;
    let v: [u8; 8] = v.try_into().ok()?;
    Some(crate::ntfs::from_ntfs_time(u64::from_be_bytes(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(name: &str, len: usize) -> Xattr {
        Xattr {
            name: name.as_bytes().to_vec(),
            value: vec![7; len],
        }
    }

    #[test]
    fn names_and_bounds() {
        for ok in [
            "user.a",
            "user.Zone.Identifier",
            "security.selinux",
            "system.posix_acl_access",
            "system.posix_acl_default",
            NTFS_ATTRIB,
        ] {
            check_name(ok.as_bytes()).unwrap();
        }
        for bad in [
            "trusted.overlay.opaque",
            "system.ntfs_acl",
            "user.",
            "other",
            "user.a\0b",
        ] {
            assert!(check_name(bad.as_bytes()).is_err(), "{bad}");
        }
        check_set(&[x("user.a", MAX_VALUE), x("user.b", 0)]).unwrap();
        assert!(check_set(&[x("user.a", MAX_VALUE + 1)]).is_err());
        assert!(check_set(&[x("user.b", 1), x("user.a", 1)]).is_err());
        assert!(check_set(&[x("user.a", 1), x("user.a", 1)]).is_err());
        let many: Vec<Xattr> = (0..20)
            .map(|i| x(&format!("user.{i:02}"), MAX_VALUE))
            .collect();
        assert!(check_set(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn reads_user_attributes_of_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        // tmpfs has user xattrs since Linux 6.6; skip quietly where the filesystem has none.
        if xattr::set(&p, "user.k", b"v").is_err() {
            tek_testkit::skip!("no user xattrs on the temp filesystem");
            return;
        }
        let f = File::open(&p).unwrap();
        let got = read(Source::File(&f)).unwrap();
        assert_eq!(got, vec![x("user.k", 0).with(b"v")]);
    }

    impl Xattr {
        fn with(mut self, v: &[u8]) -> Xattr {
            self.value = v.to_vec();
            self
        }
    }
}
