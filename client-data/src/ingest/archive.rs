//! The tar path of ingest: opening a plain, gzip or zstd archive and feeding its entries to the
//! ingest's [`Sink`], with the decompression-bomb guards (declared sizes against staging's free
//! space, a budget of decoded bytes between two entries).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::Sink;
use crate::error::{DataError, io};
use crate::manifest::{Entry, EntryKind, Time, normalize};

use crate::manifest::Xattr;

/// Opens a tar archive, undoing gzip or zstd compression (detected by magic number).
fn open_tar(source: &Path) -> Result<(Box<dyn Read>, &'static str), DataError> {
    let mut f = BufReader::with_capacity(
        1 << 20,
        File::open(source).map_err(io("opening archive", source))?,
    );
    let magic = {
        use std::io::BufRead;
        let b = f.fill_buf().map_err(io("reading archive", source))?;
        b[..b.len().min(4)].to_vec()
    };
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        (Box::new(flate2::read::MultiGzDecoder::new(f)), "tar.gz")
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = zstd::stream::read::Decoder::with_buffer(f)
            .map_err(io("reading zstd archive", source))?;
        (Box::new(d), "tar.zst")
    } else {
        (Box::new(f), "tar")
    })
}

/// Decoded bytes the tar crate may read on its own between two entries it hands us: headers,
/// extension records (GNU long names, pax), which it reads whole into memory, and the data of
/// entries we do not read (a directory claiming a size), which it skips by decoding. Real
/// archives need a few KiB here (pax records with long paths, ACLs, extended attributes).
pub(crate) const BETWEEN_ENTRIES: u64 = 16 << 20;

/// The decoded archive stream, with the budget of [`BETWEEN_ENTRIES`] enforced while the tar
/// crate looks for the next entry (`None` while we read an entry's content ourselves). Without
/// it, a small tar.zst whose long-name header claims terabytes of zeros would be read into one
/// `Vec`.
struct Bounded<R> {
    inner: R,
    left: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(left) = self.left.get() else {
            return self.inner.read(buf);
        };
        if left == 0 {
            return Err(std::io::Error::other(format!(
                "more than {} MiB of extension headers or skipped entry data before the next \
                 entry",
                BETWEEN_ENTRIES >> 20
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(Some(left - n as u64));
        Ok(n)
    }
}

/// Staging bytes needed for `content` bytes of files in `entries` entries: the ciphertext
/// (a tag per 64 KiB segment, a header per stream) and a generous manifest record each.
fn staging_needed(content: u64, entries: u64) -> u64 {
    use crate::stream::{HEADER, SEGMENT, TAG};
    content
        .saturating_add(content.div_ceil(SEGMENT as u64).saturating_mul(TAG as u64))
        .saturating_add(entries.saturating_add(1).saturating_mul(4096 + TAG as u64))
        .saturating_add(2 * HEADER as u64)
}

/// A pax time, `SECONDS[.FRACTION]` (possibly negative).
fn pax_time(v: &[u8]) -> Result<Time, String> {
    let s = std::str::from_utf8(v).map_err(|_| "pax time is not text".to_string())?;
    let bad = || format!("bad pax time \"{}\"", s.escape_debug());
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let sec: i64 = int.parse().map_err(|_| bad())?;
    let digits = &frac[..frac.len().min(9)];
    let nsec: u32 = format!("{digits:0<9}").parse().map_err(|_| bad())?;
    // "-1.5" is 1.5 s before the epoch.
    if int.starts_with('-') && nsec > 0 {
        return Ok(Time {
            sec: sec - 1,
            nsec: 1_000_000_000 - nsec,
        });
    }
    Ok(Time { sec, nsec })
}

/// Takes what pax records carry beyond the ustar header: fractional mtime, atime, and
/// extended attributes (`SCHILY.xattr.NAME`, as GNU tar `--xattrs` and bsdtar write them).
/// Text ACLs (`SCHILY.acl.*`, GNU tar `--acls`) are refused rather than dropped.
fn pax_extras<R: Read>(te: &mut tar::Entry<'_, R>, e: &mut Entry) -> Result<(), String> {
    let Some(exts) = te
        .pax_extensions()
        .map_err(|err| format!("bad pax record: {err}"))?
    else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext.map_err(|err| format!("bad pax record: {err}"))?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            crate::xattrs::check_name(name)?;
            if ext.value_bytes().len() > crate::xattrs::MAX_VALUE {
                return Err(format!(
                    "extended attribute {} is {} bytes (at most {})",
                    String::from_utf8_lossy(name),
                    ext.value_bytes().len(),
                    crate::xattrs::MAX_VALUE
                ));
            }
            e.xattrs.push(Xattr {
                name: name.to_vec(),
                value: ext.value_bytes().to_vec(),
            });
        } else if key.starts_with(b"SCHILY.acl.") {
            return Err(
                "the archive carries POSIX ACLs as text (GNU tar --acls), which ingest does not \
                 convert; make it with --xattrs instead, or ingest the directory"
                    .into(),
            );
        } else if key == b"mtime" {
            let t = pax_time(ext.value_bytes())?;
            (e.mtime, e.mtime_nsec) = (t.sec, t.nsec);
        } else if key == b"atime" {
            e.atime = Some(pax_time(ext.value_bytes())?);
        }
    }
    e.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(())
}

pub(super) fn read_tar(source: &Path, sink: &mut Sink<'_>) -> Result<String, DataError> {
    let (r, kind) = open_tar(source)?;
    // Free space at the start: the declared sizes, summed as headers arrive, must fit in it
    // (checked before an entry's content is written).
    let staging = sink
        .data_path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let vfs = nix::sys::statvfs::statvfs(&staging).map_err(|e| DataError::Io {
        action: "reading free space of",
        path: staging.clone(),
        source: e.into(),
    })?;
    let available = (vfs.blocks_available() as u64).saturating_mul(vfs.fragment_size() as u64);
    let mut declared = 0u64;
    let left = std::rc::Rc::new(std::cell::Cell::new(Some(BETWEEN_ENTRIES)));
    let mut ar = tar::Archive::new(Bounded {
        inner: r,
        left: left.clone(),
    });
    let mut entries = ar
        .entries()
        .map_err(|e| sink.bad(format!("not a tar archive: {e}")))?;
    let mut seen_any = false;
    loop {
        left.set(Some(BETWEEN_ENTRIES));
        let Some(item) = entries.next() else { break };
        left.set(None);
        let mut te = item.map_err(|e| sink.bad(format!("bad tar header: {e}")))?;
        seen_any = true;
        let raw_path = te.path_bytes().into_owned();
        let h = te.header();
        let etype = h.entry_type();
        let kind = match etype {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::Char => EntryKind::CharDev,
            tar::EntryType::Block => EntryKind::BlockDev,
            tar::EntryType::Fifo => EntryKind::Fifo,
            // pax/GNU extension headers are consumed by the tar crate; anything else is unknown.
            other => {
                return Err(sink.bad(format!(
                    "unsupported tar entry type '{}'",
                    (other.as_byte() as char).escape_debug()
                )));
            }
        };
        let path = match normalize(&raw_path) {
            Ok(Some(p)) => p,
            Ok(None) => continue, // the archive's root "./"
            Err(r) => return Err(sink.bad(r)),
        };
        let num = |v: std::io::Result<u64>, what: &str| -> Result<u64, DataError> {
            v.map_err(|e| sink.bad(format!("bad {what} in tar header: {e}")))
        };
        let size = num(h.entry_size(), "size")?;
        let mode = num(h.mode().map(u64::from), "mode")? as u32 & 0o7777;
        let uid = num(h.uid(), "uid")?;
        let gid = num(h.gid(), "gid")?;
        let mtime = num(h.mtime(), "mtime")?;
        let mut e = Entry {
            path,
            kind,
            size: if kind == EntryKind::File { size } else { 0 },
            mode,
            uid: u32::try_from(uid).map_err(|_| sink.bad("uid out of range"))?,
            gid: u32::try_from(gid).map_err(|_| sink.bad("gid out of range"))?,
            mtime: i64::try_from(mtime).map_err(|_| sink.bad("mtime out of range"))?,
            mtime_nsec: 0,
            target: Vec::new(),
            blake3: [0; 32],
            atime: None,
            btime: None,
            xattrs: Vec::new(),
            extents: None,
        };
        pax_extras(&mut te, &mut e).map_err(|r| sink.bad(r))?;
        match kind {
            EntryKind::Symlink => {
                e.target = te
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| sink.bad("symlink without target"))?;
            }
            EntryKind::Hardlink => {
                let t = te
                    .link_name_bytes()
                    .ok_or_else(|| sink.bad("hard link without target"))?;
                e.target = match normalize(&t) {
                    Ok(Some(p)) => p,
                    Ok(None) => return Err(sink.bad("hard link to the archive root")),
                    Err(r) => return Err(sink.bad(format!("hard link target: {r}"))),
                };
            }
            _ => {}
        }
        if kind == EntryKind::File {
            declared = declared.saturating_add(e.size);
            let needed = staging_needed(declared, sink.entries + 1);
            if needed > available {
                return Err(DataError::StagingFull {
                    source_path: sink.source.clone(),
                    entry: sink.entries,
                    needed,
                    available,
                    staging,
                });
            }
            sink.add(e, Some(&mut te))?;
        } else {
            sink.add(e, None)?;
        }
    }
    if !seen_any {
        return Err(sink.bad("empty or not a tar archive"));
    }
    Ok(kind.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = |s: &str| pax_time(s.as_bytes());
        assert_eq!(
            t("1700000000.5").unwrap(),
            Time {
                sec: 1_700_000_000,
                nsec: 500_000_000
            }
        );
        assert_eq!(t("12").unwrap(), Time { sec: 12, nsec: 0 });
        assert_eq!(
            t("1.1234567891").unwrap(),
            Time {
                sec: 1,
                nsec: 123_456_789
            }
        );
        assert_eq!(
            t("-1.5").unwrap(),
            Time {
                sec: -2,
                nsec: 500_000_000
            }
        );
        for bad in ["", "x", "1.x", "1e5", "1.-5"] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }
}
