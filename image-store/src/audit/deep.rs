//! `--deep`: content patterns of personal data in text-like files (e-mail addresses, phone
//! numbers, UK National Insurance and US Social Security numbers, Luhn-checked payment card
//! numbers). Only counts leave this module: the matched text is never returned, printed, logged
//! or stored. [`mask_text`] masks e-mail addresses in anything the audit does print (paths).
//!
//! Files of packaged software ([`packaged_software`]: `/usr` but `/usr/local`, the package
//! managers' own databases, `Windows/WinSxS`, `Program Files`, ...) are not scanned: their
//! documentation, man pages, licences and sources carry their authors' and maintainers'
//! addresses by the hundred (a plain Debian `/usr/share/doc` alone), which are nobody's
//! personal data in an image. The path rules still apply there (a `.pst` or a `*_history`
//! under `/usr` is still found); only the content patterns skip them.

use std::sync::LazyLock;

use regex::bytes::Regex;

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*\.[a-z]{2,24}\b")
        .expect("valid regex")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,5}\)[ .-]?|\b\d{2,5}[ .-])\d{3,4}[ .-]\d{3,4}\b")
        .expect("valid regex")
});
static UK_NI: LazyLock<Regex> = LazyLock::new(|| {
    // Prefix letters kept broad (HMRC's own example, QQ123456C, must count).
    Regex::new(r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b").expect("valid regex")
});
static US_SSN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d{3}-\d{2}-\d{4}\b").expect("valid regex"));
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:\d[ -]?){12,18}\d\b").expect("valid regex"));

/// Counts of matches in one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// E-mail addresses.
    pub email: u64,
    /// Phone numbers.
    pub phone: u64,
    /// UK National Insurance numbers.
    pub uk_ni: u64,
    /// US Social Security numbers.
    pub us_ssn: u64,
    /// Luhn-valid payment card numbers.
    pub card: u64,
}

impl Counts {
    /// All matches.
    pub fn total(&self) -> u64 {
        self.email + self.phone + self.uk_ni + self.us_ssn + self.card
    }
    /// "2 e-mail address(es), 1 UK NI number(s)": counts only.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.email, "e-mail address(es)"),
            (self.phone, "phone number(s)"),
            (self.uk_ni, "UK NI number(s)"),
            (self.us_ssn, "US SSN(s)"),
            (self.card, "payment card number(s)"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| format!("{n} {w}"))
        .collect();
        parts.join(", ")
    }
}

/// Path prefixes (lowercase, from the filesystem's root) of packaged software, which `--deep`
/// does not scan (see the module overview). Linux: `/usr` as the FHS defines it (shareable,
/// read-only, installed by the distribution), `/usr/local` excepted (a local administrator's);
/// the package managers' databases and caches. Windows: the component store, the system
/// folders Setup installs, and Program Files.
pub const PACKAGED_SOFTWARE: [&str; 17] = [
    "/usr/",
    "/var/lib/dpkg/",
    "/var/lib/apt/",
    "/var/cache/apt/",
    "/var/lib/rpm/",
    "/var/cache/dnf/",
    "/windows/winsxs/",
    "/windows/servicing/",
    "/windows/system32/",
    "/windows/syswow64/",
    "/windows/inf/",
    "/windows/assembly/",
    "/windows/microsoft.net/",
    "/windows/systemapps/",
    "/windows/softwaredistribution/",
    "/program files/",
    "/program files (x86)/",
];

/// Prefixes inside [`PACKAGED_SOFTWARE`] that are scanned after all.
const SCANNED_ANYWAY: [&str; 2] = ["/usr/local/", "/windows/system32/config/systemprofile/"];

/// True when `lower` (a lowercase path from the filesystem's root) belongs to packaged software
/// and is not scanned by `--deep`.
pub fn packaged_software(lower: &str) -> bool {
    PACKAGED_SOFTWARE.iter().any(|p| lower.starts_with(p))
        && !SCANNED_ANYWAY.iter().any(|p| lower.starts_with(p))
}

/// Whether a file name looks like text worth scanning (by extension; no extension counts).
pub fn text_like(name: &str) -> bool {
    let ext = match name.rsplit_once('.') {
        Some((_, e)) => e,
        None => return true,
    };
    matches!(
        ext,
        "txt"
            | "csv"
            | "tsv"
            | "log"
            | "md"
            | "json"
            | "xml"
            | "html"
            | "htm"
            | "ini"
            | "cfg"
            | "conf"
            | "eml"
            | "mbox"
            | "vcf"
            | "ics"
            | "rtf"
            | "yaml"
            | "yml"
            | "toml"
            | "sql"
    )
}

/// Counts personal-data patterns in `data`. Binary data (a NUL in the first 8 KiB) is skipped.
pub fn scan(data: &[u8]) -> Counts {
    if data[..data.len().min(8192)].contains(&0) {
        return Counts::default();
    }
    let n = |r: &Regex| r.find_iter(data).count() as u64;
    Counts {
        email: n(&EMAIL),
        phone: n(&PHONE),
        uk_ni: n(&UK_NI),
        us_ssn: n(&US_SSN),
        card: CARD.find_iter(data).filter(|m| luhn(m.as_bytes())).count() as u64,
    }
}

fn luhn(s: &[u8]) -> bool {
    let digits: Vec<u32> = s
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

fn mask_word(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(first) => format!("{first}***"),
        None => String::new(),
    }
}

/// `s` with every e-mail address masked as `j***@e***.com` (first letters and the top-level
/// domain kept), for paths and anything else the audit prints.
pub fn mask_text(s: &str) -> String {
    let out = EMAIL.replace_all(s.as_bytes(), |c: &regex::bytes::Captures<'_>| {
        let m = String::from_utf8_lossy(&c[0]).into_owned();
        let (local, domain) = m.split_once('@').unwrap_or((&m, ""));
        let (host, tld) = domain.rsplit_once('.').unwrap_or((domain, ""));
        format!("{}@{}.{tld}", mask_word(local), mask_word(host))
    });
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_pattern() {
        let t = b"Jane <jane.smith@example.com>, tel +44 20 7946 0958, NI QQ 12 34 56 C,\n\
                  SSN 123-45-6789, card 4111 1111 1111 1111, not a card 4111 1111 1111 1112";
        let c = scan(t);
        assert_eq!((c.email, c.uk_ni, c.us_ssn, c.card), (1, 1, 1, 1));
        assert!(c.phone >= 1);
        assert!(!c.describe().contains("jane"));
        assert_eq!(scan(b"\0binary jane@example.com").total(), 0);
    }

    #[test]
    fn packaged_software_is_not_scanned_but_personal_places_are() {
        for p in [
            "/usr/share/doc/bash/copyright",
            "/usr/share/man/man1/ls.1",
            "/usr/share/common-licenses/gpl-3",
            "/usr/lib/python3/dist-packages/x/readme.txt",
            "/var/lib/dpkg/status",
            "/windows/winsxs/amd64_x/manifest.xml",
            "/program files/app/readme.txt",
            "/program files (x86)/app/license.txt",
        ] {
            assert!(packaged_software(p), "{p}");
        }
        for p in [
            "/home/ann/notes.txt",
            "/root/notes",
            "/etc/app.conf",
            "/srv/www/contacts.csv",
            "/usr/local/share/customers.csv",
            "/users/jsmith/documents/list.csv",
            "/users/public/documents/list.csv",
            "/windows/system32/config/systemprofile/appdata/x.txt",
            "/windows/panther/unattend.xml",
            "/usrx/notes.txt",
        ] {
            assert!(!packaged_software(p), "{p}");
        }
    }

    #[test]
    fn masks_addresses() {
        assert_eq!(
            mask_text("/Users/x/Outlook/jane.smith@example.com.ost"),
            "/Users/x/Outlook/j***@e***.ost"
        );
        assert_eq!(mask_text("/no/address"), "/no/address");
    }
}
