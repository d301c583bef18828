//! Walking an ext2/3/4 tree with `ext4-view` (pure Rust, read-only, checks metadata checksums).

use std::io::{Read, Seek};

use ext4_view::{Ext4, Ext4Read, PathBuf};

use super::rules::Rules;
use super::window::Window;
use super::{Counter, Kind, Limits, PartitionError, io_err};

struct Dev<R>(Window<R>);

impl<R: Read + Seek> Ext4Read for Dev<R> {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_at(start_byte, dst).map_err(|e| e.into())
    }
}

/// Walks the filesystem in `w`, feeding every entry to `rules`; returns the entries visited.
pub(super) fn walk<R: Read + Seek + 'static>(
    w: &mut Window<R>,
    limits: &Limits,
    rules: &mut Rules,
) -> Result<u64, PartitionError> {
    // ext4-view owns its reader: it gets a clone of the window (same image, same budget).
    let fs = Ext4::load(Box::new(Dev(w.clone())))
        .map_err(|e| io_err("reading the ext4 superblock and group descriptors", e))?;
    let mut count = Counter::new(limits);
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new("/"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let rd = fs
            .read_dir(&dir)
            .map_err(|e| io_err(&format!("reading directory {}", dir.display()), e))?;
        for ent in rd {
            let ent =
                ent.map_err(|e| io_err(&format!("reading directory {}", dir.display()), e))?;
            let name = ent.file_name();
            if name.as_ref() == b"." || name.as_ref() == b".." {
                continue;
            }
            count.entry(depth + 1)?;
            let path = ent.path();
            let ft = ent
                .file_type()
                .map_err(|e| io_err(&format!("reading {}", path.display()), e))?;
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_regular_file() {
                Kind::File
            } else {
                Kind::Other
            };
            let size = if kind == Kind::File {
                ent.metadata()
                    .map_err(|e| io_err(&format!("reading {}", path.display()), e))?
                    .len()
            } else {
                0
            };
            let shown = path.display().to_string();
            rules.visit(&shown, kind, size, &mut |n| {
                let mut f = fs.open(&path).map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; n.min(size as usize)];
                let mut got = 0;
                while got < buf.len() {
                    let k = f.read_bytes(&mut buf[got..]).map_err(|e| e.to_string())?;
                    if k == 0 {
                        break;
                    }
                    got += k;
                }
                buf.truncate(got);
                Ok(buf)
            });
            if kind == Kind::Dir {
                stack.push((path, depth + 1));
            }
        }
    }
    Ok(count.entries)
}
