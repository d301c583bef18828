//! The faulty laptop's Windows volume, where the Windows journey's client data comes from: a
//! fresh NTFS (`mkntfs`) mounted with `ntfs-3g`, filled with the bench's client data set
//! (`make-client-data.sh`) and planted cases: what a Windows user's files carry and a Linux tree
//! lacks (alternate data streams, DOS attributes, creation times, times finer than a second),
//! and names a new Windows cannot hold (illegal and reserved names, names that differ only by
//! case), which ntfs-3g's POSIX namespace accepts. [`snapshot`] records what the independent
//! check compares, entry by entry: content hash, mtime to NTFS precision, a file's access time,
//! creation time, DOS attributes, streams, link text. Both sides are read through read-only
//! mounts, where reading a file leaves its access time alone.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// Planted names Windows cannot hold, each a file with its own content under `Planted/`.
pub const ILLEGAL: &[&str] = &[
    "a:b.txt",
    "what?",
    "<less>",
    "pipe|star*",
    "quote\"back\\slash",
    "tab\tname",
    "trailing.",
    "trailing ",
    "CON",
    "con.txt",
    "LPT1.log",
];
/// Planted names that differ only by case (one directory on Windows): the first keeps its name.
pub const CASE_PAIRS: &[(&str, &str)] = &[("Report.txt", "report.TXT"), ("Docs", "docs")];
/// A downloaded file's `Zone.Identifier` stream.
pub const ZONE: &[u8] = b"[ZoneTransfer]\r\nZoneId=3\r\nHostUrl=about:internet\r\n";
/// The creation time planted on `Planted/invoice.pdf` (2019-04-18, 100 ns units since 1601).
const CRTIME: u64 = 132_000_000_001_234_567;

const ATTRIB: &str = "system.ntfs_attrib_be";
const CRTIME_XATTR: &str = "system.ntfs_crtime_be";

/// The laptop's volume: an NTFS image file on a loop device (so the mount is `fuseblk` and an
/// unmount waits for ntfs-3g to flush), mounted while it lives.
pub struct Laptop {
    mnt: tempfile::TempDir,
    mounted: bool,
    lo: Option<LoopDevice>,
}

impl Laptop {
    /// A fresh sparse NTFS of `size` bytes at `image`, labelled "Old", mounted read-write.
    pub fn new(image: &Path, size: u64) -> Laptop {
        std::fs::File::create(image).unwrap().set_len(size).unwrap();
        let (ok, out) = sh(
            "mkntfs",
            &["-q", "-F", "-Q", "-L", "Old", image.to_str().unwrap()],
        );
        assert!(ok, "mkntfs: {out}");
        let lo = LoopDevice::attach(image).unwrap();
        let mut l = Laptop {
            mnt: tempfile::tempdir().unwrap(),
            mounted: false,
            lo: Some(lo),
        };
        l.mount(&[]);
        l
    }

    fn mount(&mut self, opts: &[&str]) {
        let dev = self
            .lo
            .as_ref()
            .unwrap()
            .path()
            .to_str()
            .unwrap()
            .to_string();
        let mut args: Vec<&str> = opts.to_vec();
        args.extend([dev.as_str(), self.mnt.path().to_str().unwrap()]);
        let (ok, out) = sh("ntfs-3g", &args);
        assert!(ok, "ntfs-3g {args:?}: {out}");
        self.mounted = true;
    }

    /// Remounts read-only, as a technician mounts a faulty laptop's disk to copy from it (and
    /// reading a file then leaves its access time alone).
    pub fn remount_read_only(&mut self) {
        self.unmount();
        self.mount(&["-o", "ro"]);
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.mnt.path()
    }

    /// Unmounts (ntfs-3g has written everything once umount returns: a fuseblk mount).
    pub fn unmount(&mut self) {
        if self.mounted {
            let (ok, out) = sh("umount", &[self.mnt.path().to_str().unwrap()]);
            assert!(ok, "umount: {out}");
            self.mounted = false;
        }
    }
}

impl Drop for Laptop {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.mnt.path()).status();
        }
        drop(self.lo.take());
    }
}

/// Generates the bench's client data set (`--files`, `--bytes`) into `out` with the shared
/// `make-client-data.sh` beside `make_image`; `None` (after a skip message) without it.
pub fn client_data_set(make_image: &Path, out: &Path, files: u32, bytes: &str) -> Option<PathBuf> {
    let script = make_image.with_file_name("make-client-data.sh");
    if !script.exists() {
        tek_testkit::skip!("windows e2e: needs {}", script.display());
        return None;
    }
    let (ok, text) = sh(
        "bash",
        &[
            script.to_str().unwrap(),
            "--files",
            &files.to_string(),
            "--bytes",
            bytes,
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "make-client-data.sh: {text}");
    Some(out.to_path_buf())
}

/// Copies the tree at `from` into `to` as a Windows user's files would be: names that are not
/// UTF-8 (the set has some; NTFS cannot hold them) get U+FFFD, symlinks keep their text, and
/// times are kept. Then every 7th file is hidden, every 11th read-only, every 13th carries a
/// `Zone.Identifier` stream. Returns the number of files copied.
pub fn copy_as_windows_files(from: &Path, to: &Path) -> usize {
    fn walk(from: &Path, to: &Path, n: &mut usize) {
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = String::from_utf8_lossy(e.file_name().as_bytes()).into_owned();
            let (src, dst) = (e.path(), to.join(&name));
            let md = std::fs::symlink_metadata(&src).unwrap();
            if md.file_type().is_symlink() {
                let text = std::fs::read_link(&src).unwrap();
                let text = String::from_utf8_lossy(text.as_os_str().as_bytes()).into_owned();
                std::os::unix::fs::symlink(text, &dst).unwrap();
                continue;
            }
            if md.is_dir() {
                std::fs::create_dir(&dst).unwrap();
                walk(&src, &dst, n);
            } else {
                std::fs::copy(&src, &dst).unwrap();
                *n += 1;
                if *n % 13 == 0 {
                    xset(&dst, "user.Zone.Identifier", ZONE);
                }
            }
            set_times(
                &dst,
                (md.atime(), md.atime_nsec()),
                (md.mtime(), md.mtime_nsec()),
            );
            if md.is_file() && (*n % 7 == 0 || *n % 11 == 0) {
                let ro = if *n % 11 == 0 { 0x01 } else { 0 };
                let hidden = if *n % 7 == 0 { 0x02 } else { 0 };
                xset(&dst, ATTRIB, &(0x20u32 | ro | hidden).to_be_bytes());
            }
        }
    }
    std::fs::create_dir_all(to).unwrap();
    let mut n = 0;
    walk(from, to, &mut n);
    n
}

/// Plants the cases under `root/Planted` (see the module doc).
pub fn plant(root: &Path) {
    let p = root.join("Planted");
    std::fs::create_dir_all(p.join("Private")).unwrap();
    for (i, name) in ILLEGAL.iter().enumerate() {
        std::fs::write(p.join(name), format!("illegal {i}")).unwrap();
    }
    for (i, (a, b)) in CASE_PAIRS.iter().enumerate() {
        if a.contains('.') {
            std::fs::write(p.join(a), format!("case {i} kept")).unwrap();
            std::fs::write(p.join(b), format!("case {i} mapped")).unwrap();
        } else {
            for (d, what) in [(a, "kept"), (b, "mapped")] {
                std::fs::create_dir(p.join(d)).unwrap();
                std::fs::write(p.join(d).join("inner.txt"), format!("case {i} {what}")).unwrap();
                // A reserved name inside the directory that is itself mapped.
                std::fs::write(p.join(d).join("AUX"), format!("aux in {what}")).unwrap();
            }
        }
    }
    // A downloaded invoice: stream, creation time, sub-second times, read-only + hidden.
    let inv = p.join("invoice.pdf");
    std::fs::write(&inv, vec![0x25; 100_000]).unwrap();
    xset(&inv, "user.Zone.Identifier", ZONE);
    xset(&inv, CRTIME_XATTR, &CRTIME.to_be_bytes());
    set_times(
        &inv,
        (1_650_000_000, 123_456_700),
        (1_600_000_000, 987_654_300),
    );
    xset(&inv, ATTRIB, &0x23u32.to_be_bytes());
    // An illegal name with a stream and attributes: mapped, and its metadata still follows.
    let ab = p.join("a:b.txt");
    xset(&ab, "user.Zone.Identifier", ZONE);
    xset(&ab, ATTRIB, &0x22u32.to_be_bytes());
    // A hidden system folder with a hidden system file (Explorer's desktop.ini).
    let ini = p.join("Private/desktop.ini");
    std::fs::write(&ini, b"[.ShellClassInfo]\r\n").unwrap();
    xset(&ini, ATTRIB, &0x26u32.to_be_bytes());
    xset(&p.join("Private"), ATTRIB, &0x16u32.to_be_bytes());
}

fn xset(p: &Path, name: &str, v: &[u8]) {
    xattr::set(p, name, v).unwrap_or_else(|e| panic!("setting {name} on {}: {e}", p.display()));
}

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    use nix::sys::time::TimeSpec;
    nix::sys::stat::utimensat(
        None,
        p,
        &TimeSpec::new(atime.0, atime.1),
        &TimeSpec::new(mtime.0, mtime.1),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("setting the times of {}: {e}", p.display()));
}

/// What the check compares of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `file`, `dir` or `link`.
    pub kind: &'static str,
    /// BLAKE3 of a file's content.
    pub hash: Option<String>,
    /// A link's text.
    pub link: Option<String>,
    /// Modification time (s, ns); NTFS keeps 100 ns, so equal means equal to NTFS precision.
    pub mtime: Option<(i64, i64)>,
    /// A file's access time (s, ns), as a read-only mount shows it (a directory's changes
    /// whenever it is listed, so it is not compared).
    pub atime: Option<(i64, i64)>,
    /// `system.ntfs_crtime_be`.
    pub crtime: Option<Vec<u8>>,
    /// DOS attributes tek keeps: read-only, hidden, system, archive (directories: the first
    /// three; ntfs-3g sets archive on a new directory by itself).
    pub attrib: Option<u32>,
    /// Alternate data streams (ntfs-3g's `user.*` attributes) by name.
    pub streams: BTreeMap<String, Vec<u8>>,
}

/// Relative path (`/`-separated) -> [`Facts`] of every entry under `root`, on an ntfs-3g mount.
pub fn snapshot(root: &Path) -> BTreeMap<String, Facts> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Facts>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let kind = if md.file_type().is_symlink() {
                "link"
            } else if md.is_dir() {
                "dir"
            } else {
                "file"
            };
            let mut f = Facts {
                kind,
                hash: (kind == "file").then(|| b3(&p)),
                link: (kind == "link")
                    .then(|| std::fs::read_link(&p).unwrap().display().to_string()),
                mtime: None,
                atime: None,
                crtime: None,
                attrib: None,
                streams: BTreeMap::new(),
            };
            if kind != "link" {
                f.mtime = Some((md.mtime(), md.mtime_nsec()));
                f.atime = (kind == "file").then(|| (md.atime(), md.atime_nsec()));
                f.crtime = xattr::get(&p, CRTIME_XATTR).unwrap();
                let bits = xattr::get(&p, ATTRIB)
                    .unwrap()
                    .map(|v| u32::from_be_bytes(v.try_into().unwrap()));
                let kept = if kind == "dir" { 0x07 } else { 0x27 };
                f.attrib = bits.map(|b| b & kept);
                for n in xattr::list(&p).unwrap() {
                    if let Some(stream) = n.to_str().and_then(|n| n.strip_prefix("user.")) {
                        let v = xattr::get(&p, &n).unwrap().unwrap_or_default();
                        f.streams.insert(stream.to_string(), v);
                    }
                }
            }
            out.insert(rel, f);
            if kind == "dir" {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Where each staged path should be on the new disk: the report's mappings (`from` -> `to`,
/// whole relative paths as `winnames::show` spells them) applied to the path's longest mapped
/// prefix; unmapped paths keep their names.
pub fn mapped_paths<'a>(
    staged: impl Iterator<Item = &'a String>,
    mappings: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    staged
        .map(|rel| {
            let mut orig = String::new();
            let mut now = String::new();
            for c in rel.split('/') {
                let sep = if orig.is_empty() { "" } else { "/" };
                orig = format!("{orig}{sep}{c}");
                let shown = client_data::winnames::show(OsStr::new(&orig).as_bytes());
                now = match mappings.get(&shown) {
                    Some(to) => to.clone(),
                    None => format!("{now}{sep}{c}"),
                };
            }
            (rel.clone(), now)
        })
        .collect()
}
