//! The verdict of an audit: what blocks a write ([`AuditReport::blocking`], `failed`,
//! `unread_without_finding`), the one-line verdict, and the one gate, [`require_clean`]
//! (DESIGN invariant 7), typed [`NotClean`].

use super::{AuditReport, Finding, PartitionAudit, PartitionStatus, RULE_UNREAD};

impl AuditReport {
    /// Findings that block a write: `personal` or `risk`, not accepted.
    pub fn blocking(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity.blocks() && !self.accepted.iter().any(|a| a.finding == f.id))
    }
    /// Partitions whose audit failed (their contents are unknown, so they block too).
    pub fn failed(&self) -> impl Iterator<Item = &PartitionAudit> {
        self.partitions
            .iter()
            .filter(|p| matches!(p.status, PartitionStatus::Error { .. }))
    }
    /// Partitions the audit passed unread with no `fs.unread` finding to say what they hold:
    /// audits by rules before 3 (they block: their contents were never looked at).
    pub fn unread_without_finding(&self) -> impl Iterator<Item = &PartitionAudit> {
        self.partitions.iter().filter(|p| {
            matches!(p.status, PartitionStatus::NotAudited { .. })
                && !self
                    .findings
                    .iter()
                    .any(|f| f.partition == p.number && f.rule == RULE_UNREAD)
        })
    }
    /// True when nothing blocks: no unaccepted personal/risk finding, no failed partition, no
    /// partition passed unread.
    pub fn is_clean(&self) -> bool {
        self.blocking().next().is_none()
            && self.failed().next().is_none()
            && self.unread_without_finding().next().is_none()
    }
    /// One line: "clean (rules 1)" or "3 findings (2 blocking), 1 partition unreadable (rules 1)".
    pub fn verdict_line(&self) -> String {
        if self.is_clean() {
            let acc = if self.accepted.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} accepted",
                    counted(self.accepted.len(), "finding", "findings")
                )
            };
            let blank = self
                .partitions
                .iter()
                .filter(|p| matches!(p.status, PartitionStatus::Blank { .. }))
                .count();
            let blank = if blank == 0 {
                String::new()
            } else {
                format!(", {} blank", counted(blank, "partition", "partitions"))
            };
            return format!(
                "clean{acc} ({}{blank}, rules {})",
                counted(self.findings.len(), "finding", "findings"),
                self.rules_version
            );
        }
        let mut s = format!(
            "NOT clean: {} of {}",
            counted(
                self.blocking().count(),
                "blocking finding",
                "blocking findings"
            ),
            self.findings.len()
        );
        let failed = self.failed().count();
        let unread = self.unread_without_finding().count();
        if unread > 0 {
            s.push_str(&format!(
                ", {} never read (rules {})",
                counted(unread, "partition", "partitions"),
                self.rules_version
            ));
        }
        if failed > 0 {
            s.push_str(&format!(
                ", {} could not be audited",
                counted(failed, "partition", "partitions")
            ));
        }
        s.push_str(&format!(" (rules {})", self.rules_version));
        s
    }
}

/// Why an image may not be written under `require_clean_image` (DESIGN invariant 7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotClean {
    /// The manifest carries no audit (imported with `--no-audit`, or format 1).
    #[error("the image was never audited (run `tek image import` again without --no-audit)")]
    NotAudited,
    /// Unaccepted personal or risk findings.
    #[error(
        "the image's privacy audit has {count} unaccepted personal/risk finding(s), first {rule} \
         at {path} (finding {id}; see `tek image show`, accept with `tek image accept`)"
    )]
    Findings {
        /// Number of blocking findings.
        count: usize,
        /// The first one's rule.
        rule: String,
        /// The first one's (masked) path.
        path: String,
        /// The first one's id.
        id: String,
    },
    /// An audit by rules before 3 passed a partition with no filesystem it reads unread.
    #[error(
        "partition {number} of the image holds no filesystem the audit reads, and the audit \
         (rules {rules}) never looked at its bytes; audit it again with `tek image audit \
         NAME@VERSION --record`"
    )]
    NeverRead {
        /// Partition number.
        number: u32,
        /// The audit's rules version.
        rules: u32,
    },
    /// A partition could not be audited (its contents are unknown).
    #[error("partition {number} of the image could not be audited: {reason}")]
    Unreadable {
        /// Partition number.
        number: u32,
        /// Why.
        reason: String,
    },
}

/// Checks that an image's recorded audit lets it be written: audited, every partition read,
/// no unaccepted personal or risk finding.
pub fn require_clean(audit: Option<&AuditReport>) -> Result<(), NotClean> {
    let Some(a) = audit else {
        return Err(NotClean::NotAudited);
    };
    if let Some(p) = a.failed().next() {
        let PartitionStatus::Error { reason } = &p.status else {
            unreachable!("failed() yields errors only")
        };
        return Err(NotClean::Unreadable {
            number: p.number,
            reason: reason.clone(),
        });
    }
    if let Some(p) = a.unread_without_finding().next() {
        return Err(NotClean::NeverRead {
            number: p.number,
            rules: a.rules_version,
        });
    }
    let blocking: Vec<&Finding> = a.blocking().collect();
    if let Some(f) = blocking.first() {
        return Err(NotClean::Findings {
            count: blocking.len(),
            rule: f.rule.clone(),
            path: f.path.clone(),
            id: f.id.clone(),
        });
    }
    Ok(())
}

/// `1 finding`, `2 findings`: a count with its noun, singular only for one.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
