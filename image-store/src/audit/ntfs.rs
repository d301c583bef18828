//! Walking an NTFS tree with the `ntfs` crate (pure Rust, read-only): directory indexes from the
//! root, each directory's MFT record visited once (an index entry naming its own directory or
//! one already in the tree is a cycle, and an error for the partition), DOS 8.3 alias names
//! skipped.

use std::collections::HashSet;
use std::io::{Read, Seek};

use ntfs::structured_values::NtfsFileNamespace;
use ntfs::{Ntfs, NtfsReadSeek};

use super::rules::Rules;
use super::window::Window;
use super::{Counter, Kind, Limits, PartitionError, io_err};

/// MFT records below this are the filesystem's own metadata files ($MFT, $Bitmap, ...).
const FIRST_USER_RECORD: u64 = 16;

/// Walks the filesystem in `w`, feeding every entry to `rules`; returns the entries visited.
pub(super) fn walk<R: Read + Seek>(
    w: &mut Window<R>,
    limits: &Limits,
    rules: &mut Rules,
) -> Result<u64, PartitionError> {
    let mut fs = w.clone();
    let ntfs = Ntfs::new(&mut fs).map_err(|e| io_err("reading the NTFS boot sector", e))?;
    let root = ntfs
        .root_directory(&mut fs)
        .map_err(|e| io_err("reading the NTFS root directory", e))?;
    let mut count = Counter::new(limits);
    let mut seen = HashSet::from([root.file_record_number()]);
    let mut stack = vec![(root.file_record_number(), String::new(), 0usize)];
    while let Some((rn, dir_path, depth)) = stack.pop() {
        let shown = if dir_path.is_empty() { "/" } else { &dir_path };
        let ctx = |what: &str| format!("{what} {shown}");
        let dir = ntfs
            .file(&mut fs, rn)
            .map_err(|e| io_err(&ctx("reading the MFT record of"), e))?;
        let index = dir
            .directory_index(&mut fs)
            .map_err(|e| io_err(&ctx("reading the index of"), e))?;
        let mut it = index.entries();
        while let Some(ent) = it.next(&mut fs) {
            let ent = ent.map_err(|e| io_err(&ctx("reading the index of"), e))?;
            let Some(key) = ent.key() else { continue };
            let key = key.map_err(|e| io_err(&ctx("reading a name in"), e))?;
            if key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            let child = ent.file_reference().file_record_number();
            // The root's index holds "." (record 5, skipped here with the metadata files).
            if child < FIRST_USER_RECORD {
                continue;
            }
            count.entry(depth + 1)?;
            let path = format!("{dir_path}/{}", key.name());
            if child == rn {
                return Err(PartitionError(format!(
                    "directory {shown} contains itself as {path} (a directory cycle)"
                )));
            }
            let kind = if key.is_directory() {
                Kind::Dir
            } else {
                Kind::File
            };
            let size = key.data_size();
            rules.visit(&path, kind, size, &mut |n| {
                read_head(&ntfs, &mut fs, child, n)
            });
            if kind == Kind::Dir {
                if !seen.insert(child) {
                    return Err(PartitionError(format!(
                        "directory {path} is already in the tree (a directory cycle)"
                    )));
                }
                stack.push((child, path, depth + 1));
            }
        }
    }
    Ok(count.entries)
}

fn read_head<R: Read + Seek>(
    ntfs: &Ntfs,
    fs: &mut Window<R>,
    rn: u64,
    n: usize,
) -> Result<Vec<u8>, String> {
    let file = ntfs.file(fs, rn).map_err(|e| e.to_string())?;
    let Some(item) = file.data(fs, "") else {
        return Ok(Vec::new());
    };
    let item = item.map_err(|e| e.to_string())?;
    let attr = item.to_attribute().map_err(|e| e.to_string())?;
    let mut value = attr.value(fs).map_err(|e| e.to_string())?;
    let want = (n as u64).min(value.len()) as usize;
    let mut out = vec![0u8; want];
    let mut got = 0;
    while got < want {
        let k = value.read(fs, &mut out[got..]).map_err(|e| e.to_string())?;
        if k == 0 {
            // The data's runlist ends (or points past the volume) before its declared size:
            // what was read is not the file.
            return Err(format!(
                "its data ends after {got} of {} bytes (a runlist past the volume?)",
                value.len()
            ));
        }
        got += k;
    }
    Ok(out)
}
