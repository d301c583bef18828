//! What a restore did: [`RestoreResult`].

use crate::proof::VerifiedRestore;
use crate::winnames::NameMapping;

/// Metadata of some kind that could not be set on a number of entries, and why (e.g. "POSIX
/// ACLs", 3, "NTFS and FAT have no such attributes").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotRestored {
    /// What could not be set.
    pub what: String,
    /// On how many entries.
    pub entries: u64,
    /// Why.
    pub reason: String,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreResult {
    /// Entries written (files, directories, symlinks, hard links).
    pub entries_restored: u64,
    /// File bytes written.
    pub bytes_restored: u64,
    /// Entries read back and found equal.
    pub entries_verified: u64,
    /// File bytes read back and found equal.
    pub bytes_verified: u64,
    /// Entries not restored, with their path inside the dataset, e.g. "character device node
    /// dev/tty0 (entry 17)" (the audit log gets only their count).
    pub skipped: Vec<String>,
    /// Entries that did not read back equal, e.g. "entry 5: content differs".
    pub mismatches: Vec<String>,
    /// Entries whose owner (uid, gid) could not be set: the restoring process lacks CAP_CHOWN,
    /// or the kernel refused. They keep the restoring user's ownership.
    pub owners_not_restored: u64,
    /// Why ownership was not restored, when it was not (e.g. "no CAP_CHOWN in the effective
    /// capability set").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ownership_note: Option<String>,
    /// Entries restored without their setuid/setgid bits because setting them was refused
    /// (systemd's `RestrictSUIDSGID=yes` makes such a chmod fail with EPERM), e.g.
    /// "entry 9: mode 4755 restored as 0755".
    pub setid_dropped: Vec<String>,
    /// The filesystem restored onto ("posix", "ntfs (ntfs-3g)", ...), which decides names and
    /// metadata.
    pub target_filesystem: String,
    /// Entries restored under another name because the target (NTFS, FAT) cannot hold theirs
    /// (rule `tek-winnames-1`, see `winnames`), each with the staged and the restored path.
    /// Read-back compared each of them with its staged original under the new name.
    pub name_mappings: Vec<NameMapping>,
    /// Symlinks whose text was mapped by the same rule, component by component (so a link to a
    /// renamed entry still points at it; `from`/`to` are the link texts). The case rule's
    /// numbers are not applied to link texts.
    pub link_targets_mapped: Vec<NameMapping>,
    /// Metadata the target could not hold, by kind, with counts.
    pub metadata_not_restored: Vec<NotRestored>,
    /// On NTFS: which security descriptor restored entries got (and that owners and POSIX
    /// modes are not stored there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_note: Option<String>,
    /// Entries that stood in the target where the dataset puts its own and were replaced, as
    /// the caller asked (`replace_existing`), e.g. "Docs/a.txt (entry 3)".
    pub replaced: Vec<String>,
    /// Entries an earlier restore of this dataset into this target had made (it was killed or
    /// failed before its cleanup) and this one replaced or kept, e.g. "Docs (entry 0)".
    pub resumed: Vec<String>,
    /// Entries an interrupted earlier restore of this dataset into this target had meant to
    /// create but not journaled (killed, or its last lines lost with the power) whose
    /// occupant matched the staged data (a file: a prefix of the staged content, an empty one
    /// too; a symlink: the same text; a hard link: tek's inode), replaced, e.g.
    /// "Docs/big.iso (entry 7)". See `restore::unlisted` for the rule.
    pub unjournaled: Vec<String>,
    /// Directories of the dataset that already existed in the target: written into (merged),
    /// their own owner, mode and times left as they were.
    pub merged_directories: u64,
    /// Those directories, e.g. "Docs (entry 0)", in manifest order.
    pub merged: Vec<String>,
    /// The proof a wipe needs, present when the read-back passed (see [`crate::proof`]).
    #[serde(skip)]
    pub(super) proof: Option<VerifiedRestore>,
}

impl RestoreResult {
    /// True when everything restored was verified and nothing differed.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
            && self.entries_verified == self.entries_restored
            && self.bytes_verified == self.bytes_restored
    }

    /// The proof that this restore was verified, the one [`Custody::wipe`] takes; `None` when
    /// the read-back found a difference.
    pub fn verified(&self) -> Option<&VerifiedRestore> {
        self.proof.as_ref()
    }
}
