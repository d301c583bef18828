//! The privacy audit: proves an image is unpopulated (DESIGN invariant 7) by reading every
//! filesystem in it **without the kernel**: ext4 through `ext4-view` and NTFS through `ntfs`
//! (pure Rust, over a read-only [`window::Window`] of the image), FAT through mtools in a
//! bounded subprocess over a temporary copy of the partition (see [`fat`] for why). An image is
//! untrusted input; a hostile filesystem must never reach the bench's kernel drivers.
//!
//! Data flow: [`audit_image`] finds the partitions (GPT summary, or the whole image), sniffs each
//! one's filesystem, walks its tree ([`ext4`], [`ntfs`], [`fat`]) and feeds every entry to the
//! [`rules::Rules`] (and, with `deep`, text-like file contents to [`deep`]). Each partition is
//! bounded: entries, depth, bytes read and a panic guard; a partition that exceeds them ends with
//! an error for that partition, never a hang. Findings name the rule, partition and path; matched
//! personal text is never kept, only counts (paths are masked the same way).

pub mod deep;
mod ext4;
mod fat;
pub mod free;
mod ntfs;
mod open;
pub mod rules;
mod unread;
mod verdict;
pub mod window;

pub use open::{audit_file, gpt_of};
pub use unread::{RULE_BEYOND, RULE_OUTSIDE, RULE_UNREAD};
pub use verdict::{NotClean, require_clean};

use std::io::{Read, Seek};

use serde::{Deserialize, Serialize};

use crate::manifest::GptSummary;
use window::Window;

/// Version of the rule set; recorded with every verdict so a later, stricter rule set can tell
/// which images were audited by an older one. 2: `--deep` does not scan packaged software
/// ([`deep::PACKAGED_SOFTWARE`]). 3: a partition with no filesystem the audit reads must read as
/// zeros, and so must the bytes outside every partition and those of a partition after its
/// filesystem's end ([`unread`]); before 3 they were passed unread.
pub const RULES_VERSION: u32 = 3;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data of a person.
    Personal,
    /// A state that leaks per-machine secrets.
    Risk,
    /// Worth knowing, not blocking.
    Info,
}

impl Severity {
    /// The word printed and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Personal => "personal",
            Severity::Risk => "risk",
            Severity::Info => "info",
        }
    }
    /// True for the severities that make an image unclean.
    pub fn blocks(self) -> bool {
        matches!(self, Severity::Personal | Severity::Risk)
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Stable id (from rule, partition and path), used by `tek image accept`.
    pub id: String,
    /// Severity.
    pub severity: Severity,
    /// GPT partition number (0: the whole image, no partition table).
    pub partition: u32,
    /// Path inside the partition's filesystem, personal strings masked.
    pub path: String,
    /// Rule id, e.g. `win.profile`.
    pub rule: String,
    /// What the rule saw, in words (counts only; never matched text).
    pub detail: String,
}

impl Finding {
    fn new(sev: Severity, partition: u32, path: &str, rule: &str, detail: String) -> Finding {
        let path = deep::mask_text(path);
        let mut h = blake3::Hasher::new();
        for part in [rule, &partition.to_string(), &path] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        Finding {
            id: h.finalize().to_hex()[..12].to_string(),
            severity: sev,
            partition,
            path,
            rule: rule.to_string(),
            detail,
        }
    }
}

/// What the audit did with one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PartitionStatus {
    /// Its whole tree was read.
    Audited {
        /// Entries visited.
        entries: u64,
    },
    /// No filesystem the audit reads, and not blank: its tree was not read (from rules 3 a
    /// `fs.unread` risk finding says how many bytes are there; before 3 nothing was read).
    NotAudited {
        /// Why, e.g. "a xfs filesystem, which the audit does not read".
        reason: String,
    },
    /// No filesystem, and every byte reads zero (Windows' MSR, an empty ESP): nothing to leak.
    Blank {
        /// The partition's size.
        bytes: u64,
    },
    /// The reader failed or hit a bound: the partition's contents are unknown.
    Error {
        /// What went wrong.
        reason: String,
    },
}

/// One partition's audit. (No `deny_unknown_fields`: serde does not support it with
/// `flatten`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAudit {
    /// GPT partition number (0: the whole image).
    pub number: u32,
    /// GPT name.
    pub name: String,
    /// `ext4`, `ntfs` or `fat` (read), what the first bytes of one the audit does not read say
    /// (`xfs`, `btrfs`, `bitlocker`), or `none`.
    pub filesystem: String,
    /// Outcome.
    #[serde(flatten)]
    pub status: PartitionStatus,
    /// Free space and how much of it is not zero (remnants), when the allocation map was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<free::FreeSpace>,
}

/// An accepted finding: a maintainer's explicit decision, kept in the signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// The finding's id.
    pub finding: String,
    /// The reason code given.
    pub reason: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// A whole image's audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditReport {
    /// [`RULES_VERSION`] at the time of the audit.
    pub rules_version: u32,
    /// Whether `--deep` content scanning ran.
    pub deep: bool,
    /// Every partition, in table order.
    pub partitions: Vec<PartitionAudit>,
    /// Every finding.
    pub findings: Vec<Finding>,
    /// Findings a maintainer accepted.
    #[serde(default)]
    pub accepted: Vec<Acceptance>,
    /// The bytes outside every partition and the partition table, and how many are not zero
    /// (rules 3; absent for an image without a GPT, whose whole is partition 0, and before 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<free::FreeSpace>,
}

/// Bounds on one partition's audit; a hostile filesystem hits one and ends with an error.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Directory entries visited at most.
    pub max_entries: u64,
    /// Directory depth at most.
    pub max_depth: usize,
    /// Bytes read at most, as a multiple of the partition's size (plus 256 MiB).
    pub read_factor: u64,
    /// Bytes of one file's contents read at most (rule checks and `--deep`).
    pub max_file_read: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 2_000_000,
            max_depth: 64,
            read_factor: 8,
            max_file_read: 4 << 20,
        }
    }
}

/// Audit options.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditOptions {
    /// Scan text-like file contents for personal data patterns.
    pub deep: bool,
    /// Bounds per partition.
    pub limits: Limits,
}

/// A partition-level failure: the reader's error, a bound hit, or a panic in a reader.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PartitionError(pub String);

/// The filesystem of a partition, from its magic numbers (the one table, [`blockdev::fstype`]):
/// the reader to use (`ext4`, `ntfs`, `fat`, or `none` for every other), and what the first
/// bytes say it is.
pub(crate) fn sniff<R: Read + Seek>(w: &mut Window<R>) -> (&'static str, Option<blockdev::FsKind>) {
    let mut b = vec![0u8; (blockdev::fstype::PROBE_LEN as u64).min(w.len()) as usize];
    if w.read_at(0, &mut b).is_err() {
        return ("none", None);
    }
    let kind = blockdev::fstype::identify(&b);
    let boot_sig = b.get(510..512) == Some(&[0x55, 0xAA][..]);
    let reader = match kind {
        Some(blockdev::FsKind::Ext4) => "ext4",
        Some(blockdev::FsKind::Ntfs) => "ntfs",
        Some(blockdev::FsKind::Vfat) if boot_sig => "fat",
        _ => "none",
    };
    (reader, kind)
}

/// The partitions the audit reads: (number, GPT name, first byte, length) from the GPT
/// summary, or the whole image as partition 0.
pub(crate) fn partitions(size: u64, gpt: Option<&GptSummary>) -> Vec<(u32, String, u64, u64)> {
    match gpt {
        Some(g) => g
            .partitions
            .iter()
            .map(|p| {
                let ss = g.logical_sector_size;
                let start = p.first_lba.saturating_mul(ss);
                let len = (p.last_lba + 1)
                    .saturating_sub(p.first_lba)
                    .saturating_mul(ss);
                (p.number, p.name.clone(), start, len)
            })
            .collect(),
        None => vec![(0, String::new(), 0, size)],
    }
}

/// Audits an image of `size` bytes. `gpt` is the image's GPT summary (None: the whole image is
/// treated as one filesystem, partition 0).
pub fn audit_image<R: Read + Seek + 'static>(
    img: R,
    size: u64,
    gpt: Option<&GptSummary>,
    opts: &AuditOptions,
) -> AuditReport {
    let parts = partitions(size, gpt);
    let mut report = AuditReport {
        rules_version: RULES_VERSION,
        deep: opts.deep,
        partitions: Vec::new(),
        findings: Vec::new(),
        accepted: Vec::new(),
        outside: None,
    };
    let img = std::rc::Rc::new(std::cell::RefCell::new(window::BlockCache::new(img)));
    for (number, name, start, len) in parts {
        if start.saturating_add(len) > size {
            report.partitions.push(PartitionAudit {
                number,
                name,
                filesystem: "none".into(),
                status: PartitionStatus::Error {
                    reason: format!(
                        "the partition table puts it at bytes {start}-{}, past the image's end \
                         ({size} bytes): the image is truncated or its table is forged",
                        start.saturating_add(len)
                    ),
                },
                free: None,
            });
            continue;
        }
        let budget = len.saturating_mul(opts.limits.read_factor) + (256 << 20);
        let mut w = Window::new(img.clone(), start, len, budget);
        let (fs, kind) = sniff(&mut w);
        if fs == "none" {
            let status = unread::partition(&mut w, number, kind, &mut report.findings);
            report.partitions.push(PartitionAudit {
                number,
                name,
                filesystem: kind.map_or("none", |k| k.name()).into(),
                status,
                free: None,
            });
            continue;
        }
        let mut rules = rules::Rules::new(number, opts);
        let walk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match fs {
            "ext4" => ext4::walk(&mut w, &opts.limits, &mut rules),
            "ntfs" => ntfs::walk(&mut w, &opts.limits, &mut rules),
            "fat" => fat::walk(&mut w, &opts.limits, &mut rules),
            _ => unreachable!("partitions with no reader are handled above"),
        }));
        let mut free = None;
        let status = match walk {
            Ok(Ok(_)) if rules.unreadable().is_some() => {
                let reason = deep::mask_text(rules.unreadable().unwrap_or_default());
                report.findings.extend(rules.finish_partial());
                PartitionStatus::Error { reason }
            }
            Ok(Ok(entries)) => {
                report.findings.extend(rules.finish());
                free = remnants(&mut w, fs, number, &mut report.findings);
                match unread::beyond_end(&mut w, fs, number, &mut report.findings) {
                    Ok(()) => PartitionStatus::Audited { entries },
                    Err(e) => PartitionStatus::Error { reason: e.0 },
                }
            }
            Ok(Err(e)) => {
                // Findings up to the failure are still worth reporting.
                report.findings.extend(rules.finish_partial());
                PartitionStatus::Error {
                    reason: deep::mask_text(&e.0),
                }
            }
            Err(_) => PartitionStatus::Error {
                reason: format!("the {fs} reader panicked on this filesystem"),
            },
        };
        report.partitions.push(PartitionAudit {
            number,
            name,
            filesystem: fs.into(),
            status,
            free,
        });
    }
    let mut whole = Window::new(img, 0, size, size.saturating_add(256 << 20));
    match unread::outside(&mut whole, gpt, &mut report.findings) {
        Ok(o) => report.outside = o,
        Err(e) => report.partitions.push(PartitionAudit {
            number: 0,
            name: "outside the partitions".into(),
            filesystem: "none".into(),
            status: PartitionStatus::Error { reason: e.0 },
            free: None,
        }),
    }
    report
}

/// Reads the allocation map of an audited partition and measures its free space; non-zero
/// free space is a `risk` finding (deleted files live on there), and so is an unreadable map
/// (the tree was read, but what the free space holds is unknown).
fn remnants<R: Read + Seek>(
    w: &mut Window<R>,
    fs: &str,
    number: u32,
    findings: &mut Vec<Finding>,
) -> Option<free::FreeSpace> {
    let measured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ranges = free::free_ranges(w, fs)?;
        free::measure(w, &ranges)
    }));
    match measured {
        Ok(Ok(f)) => {
            if f.nonzero_bytes > 0 {
                findings.push(Finding::new(
                    Severity::Risk,
                    number,
                    "/",
                    "fs.remnants",
                    format!(
                        "{} of {} free space hold non-zero bytes (deleted files live on there; \
                         `tek image import --scrub-free` stores the image with free space zeroed)",
                        mib(f.nonzero_bytes),
                        mib(f.free_bytes)
                    ),
                ));
            }
            Some(f)
        }
        Ok(Err(e)) => {
            findings.push(Finding::new(
                Severity::Risk,
                number,
                "/",
                "fs.remnants-unknown",
                format!(
                    "free space not measured ({}): deleted files may live on there",
                    deep::mask_text(&e.0)
                ),
            ));
            None
        }
        Err(_) => {
            findings.push(Finding::new(
                Severity::Risk,
                number,
                "/",
                "fs.remnants-unknown",
                format!(
                    "free space not measured (the {fs} allocation map reader panicked): deleted \
                     files may live on there"
                ),
            ));
            None
        }
    }
}

/// Bytes as MiB with one decimal ("< 0.1 MiB" when not zero but less).
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if bytes > 0 && m < 0.05 {
        return "< 0.1 MiB".into();
    }
    format!("{m:.1} MiB")
}

/// Entry kinds the walkers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// Anything else (symlink, device, ...).
    Other,
}

/// Shared walk bookkeeping: counts entries against the limits.
pub(crate) struct Counter {
    pub entries: u64,
    limits: Limits,
}

impl Counter {
    pub(crate) fn new(limits: &Limits) -> Counter {
        Counter {
            entries: 0,
            limits: *limits,
        }
    }
    pub(crate) fn entry(&mut self, depth: usize) -> Result<(), PartitionError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(PartitionError(format!(
                "more than {} directory entries (a directory cycle or a hostile filesystem)",
                self.limits.max_entries
            )));
        }
        if depth > self.limits.max_depth {
            return Err(PartitionError(format!(
                "directories nested deeper than {} (a directory cycle or a hostile filesystem)",
                self.limits.max_depth
            )));
        }
        Ok(())
    }
}

/// Maps a reader error to a partition error, naming the budget when that is what stopped it.
pub(crate) fn io_err<E: std::fmt::Display + 'static>(what: &str, e: E) -> PartitionError {
    // The ntfs crate prints its I/O variant with Debug (`Error { kind: UnexpectedEof, .. }`):
    // say the I/O error itself.
    if let Some(::ntfs::NtfsError::Io(io)) = (&e as &dyn std::any::Any).downcast_ref() {
        return PartitionError(format!("{what}: {io}"));
    }
    PartitionError(format!("{what}: {e}"))
}
