//! The manifest: one record per entry of a dataset, stored encrypted in its own stream next to the
//! data stream (file contents concatenated in manifest order), so both stream in bounded memory.
//!
//! Record encoding (little endian). Version 3 (written since sparse files are kept sparse):
//! the version 2 record with tag `0xE3` and, after the extended attributes, `sparse u8` (0: the
//! content is dense; 1: `extent_count u32` and per data extent `offset u64, len u64` follow,
//! sorted, not overlapping, inside `size`: everything outside them was a hole in the source,
//! found with `SEEK_DATA`/`SEEK_HOLE`). The data stream still carries the whole content, holes
//! as zeros, so hashes and totals are those of the bytes a reader sees.
//! Version 2 (still read): `0xE2, kind u8, path_len u32, path bytes, size u64, mode u32, uid u32, gid u32, mtime i64,
//! mtime_nsec u32, times u8 (bit 0: atime follows, bit 1: btime follows), [atime i64, nsec u32],
//! [btime i64, nsec u32], target_len u32, target bytes, blake3 [32], xattr_count u32, then per
//! extended attribute `name_len u8, name, value_len u32, value`.
//! Version 1 (still read): `0xE1` and the same fields up to `blake3`, without times byte, atime,
//! btime and extended attributes. The stream ends with `0xEE, entries u64, bytes u64`.
//! Paths are raw bytes (non-UTF-8 names survive), relative, normalised (no empty, `.` or `..`
//! components). Extended attributes obey [`crate::xattrs::check_set`] on both sides.

use std::io::{self, Read, Write};

mod paths;
pub use paths::{SymlinkGuard, check_normalized, normalize};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file; its `size` bytes follow in the data stream.
    File = 1,
    /// Directory.
    Dir = 2,
    /// Symbolic link (`target` is the link text, never followed).
    Symlink = 3,
    /// Hard link to an earlier entry (`target` is that entry's path).
    Hardlink = 4,
    /// Character device (skipped on restore).
    CharDev = 5,
    /// Block device (skipped on restore).
    BlockDev = 6,
    /// FIFO (skipped on restore).
    Fifo = 7,
    /// Socket (skipped on restore).
    Socket = 8,
}

impl EntryKind {
    fn from_u8(b: u8) -> Option<EntryKind> {
        Some(match b {
            1 => EntryKind::File,
            2 => EntryKind::Dir,
            3 => EntryKind::Symlink,
            4 => EntryKind::Hardlink,
            5 => EntryKind::CharDev,
            6 => EntryKind::BlockDev,
            7 => EntryKind::Fifo,
            8 => EntryKind::Socket,
            _ => return None,
        })
    }
    /// Human name, used in restore results ("device node (entry 17)").
    pub fn describe(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hard link",
            EntryKind::CharDev => "character device node",
            EntryKind::BlockDev => "block device node",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
        }
    }
}

/// One manifest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, normalised path, raw bytes.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Content bytes (files only; 0 otherwise).
    pub size: u64,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Symlink text or hard-link target path.
    pub target: Vec<u8>,
    /// BLAKE3 of the content (files), zero otherwise.
    pub blake3: [u8; 32],
    /// Access time, when the source had one (format 1 records: none; restored as the mtime).
    pub atime: Option<Time>,
    /// Creation (birth) time, when the source had one (statx btime, NTFS creation time).
    pub btime: Option<Time>,
    /// Extended attributes (user.*, security.*, POSIX ACLs, NTFS DOS attributes), sorted by
    /// name, names unique; alternate data streams read through ntfs-3g are `user.*` ones.
    pub xattrs: Vec<Xattr>,
    /// Files that were sparse in the source: their data extents (everything else read as zeros
    /// and is restored as a hole). `None`: dense, or staged before format 3.
    pub extents: Option<Vec<Extent>>,
}

/// A byte range of a file holding data (outside it: a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    /// Offset from the start of the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Most extents recorded for one file; a file with more is staged as dense (still correct,
/// only restored fully allocated).
pub const MAX_EXTENTS: usize = 1 << 16;

/// Checks that `extents` are sorted, non-empty, non-overlapping and inside `size`.
pub fn check_extents(extents: &[Extent], size: u64) -> Result<(), String> {
    if extents.len() > MAX_EXTENTS {
        return Err(format!("{} data extents on one file", extents.len()));
    }
    let mut end = 0u64;
    for x in extents {
        let e = x.offset.checked_add(x.len).ok_or("extent overflows")?;
        if x.len == 0 || x.offset < end || e > size {
            return Err("data extents not sorted, empty, overlapping or past the end".into());
        }
        end = e;
    }
    Ok(())
}

/// A point in time: seconds since the Unix epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Time {
    /// Seconds since 1970-01-01 UTC (negative before).
    pub sec: i64,
    /// Nanoseconds, below 10^9.
    pub nsec: u32,
}

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// Full name with its namespace, e.g. `user.Zone.Identifier`.
    pub name: Vec<u8>,
    /// The raw value.
    pub value: Vec<u8>,
}

impl Entry {
    /// An entry with no content, times at zero and no extended attributes.
    pub fn new(path: Vec<u8>, kind: EntryKind) -> Entry {
        Entry {
            path,
            kind,
            size: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            target: Vec::new(),
            blake3: [0; 32],
            atime: None,
            btime: None,
            xattrs: Vec::new(),
            extents: None,
        }
    }
}

const REC_V1: u8 = 0xE1;
const REC_V2: u8 = 0xE2;
const REC: u8 = 0xE3;
const END: u8 = 0xEE;
/// Longest path accepted (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;

impl Entry {
    /// Writes the record (format 3).
    pub fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        let mut b = self.encode_common(REC);
        let times = u8::from(self.atime.is_some()) | (u8::from(self.btime.is_some()) << 1);
        b.push(times);
        for t in [self.atime, self.btime].into_iter().flatten() {
            b.extend_from_slice(&t.sec.to_le_bytes());
            b.extend_from_slice(&t.nsec.to_le_bytes());
        }
        self.encode_tail(&mut b);
        b.extend_from_slice(&(self.xattrs.len() as u32).to_le_bytes());
        for x in &self.xattrs {
            let len = u8::try_from(x.name.len())
                .map_err(|_| bad("extended attribute name longer than 255 bytes"))?;
            b.push(len);
            b.extend_from_slice(&x.name);
            b.extend_from_slice(&(x.value.len() as u32).to_le_bytes());
            b.extend_from_slice(&x.value);
        }
        match &self.extents {
            None => b.push(0),
            Some(xs) => {
                b.push(1);
                b.extend_from_slice(&(xs.len() as u32).to_le_bytes());
                for x in xs {
                    b.extend_from_slice(&x.offset.to_le_bytes());
                    b.extend_from_slice(&x.len.to_le_bytes());
                }
            }
        }
        w.write_all(&b)
    }

    /// Writes the record in format 1 (what datasets staged before format 2 hold; tests make
    /// such datasets with it).
    #[doc(hidden)]
    pub fn encode_v1(&self, w: &mut impl Write) -> io::Result<()> {
        let mut b = self.encode_common(REC_V1);
        self.encode_tail(&mut b);
        w.write_all(&b)
    }

    fn encode_common(&self, tag: u8) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.path.len() + self.target.len());
        b.push(tag);
        b.push(self.kind as u8);
        b.extend_from_slice(&(self.path.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.path);
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.mode.to_le_bytes());
        b.extend_from_slice(&self.uid.to_le_bytes());
        b.extend_from_slice(&self.gid.to_le_bytes());
        b.extend_from_slice(&self.mtime.to_le_bytes());
        b.extend_from_slice(&self.mtime_nsec.to_le_bytes());
        b
    }

    fn encode_tail(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&(self.target.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.target);
        b.extend_from_slice(&self.blake3);
    }
}

/// Writes the end record.
pub fn encode_end(w: &mut impl Write, entries: u64, bytes: u64) -> io::Result<()> {
    let mut b = vec![END];
    b.extend_from_slice(&entries.to_le_bytes());
    b.extend_from_slice(&bytes.to_le_bytes());
    w.write_all(&b)
}

/// Reads manifest records one at a time.
pub struct ManifestReader<R: Read> {
    r: R,
    /// Totals from the end record, once reached.
    pub end: Option<(u64, u64)>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl<R: Read> ManifestReader<R> {
    /// Reads from a decrypted manifest stream.
    pub fn new(r: R) -> Self {
        ManifestReader { r, end: None }
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn time(&mut self) -> io::Result<Time> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(bad("nanoseconds out of range"));
        }
        Ok(Time { sec, nsec })
    }
    fn bytes(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        self.exact(n, max)
    }
    fn exact(&mut self, n: usize, max: usize) -> io::Result<Vec<u8>> {
        if n > max {
            return Err(bad(format!("length {n} exceeds {max}")));
        }
        let mut v = vec![0u8; n];
        self.r.read_exact(&mut v)?;
        Ok(v)
    }

    /// The next entry, or `None` after the end record.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.r.read_exact(&mut tag)?;
        match tag[0] {
            END => {
                let entries = self.u64()?;
                let bytes = self.u64()?;
                self.end = Some((entries, bytes));
                Ok(None)
            }
            tag @ (REC | REC_V2 | REC_V1) => {
                let mut k = [0u8; 1];
                self.r.read_exact(&mut k)?;
                let kind = EntryKind::from_u8(k[0]).ok_or_else(|| bad("unknown entry kind"))?;
                let path = self.bytes(MAX_PATH)?;
                let size = self.u64()?;
                let mode = self.u32()?;
                let uid = self.u32()?;
                let gid = self.u32()?;
                let mtime = self.u64()? as i64;
                let mtime_nsec = self.u32()?;
                let (mut atime, mut btime) = (None, None);
                if tag != REC_V1 {
                    let mut t = [0u8; 1];
                    self.r.read_exact(&mut t)?;
                    if t[0] & !3 != 0 {
                        return Err(bad("unknown time flags"));
                    }
                    if t[0] & 1 != 0 {
                        atime = Some(self.time()?);
                    }
                    if t[0] & 2 != 0 {
                        btime = Some(self.time()?);
                    }
                }
                let target = self.bytes(MAX_PATH)?;
                let mut blake3 = [0u8; 32];
                self.r.read_exact(&mut blake3)?;
                let mut xattrs = Vec::new();
                if tag != REC_V1 {
                    let count = self.u32()? as usize;
                    if count > crate::xattrs::MAX_COUNT {
                        return Err(bad(format!("{count} extended attributes on one entry")));
                    }
                    for _ in 0..count {
                        let mut l = [0u8; 1];
                        self.r.read_exact(&mut l)?;
                        let name = self.exact(usize::from(l[0]), 255)?;
                        let value = self.bytes(crate::xattrs::MAX_VALUE)?;
                        xattrs.push(Xattr { name, value });
                    }
                    crate::xattrs::check_set(&xattrs).map_err(bad)?;
                }
                let mut extents = None;
                if tag == REC {
                    let mut f = [0u8; 1];
                    self.r.read_exact(&mut f)?;
                    match f[0] {
                        0 => {}
                        1 => {
                            let count = self.u32()? as usize;
                            if count > MAX_EXTENTS {
                                return Err(bad(format!("{count} data extents on one file")));
                            }
                            let mut xs = Vec::with_capacity(count);
                            for _ in 0..count {
                                let offset = self.u64()?;
                                xs.push(Extent {
                                    offset,
                                    len: self.u64()?,
                                });
                            }
                            check_extents(&xs, size).map_err(bad)?;
                            extents = Some(xs);
                        }
                        _ => return Err(bad("unknown sparse flag")),
                    }
                }
                Ok(Some(Entry {
                    path,
                    kind,
                    size,
                    mode,
                    uid,
                    gid,
                    mtime,
                    mtime_nsec,
                    target,
                    blake3,
                    atime,
                    btime,
                    xattrs,
                    extents,
                }))
            }
            _ => Err(bad("bad record tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8], kind: EntryKind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            size: 3,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: -5,
            mtime_nsec: 7,
            target: b"x/y".to_vec(),
            blake3: [9; 32],
            atime: Some(Time { sec: -1, nsec: 2 }),
            btime: None,
            xattrs: vec![
                Xattr {
                    name: b"user.a".to_vec(),
                    value: b"1".to_vec(),
                },
                Xattr {
                    name: b"user.b".to_vec(),
                    value: vec![],
                },
            ],
            extents: None,
        }
    }

    #[test]
    fn format_1_records_still_read() {
        let mut buf = Vec::new();
        let a = entry(b"old", EntryKind::File);
        a.encode_v1(&mut buf).unwrap();
        a.encode(&mut buf).unwrap();
        encode_end(&mut buf, 2, 6).unwrap();
        let mut r = ManifestReader::new(&buf[..]);
        let old = r.next_entry().unwrap().unwrap();
        assert_eq!((old.atime, old.btime, old.xattrs.len()), (None, None, 0));
        assert_eq!(
            (old.path, old.mtime, old.blake3),
            (a.path.clone(), a.mtime, a.blake3)
        );
        assert_eq!(r.next_entry().unwrap().unwrap(), a);
    }

    #[test]
    fn sparse_extents_roundtrip_and_bad_ones_are_refused() {
        let mut a = entry(b"sparse", EntryKind::File);
        a.size = 1 << 20;
        a.extents = Some(vec![
            Extent {
                offset: 0,
                len: 4096,
            },
            Extent {
                offset: 8192,
                len: 4096,
            },
        ]);
        let mut buf = Vec::new();
        a.encode(&mut buf).unwrap();
        assert_eq!(
            ManifestReader::new(&buf[..]).next_entry().unwrap().unwrap(),
            a
        );
        for bad in [
            vec![Extent { offset: 0, len: 0 }],
            vec![Extent {
                offset: 1 << 20,
                len: 1,
            }],
            vec![
                Extent {
                    offset: 10,
                    len: 10,
                },
                Extent { offset: 15, len: 1 },
            ],
            vec![Extent {
                offset: u64::MAX,
                len: 2,
            }],
        ] {
            a.extents = Some(bad);
            let mut buf = Vec::new();
            a.encode(&mut buf).unwrap();
            assert!(ManifestReader::new(&buf[..]).next_entry().is_err());
        }
    }

    #[test]
    fn format_2_records_still_read() {
        // A format 2 record is a format 3 one without the sparse byte.
        let a = entry(b"v2", EntryKind::File);
        let mut buf = Vec::new();
        a.encode(&mut buf).unwrap();
        assert_eq!((buf[0], buf.pop()), (REC, Some(0)));
        buf[0] = REC_V2;
        assert_eq!(
            ManifestReader::new(&buf[..]).next_entry().unwrap().unwrap(),
            a
        );
    }

    #[test]
    fn hostile_xattrs_refused_when_read() {
        for x in [
            Xattr {
                name: b"trusted.overlay".to_vec(),
                value: vec![],
            },
            Xattr {
                name: b"user.big".to_vec(),
                value: vec![0; crate::xattrs::MAX_VALUE + 1],
            },
        ] {
            let mut e = entry(b"f", EntryKind::File);
            e.xattrs = vec![x];
            let mut buf = Vec::new();
            e.encode(&mut buf).unwrap();
            assert!(ManifestReader::new(&buf[..]).next_entry().is_err());
        }
    }

    #[test]
    fn encode_decode_roundtrip() {
        let mut buf = Vec::new();
        let a = entry(b"d\xff/e", EntryKind::File);
        let b = entry(b"l", EntryKind::Symlink);
        a.encode(&mut buf).unwrap();
        b.encode(&mut buf).unwrap();
        encode_end(&mut buf, 2, 3).unwrap();
        let mut r = ManifestReader::new(&buf[..]);
        assert_eq!(r.next_entry().unwrap().unwrap(), a);
        assert_eq!(r.next_entry().unwrap().unwrap(), b);
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.end, Some((2, 3)));
    }
}
