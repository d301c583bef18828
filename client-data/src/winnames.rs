//! Names Windows cannot hold, mapped to names it can: the rule `tek-winnames-1`.
//!
//! Applied when the restore target is NTFS or FAT. A name component is mapped byte-wise into
//! the Unicode private-use block U+F000..U+F0FF, the convention Cygwin and WSL use (so their
//! tools show the original name, and Windows shows a look-alike glyph):
//! - the characters `< > : " \ | ? *` and the control characters 0x01-0x1F become U+F000 + the
//!   byte (`a:b` -> `a\u{F03A}b`), and so does a trailing dot or space (`x.` -> `x\u{F02E}`);
//! - a reserved device name (`CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9`, `LPT1`-`LPT9`, any case,
//!   with or without an extension) has the last character of its base mapped (`con.txt` ->
//!   `co\u{F06E}.txt`);
//! - bytes that are not valid UTF-8 become U+F000 + the byte (NTFS stores UTF-16 names);
//! - characters of the source already in U+F000..U+F1FF are written as their UTF-8 bytes,
//!   each mapped (so the escapes of the first three rules are unambiguous);
//! - names that become equal ignoring case in one directory (`Report.txt`, `report.TXT`: one
//!   name on Windows) keep the first (in manifest order); each later one gets U+F100 and a
//!   number before its extension (`report\u{F100}2.TXT`), the smallest number from 2 whose
//!   result is free.
//!
//! Unmapping ([`unmap`]) drops U+F100 and the digits after it, then turns every U+F000 + b back
//! into the byte b: for every name, `unmap(map(name)) == name`, and distinct names of a
//! directory get distinct mapped names. A mapped name longer than 255 UTF-16 units (NTFS's
//! limit) is refused.

use std::collections::{HashMap, HashSet};

const BASE: u32 = 0xF000;
/// Starts a case-clash number.
const CLASH: char = '\u{F100}';

fn is_reserved_base(base: &str) -> bool {
    let b = base.to_ascii_uppercase();
    matches!(b.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((b.starts_with("COM") || b.starts_with("LPT"))
            && b.len() == 4
            && matches!(b.as_bytes()[3], b'1'..=b'9'))
}

fn esc(b: u8) -> char {
    char::from_u32(BASE + u32::from(b)).expect("private-use char")
}

/// Maps one name component (raw bytes) to a name Windows can hold (without the case rule).
pub fn map(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            let u = c as u32;
            if u < 0x20 || "<>:\"\\|?*".contains(c) {
                out.push(esc(u as u8));
            } else if (BASE..=0xF1FF).contains(&u) {
                let mut b = [0u8; 4];
                for &x in c.encode_utf8(&mut b).as_bytes() {
                    out.push(esc(x));
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            out.push(esc(b));
        }
    }
    // Trailing dots and spaces: Windows strips them.
    let trail = out.len() - out.trim_end_matches(['.', ' ']).len();
    if trail > 0 {
        let keep = out.len() - trail;
        let tail: String = out[keep..].bytes().map(esc).collect();
        out.truncate(keep);
        out.push_str(&tail);
    }
    let base_end = out.find('.').unwrap_or(out.len());
    if is_reserved_base(&out[..base_end]) {
        let last = out[..base_end]
            .chars()
            .last()
            .expect("reserved names are not empty");
        let mut m = String::new();
        m.push_str(&out[..base_end - last.len_utf8()]);
        m.push(esc(last as u8));
        m.push_str(&out[base_end..]);
        out = m;
    }
    out
}

/// The original bytes of a mapped name (see the module doc).
pub fn unmap(mapped: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(mapped.len());
    let mut chars = mapped.chars().peekable();
    while let Some(c) = chars.next() {
        let u = c as u32;
        if c == CLASH {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
        } else if (BASE..BASE + 0x100).contains(&u) {
            out.push((u - BASE) as u8);
        } else {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    out
}

/// Windows' case-insensitive comparison key (simple upper-casing per character, as NTFS's
/// upcase table does).
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut u = c.to_uppercase();
            match (u.next(), u.next()) {
                (Some(x), None) => x,
                _ => c,
            }
        })
        .collect()
}

/// A name mapping made by a restore, for its result and report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NameMapping {
    /// Manifest entry number.
    pub entry: u64,
    /// The staged path (relative to the target; bytes that are not UTF-8 shown as `\xNN`).
    pub from: String,
    /// The path it was restored as.
    pub to: String,
    /// The same with each private-use character written `\u{F03A}`, for reading (the real
    /// characters show as boxes or look-alikes).
    pub to_escaped: String,
}

/// `p` with the characters of the mapping's private-use range written as `\u{XXXX}`.
pub fn escaped(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for c in p.chars() {
        if (0xF000..=0xF1FF).contains(&(c as u32)) {
            s.push_str(&format!("\\u{{{:04X}}}", c as u32));
        } else {
            s.push(c);
        }
    }
    s
}

impl NameMapping {
    /// A mapping of entry `n` from raw `from` to `to`.
    pub fn new(n: u64, from: &[u8], to: &[u8]) -> NameMapping {
        let to = show(to);
        NameMapping {
            entry: n,
            from: show(from),
            to_escaped: escaped(&to),
            to,
        }
    }
}

/// A symlink's text with each component other than `.` and `..` mapped by [`map`] (a
/// leading `/` and empty components kept), so a link to a renamed entry still names it and
/// the text is one NTFS can store (valid UTF-16).
pub fn map_link_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for (i, c) in text.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        match c {
            b"" | b"." | b".." => out.extend_from_slice(c),
            c => out.extend_from_slice(map(c).as_bytes()),
        }
    }
    out
}

/// Shows raw path bytes: UTF-8 as is, other bytes as `\xNN`.
pub fn show(p: &[u8]) -> String {
    let mut s = String::new();
    for chunk in p.utf8_chunks() {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// The mapping of a whole dataset, built from its manifest before anything is written.
#[derive(Debug, Default)]
pub struct NameMap {
    /// Staged path -> mapped path, for every entry whose path changes (also through a parent).
    paths: HashMap<Vec<u8>, Vec<u8>>,
    /// Per mapped parent directory, the folded names taken.
    taken: HashMap<Vec<u8>, HashSet<String>>,
    /// The mappings of entries whose own name changed, in entry order.
    pub mappings: Vec<NameMapping>,
}

/// A mapped name Windows cannot store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    /// The mapped name.
    pub mapped: String,
}

impl NameMap {
    /// Maps entry `n`'s path (its parent was added before, as the manifest orders them);
    /// returns the mapped path.
    pub fn add(&mut self, n: u64, path: &[u8]) -> Result<Vec<u8>, TooLong> {
        let (parent, name) = crate::restore::split(path);
        let mparent = self.get(parent).to_vec();
        let mut mapped = map(name);
        let taken = self.taken.entry(mparent.clone()).or_default();
        if taken.contains(&fold(&mapped)) {
            let dot = mapped.rfind('.').filter(|&i| i > 0).unwrap_or(mapped.len());
            let (stem, ext) = mapped.split_at(dot);
            mapped = (2u64..)
                .map(|k| format!("{stem}{CLASH}{k}{ext}"))
                .find(|m| !taken.contains(&fold(m)))
                .expect("a free number");
        }
        if mapped.encode_utf16().count() > 255 {
            return Err(TooLong { mapped });
        }
        taken.insert(fold(&mapped));
        let mut full = mparent;
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(mapped.as_bytes());
        if mapped.as_bytes() != name {
            self.mappings.push(NameMapping::new(n, path, &full));
        }
        if full != path {
            self.paths.insert(path.to_vec(), full.clone());
        }
        Ok(full)
    }

    /// The mapped path of an entry (or of a path inside the dataset) added before.
    pub fn get<'a>(&'a self, path: &'a [u8]) -> &'a [u8] {
        self.paths.get(path).map_or(path, Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_case_is_mapped_and_reverses() {
        let cases: &[(&[u8], &str)] = &[
            (b"plain.txt", "plain.txt"),
            (b"a:b", "a\u{F03A}b"),
            (
                b"<>:\"\\|?*",
                "\u{F03C}\u{F03E}\u{F03A}\u{F022}\u{F05C}\u{F07C}\u{F03F}\u{F02A}",
            ),
            (b"tab\there", "tab\u{F009}here"),
            (b"x.", "x\u{F02E}"),
            (b"x. .", "x\u{F02E}\u{F020}\u{F02E}"),
            (b"x ", "x\u{F020}"),
            (b"CON", "CO\u{F04E}"),
            (b"con.txt", "co\u{F06E}.txt"),
            (b"Lpt9.tar.gz", "Lpt\u{F039}.tar.gz"),
            (b"COM0", "COM0"),
            (b"CONSOLE", "CONSOLE"),
            (b"caf\xe9", "caf\u{F0E9}"),
            ("\u{F03A}".as_bytes(), "\u{F0EF}\u{F080}\u{F0BA}"),
            ("\u{F100}".as_bytes(), "\u{F0EF}\u{F084}\u{F080}"),
        ];
        for (raw, want) in cases {
            let m = map(raw);
            assert_eq!(&m, want, "{}", show(raw));
            assert_eq!(unmap(&m), *raw, "{}", show(raw));
        }
    }

    #[test]
    fn link_texts_are_mapped_by_component() {
        assert_eq!(map_link_text(b"../a:b/./c"), "../a\u{F03A}b/./c".as_bytes());
        assert_eq!(
            map_link_text(b"/abs/caf\xe9"),
            "/abs/caf\u{F0E9}".as_bytes()
        );
        assert_eq!(map_link_text(b"plain"), b"plain");
    }

    #[test]
    fn case_clashes_get_numbers_and_nothing_collides() {
        let mut m = NameMap::default();
        assert_eq!(m.add(0, b"Report.txt").unwrap(), b"Report.txt");
        let second = m.add(1, b"report.TXT").unwrap();
        assert_eq!(
            String::from_utf8(second.clone()).unwrap(),
            "report\u{F100}2.TXT"
        );
        assert_eq!(unmap(std::str::from_utf8(&second).unwrap()), b"report.TXT");
        let third = m.add(2, b"REPORT.txt").unwrap();
        assert_eq!(String::from_utf8(third).unwrap(), "REPORT\u{F100}3.txt");
        // A directory renamed by the case rule takes its children along.
        m.add(3, b"Docs").unwrap();
        m.add(4, b"docs").unwrap();
        let child = m.add(5, b"docs/a:b").unwrap();
        assert_eq!(
            String::from_utf8(child).unwrap(),
            "docs\u{F100}2/a\u{F03A}b"
        );
        assert_eq!(m.mappings.len(), 4);
        assert_eq!(m.mappings[3].from, "docs/a:b");
        assert_eq!(m.mappings[3].to_escaped, "docs\\u{F100}2/a\\u{F03A}b");
        // Same name in another directory is fine.
        assert_eq!(m.add(6, b"Docs/report.TXT").unwrap(), b"Docs/report.TXT");
        assert!(m.add(7, "é".repeat(200).as_bytes()).is_ok());
        assert!(m.add(8, &[b':'; 200]).is_ok());
        let long = [0xffu8; 255];
        assert!(m.add(9, &long).is_ok(), "255 escapes are 255 UTF-16 units");
    }
}
