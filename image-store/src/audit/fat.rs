//! Walking a FAT12/16/32 tree, never mounting: with `fatfs` (pure Rust) where it can, and with
//! mtools (`mdir`, `mcopy`) in a subprocess for the FAT32 volumes `fatfs` refuses.
//!
//! Why not `fatfs` alone (the pure-Rust reader the sample image is built with): 0.3.6 refuses
//! every FAT32 volume with fewer than 65525 clusters ("FAT32 determination" in its BPB check), which
//! is what `mkfs.fat -F 32` and Windows make for a 100-500 MiB ESP, so every real image came out
//! "not clean". The other pure-Rust FAT crates either decide the FAT type from the cluster count
//! too (and would then misread such a FAT32 as FAT16) or need a newer toolchain. mtools decides
//! FAT32 from the BPB (`sectors_per_fat_16 == 0`), as Windows and Linux do.
//!
//! The partition is first copied (sparsely) out of the audit's read-only window into an unnamed
//! temporary file, so mtools never sees the image itself and whatever it might write lands on a
//! throw-away copy. Every mtools run is bounded by `prlimit` (address space, CPU time, no core
//! file) and by the walk's entry and depth limits, checked while the listing
//! streams in (the child is killed at the first bound hit), so a directory cycle or a hostile
//! FAT ends as an error for this partition in bounded time and memory.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::process::{Child, Command, Stdio};

use super::rules::Rules;
use super::window::Window;
use super::{Counter, Kind, Limits, PartitionError, io_err};

/// FAT partitions larger than this are not copied out (an ESP is 100-500 MiB; FAT32 is rarely
/// used above a few GiB); such a partition is an error for the audit, with this reason.
pub(super) const MAX_FAT_COPY: u64 = 16 << 30;
/// Address space an mtools child may use.
const CHILD_MEMORY: u64 = 1 << 30;
/// CPU seconds an mtools child may use.
const CHILD_CPU_SECS: u64 = 120;

/// Walks the FAT filesystem in `w`, feeding every entry to `rules`; returns the entries visited.
/// `fatfs` reads what it accepts (FAT12/16, and FAT32 of at least 65525 clusters: no tool
/// needed, as for the sample image on a fresh machine); a FAT32 by its BPB with fewer clusters
/// goes to mtools.
pub(super) fn walk<R: Read + Seek>(
    w: &mut Window<R>,
    limits: &Limits,
    rules: &mut Rules,
) -> Result<u64, PartitionError> {
    let g = super::free::FatGeometry::read(w)?;
    if g.fat_type == 32 && g.clusters < FATFS_MIN_FAT32_CLUSTERS {
        walk_mtools(w, &g, limits, rules)
    } else {
        walk_fatfs(w, limits, rules)
    }
}

/// The fewest clusters `fatfs` 0.3 accepts in a FAT32 (the FAT specification's boundary).
const FATFS_MIN_FAT32_CLUSTERS: u64 = 65525;

/// The `fatfs` walk, over a window whose `Write` always fails, access dates not updated.
fn walk_fatfs<R: Read + Seek>(
    w: &mut Window<R>,
    limits: &Limits,
    rules: &mut Rules,
) -> Result<u64, PartitionError> {
    use fatfs::{FileSystem, FsOptions};
    let mut dev = w.clone();
    dev.seek(SeekFrom::Start(0))
        .map_err(|e| io_err("seeking", e))?;
    let fs = FileSystem::new(dev, FsOptions::new().update_accessed_date(false))
        .map_err(|e| io_err("reading the FAT boot sector", e))?;
    let mut count = Counter::new(limits);
    let mut stack = vec![(fs.root_dir(), String::new(), 0usize)];
    while let Some((dir, dir_path, depth)) = stack.pop() {
        for ent in dir.iter() {
            let ent = ent.map_err(|e| io_err("reading a FAT directory", e))?;
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

/// The mtools walk over a temporary copy of the partition.
fn walk_mtools<R: Read + Seek>(
    w: &mut Window<R>,
    g: &super::free::FatGeometry,
    limits: &Limits,
    rules: &mut Rules,
) -> Result<u64, PartitionError> {
    let copy = copy_out(w)?;
    let mut child = mtools(
        "mdir",
        &["-/", "-a", "-f", "-i", "/dev/stdin", "::/"],
        &copy,
    )?;
    let out = child.stdout.take().expect("stdout is piped");
    let mut parser = Listing::default();
    let mut count = Counter::new(limits);
    // Entries are checked as the listing streams in (contents read by mcopy meanwhile), so a
    // listing without end costs time up to the entry bound, never memory.
    let mut any = false;
    let lines = BufReader::new(out).split(b'\n');
    let result = (|| {
        for line in lines {
            let line = line.map_err(|e| io_err("reading the mdir listing", e))?;
            let line = String::from_utf8_lossy(&line);
            if let Some(e) = parser.line(&line)? {
                count.entry(e.depth())?;
                any = true;
                let kind = if e.dir { Kind::Dir } else { Kind::File };
                rules.visit(&e.path, kind, e.size, &mut |n| {
                    read_head(&copy, &e.short, n.min(e.size as usize))
                });
            }
        }
        Ok(())
    })();
    let status = finish(child, result.is_err())?;
    result?;
    let empty = !status.success() && !any && root_is_empty(w, g)?;
    if !status.success() && !empty {
        return Err(PartitionError(format!(
            "mdir (mtools) could not read this FAT filesystem ({status})"
        )));
    }
    Ok(count.entries)
}

/// True when the FAT32 root directory holds nothing, read from the volume itself: `mdir -/`
/// fails on an empty root ("File not found"), and it fails the same way on a volume it misreads
/// (mtools 4.0.32 takes some FAT32 volumes of few clusters for FAT16 and then says "No files"
/// of a root full of entries), so mtools' word is not taken for it. Empty means: the root is one
/// cluster (its FAT entry ends the chain) and every entry slot in it is free (0x00 or 0xE5) or
/// the volume label. Slots after a 0x00 end marker are checked too (Linux reads past it).
fn root_is_empty<R: Read + Seek>(
    w: &mut Window<R>,
    g: &super::free::FatGeometry,
) -> Result<bool, PartitionError> {
    let root = g.root_cluster;
    if root < 2 || root - 2 >= g.clusters {
        return Err(PartitionError(format!(
            "FAT32 root directory at cluster {root} of {}",
            g.clusters
        )));
    }
    let mut next = [0u8; 4];
    w.read_at(g.reserved * g.bps + root * 4, &mut next)
        .map_err(|e| io_err("reading the FAT", e))?;
    if u32::from_le_bytes(next) & 0x0FFF_FFFF < 0x0FFF_FFF8 {
        return Ok(false);
    }
    let mut dir = vec![0u8; (g.spc * g.bps) as usize];
    w.read_at((g.data + (root - 2) * g.spc) * g.bps, &mut dir)
        .map_err(|e| io_err("reading the FAT32 root directory", e))?;
    Ok(dir.chunks(32).all(|e| {
        let label = e[11] & 0x08 != 0 && e[11] & 0x0F != 0x0F;
        e[0] == 0x00 && e.iter().all(|&b| b == 0) || e[0] == 0xE5 || label
    }))
}

/// One entry of the listing: its long-name path (what rules match), its short-name path (what
/// `mcopy` is given: short names cannot hold mtools' wildcard characters), size, kind.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    path: String,
    short: String,
    size: u64,
    dir: bool,
}

impl Entry {
    fn depth(&self) -> usize {
        self.path.matches('/').count()
    }
}

/// Parser state of `mdir -/ -a -f` output (directories are listed after their parent, each
/// under a "Directory for ::/PATH" header naming it by long names).
#[derive(Default)]
struct Listing {
    /// The directory being listed: (long path, short path); None before the first header.
    dir: Option<(String, String)>,
    /// Long path -> short path of every directory seen so far.
    shorts: std::collections::HashMap<String, String>,
}

impl Listing {
    fn line(&mut self, line: &str) -> Result<Option<Entry>, PartitionError> {
        if let Some(d) = line.strip_prefix("Directory for ::") {
            let long = if d == "/" {
                String::new()
            } else {
                d.to_string()
            };
            let short = if long.is_empty() {
                String::new()
            } else {
                self.shorts.get(&long).cloned().ok_or_else(|| {
                    PartitionError(format!(
                        "mdir listed a directory it had not shown as an entry ({} bytes of name)",
                        long.len()
                    ))
                })?
            };
            self.dir = Some((long, short));
            return Ok(None);
        }
        let t = line.trim_start();
        if t.is_empty()
            || line.starts_with(" Volume ")
            || t.starts_with("Total files listed:")
            || t == "No files"
            || (line.starts_with(' ') && t.split(' ').next().is_some_and(is_digits))
        {
            return Ok(None);
        }
        let Some((dir_long, dir_short)) = &self.dir else {
            return Err(unexpected(line));
        };
        // Columns (characters, as mtools pads them): short name 0..8, extension 9..12, size or
        // <DIR> 12..22, date 23..33, time 35..40, then the long name from 42 if there is one.
        let c: Vec<char> = line.chars().collect();
        if c.len() < 40 || c[8] != ' ' || c[22] != ' ' {
            return Err(unexpected(line));
        }
        let col = |a: usize, b: usize| c[a..b.min(c.len())].iter().collect::<String>();
        let base = col(0, 8).trim_end().to_string();
        let ext = col(9, 12).trim_end().to_string();
        let field = col(12, 22).trim().to_string();
        let long = if c.len() > 42 {
            col(42, c.len())
        } else {
            String::new()
        };
        let short_name = if ext.is_empty() {
            base
        } else {
            format!("{base}.{ext}")
        };
        if short_name == "." || short_name == ".." {
            return Ok(None);
        }
        let (dir, size) = match field.as_str() {
            "<DIR>" => (true, 0),
            f if is_digits(f) => (false, f.parse().map_err(|_| unexpected(line))?),
            _ => return Err(unexpected(line)),
        };
        let name = if long.is_empty() { &short_name } else { &long };
        let e = Entry {
            path: format!("{dir_long}/{name}"),
            short: format!("{dir_short}/{short_name}"),
            size,
            dir,
        };
        if dir {
            self.shorts.insert(e.path.clone(), e.short.clone());
        }
        Ok(Some(e))
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A listing line the parser does not know; the line itself is not quoted (it may hold a
/// person's name).
fn unexpected(line: &str) -> PartitionError {
    PartitionError(format!(
        "unexpected line in the mdir listing ({} characters): a hostile or damaged FAT directory",
        line.chars().count()
    ))
}

/// Copies the window into an unnamed temporary file, leaving all-zero blocks as holes.
fn copy_out<R: Read + Seek>(w: &mut Window<R>) -> Result<std::fs::File, PartitionError> {
    if w.len() > MAX_FAT_COPY {
        return Err(PartitionError(format!(
            "a FAT partition of {} MiB is larger than the audit reads ({} MiB)",
            w.len() >> 20,
            MAX_FAT_COPY >> 20
        )));
    }
    let mut f = tempfile::tempfile().map_err(|e| io_err("creating a temporary file", e))?;
    let mut src = w.clone();
    src.seek(SeekFrom::Start(0))
        .map_err(|e| io_err("seeking", e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf).map_err(|e| io_err("reading the partition", e))?;
        if n == 0 {
            break;
        }
        if !super::free::all_zero(&buf[..n]) {
            f.seek(SeekFrom::Start(at))
                .and_then(|_| f.write_all(&buf[..n]))
                .map_err(|e| io_err("writing the temporary copy", e))?;
        }
        at += n as u64;
    }
    f.set_len(at)
        .map_err(|e| io_err("sizing the temporary copy", e))?;
    Ok(f)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}

/// Starts an mtools command under `prlimit`. The copy (an unnamed file) is the child's stdin,
/// and mtools is pointed at `/dev/stdin`, which opens that very file again (seekable).
fn mtools(cmd: &str, args: &[&str], img: &std::fs::File) -> Result<Child, PartitionError> {
    let fd = img
        .try_clone()
        .map_err(|e| io_err("sharing the temporary copy", e))?;
    Command::new("prlimit")
        .arg(format!("--as={CHILD_MEMORY}"))
        .arg(format!("--cpu={CHILD_CPU_SECS}"))
        .arg("--core=0")
        .arg("--")
        .arg(cmd)
        .args(args)
        .env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::from(fd))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            PartitionError(format!(
                "running {cmd} (mtools, under prlimit from util-linux) to read this FAT \
                 filesystem: {e}"
            ))
        })
}

/// Waits for `child`, killing it first when the caller stopped reading early.
fn finish(mut child: Child, kill: bool) -> Result<std::process::ExitStatus, PartitionError> {
    if kill {
        let _ = child.kill();
    }
    child.wait().map_err(|e| io_err("waiting for mtools", e))
}

/// Up to `n` bytes of the file at short path `short` in the copy.
fn read_head(copy: &std::fs::File, short: &str, n: usize) -> Result<Vec<u8>, String> {
    if short.contains(['*', '?', '[', ']']) {
        return Err("a short name with wildcard characters".into());
    }
    let src = format!("::{short}");
    let mut child =
        mtools("mcopy", &["-n", "-i", "/dev/stdin", &src, "-"], copy).map_err(|e| e.0)?;
    let mut out = Vec::new();
    let r = child
        .stdout
        .take()
        .expect("stdout is piped")
        .take(n as u64)
        .read_to_end(&mut out);
    let status = finish(child, r.is_err() || out.len() >= n).map_err(|e| e.0)?;
    r.map_err(|e| e.to_string())?;
    if out.len() < n && !status.success() {
        return Err(format!("mcopy could not read it ({status})"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Entry>, PartitionError> {
        let mut l = Listing::default();
        let mut v = Vec::new();
        for line in text.lines() {
            if let Some(e) = l.line(line)? {
                v.push(e);
            }
        }
        Ok(v)
    }

    const LISTING: &str = " Volume in drive : is ESPLABEL   
 Volume Serial Number is 1B59-1973
Directory for ::/

EFI          <DIR>     2026-12-01  23:01 
USERS        <DIR>     2026-12-01  23:01  Users
        2 files                   0 bytes

Directory for ::/EFI

.            <DIR>     2026-12-01  23:01 
..           <DIR>     2026-12-01  23:01 
big      bin   3000000 2026-12-01  23:01 
A_1_~1   TXT         6 2026-12-01  23:01  a[1].txt
        4 files           3 000 006 bytes

Directory for ::/Users

MÜLLER       <DIR>     2026-12-01  23:01  Müller
        1 file                    0 bytes

Directory for ::/Users/Müller

é        txt         6 2026-12-01  23:01 
        1 file                    6 bytes

Total files listed:
        9 files           3 000 012 bytes
";

    #[test]
    fn listing_gives_long_paths_short_paths_and_sizes() {
        let v = parse(LISTING).unwrap();
        let got: Vec<(&str, &str, u64, bool)> = v
            .iter()
            .map(|e| (e.path.as_str(), e.short.as_str(), e.size, e.dir))
            .collect();
        assert_eq!(
            got,
            [
                ("/EFI", "/EFI", 0, true),
                ("/Users", "/USERS", 0, true),
                ("/EFI/big.bin", "/EFI/big.bin", 3000000, false),
                ("/EFI/a[1].txt", "/EFI/A_1_~1.TXT", 6, false),
                ("/Users/Müller", "/USERS/MÜLLER", 0, true),
                ("/Users/Müller/é.txt", "/USERS/MÜLLER/é.txt", 6, false),
            ]
        );
    }

    #[test]
    fn odd_lines_and_unknown_directories_are_errors_that_quote_nothing() {
        let e =
            parse("Directory for ::/\n\nthis is not an mdir line at all, Bob Smith\n").unwrap_err();
        assert!(!e.0.contains("Bob"), "{}", e.0);
        let e = parse("Directory for ::/Users/Bob\n").unwrap_err();
        assert!(!e.0.contains("Bob"), "{}", e.0);
    }
}
