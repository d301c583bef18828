//! Walking a FAT12/16/32 tree with `fatfs` (pure Rust). The volume is opened over a window whose
//! `Write` always fails, with access-date updates off, so nothing is ever written back.

use std::io::{Read, Seek};

use fatfs::{FileSystem, FsOptions};

use super::rules::Rules;
use super::window::Window;
use super::{Counter, Kind, Limits, PartitionError, io_err};

/// Walks the filesystem in `w`, feeding every entry to `rules`; returns the entries visited.
pub(super) fn walk<R: Read + Seek>(
    w: &mut Window<R>,
    limits: &Limits,
    rules: &mut Rules,
) -> Result<u64, PartitionError> {
    // fatfs expects the device at offset 0 (the sniff left the window elsewhere).
    let mut dev = w.clone();
    dev.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| io_err("seeking", e))?;
    let fs = FileSystem::new(dev, FsOptions::new().update_accessed_date(false))
        .map_err(|e| io_err("reading the FAT boot sector", e))?;
    let mut count = Counter::new(limits);
    let mut stack = vec![(fs.root_dir(), String::new(), 0usize)];
    while let Some((dir, dir_path, depth)) = stack.pop() {
        let shown = if dir_path.is_empty() { "/" } else { &dir_path };
        for ent in dir.iter() {
            let ent = ent.map_err(|e| io_err(&format!("reading directory {shown}"), e))?;
            let name = ent.file_name();
            if name == "." || name == ".." {
                continue;
            }
            count.entry(depth + 1)?;
            let path = format!("{dir_path}/{name}");
            let kind = if ent.is_dir() { Kind::Dir } else { Kind::File };
            let size = ent.len();
            rules.visit(&path, kind, size, &mut |n| {
                let mut out = Vec::new();
                ent.to_file()
                    .take(n.min(size as usize) as u64)
                    .read_to_end(&mut out)
                    .map_err(|e| e.to_string())?;
                Ok(out)
            });
            if kind == Kind::Dir {
                stack.push((ent.to_dir(), path, depth + 1));
            }
        }
    }
    Ok(count.entries)
}
