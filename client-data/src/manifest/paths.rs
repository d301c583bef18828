//! Manifest paths: normalised at ingest, checked at restore, and the guard that refuses an
//! entry written through an earlier symlink or a hard link to anything but an earlier file.

use std::collections::HashSet;

use super::{Entry, EntryKind, MAX_PATH};

/// Normalises a relative path from a source: strips leading `./`, drops `.` and empty components.
/// Returns `Ok(None)` for the root itself (`.` or `./`). Rejects absolute paths, `..`, NUL bytes,
/// over-long names.
pub fn normalize(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("NUL byte in path".into());
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("path contains a `..` component".into()),
            c if c.len() > 255 => return Err("path component longer than 255 bytes".into()),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.len() > MAX_PATH {
        return Err("path longer than 4096 bytes".into());
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// Checks that a stored path is relative and normalised (the restore-side check).
pub fn check_normalized(p: &[u8]) -> Result<(), String> {
    match normalize(p)? {
        Some(n) if n == p => Ok(()),
        _ => Err("path is not a normalised relative path".into()),
    }
}

/// Tracks symlinks seen so far, to refuse entries that would be written through one
/// (memory grows with the number of symlinks), and the files seen so far (a 128-bit hash of
/// each path), to refuse a hard link to anything but an earlier file of the dataset.
#[derive(Debug, Default)]
pub struct SymlinkGuard {
    links: HashSet<Vec<u8>>,
    files: HashSet<u128>,
}

fn path_key(p: &[u8]) -> u128 {
    let h = blake3::hash(p);
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
}

impl SymlinkGuard {
    /// Checks `e` against earlier symlinks, then records it if it is one.
    pub fn check(&mut self, e: &Entry) -> Result<(), String> {
        if !self.links.is_empty() {
            if self.links.contains(&e.path) {
                return Err("entry replaces an earlier symlink".into());
            }
            for (i, &b) in e.path.iter().enumerate() {
                if b == b'/' && self.links.contains(&e.path[..i]) {
                    return Err("path goes through an earlier symlink".into());
                }
            }
        }
        if e.kind == EntryKind::Hardlink {
            check_normalized(&e.target).map_err(|r| format!("hard link target: {r}"))?;
            for (i, &b) in e.target.iter().enumerate() {
                if b == b'/' && self.links.contains(&e.target[..i]) {
                    return Err("hard link target goes through a symlink".into());
                }
            }
            if !self.files.contains(&path_key(&e.target)) {
                return Err(
                    "hard link to something that is not an earlier file of the dataset (outside \
                     it, a directory, or later in it)"
                        .into(),
                );
            }
        }
        // A hard link may name a symlink too (link(2) links the symlink itself).
        if matches!(
            e.kind,
            EntryKind::File | EntryKind::Hardlink | EntryKind::Symlink
        ) {
            self.files.insert(path_key(&e.path));
        }
        if e.kind == EntryKind::Symlink {
            self.links.insert(e.path.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8], kind: EntryKind) -> Entry {
        let mut e = Entry::new(path.to_vec(), kind);
        e.target = b"x/y".to_vec();
        e
    }

    #[test]
    fn normalize_rejects_and_cleans() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap().unwrap(), b"a/b/c");
        assert_eq!(normalize(b"./").unwrap(), None);
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../x").is_err());
        assert!(normalize(b"..").is_err());
        assert!(check_normalized(b"a/./b").is_err());
        assert!(check_normalized(b"a/b").is_ok());
    }

    #[test]
    fn symlink_guard() {
        let mut g = SymlinkGuard::default();
        g.check(&entry(b"a", EntryKind::Symlink)).unwrap();
        assert!(g.check(&entry(b"a/passwd", EntryKind::File)).is_err());
        assert!(g.check(&entry(b"a", EntryKind::Dir)).is_err());
        g.check(&entry(b"ab/c", EntryKind::File)).unwrap();
        let mut h = entry(b"h", EntryKind::Hardlink);
        h.target = b"../outside".to_vec();
        assert!(g.check(&h).is_err());
        h.target = b"not-seen".to_vec();
        assert!(g.check(&h).is_err());
        h.target = b"ab".to_vec(); // a directory of the dataset, not a file
        assert!(g.check(&h).is_err());
        h.target = b"ab/c".to_vec();
        g.check(&h).unwrap();
    }
}
