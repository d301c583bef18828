//! What a refused or failed restore reports: [`Conflicts`] (what stands in its way) and
//! [`Cleanup`] (what the cleanup after a failure did), each worded to say only what is true.

use std::path::PathBuf;

fn entries(n: u64) -> String {
    format!("{n} {}", if n == 1 { "entry" } else { "entries" })
}

/// What stands in a restore's way ([`DataError::TargetNotEmpty`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conflicts {
    /// The target.
    pub target: PathBuf,
    /// How many entries are in the way.
    pub count: u64,
    /// The first few, "path (entry n) (what is there)".
    pub first: Vec<String>,
    /// How many of them are directories where the dataset puts a non-directory.
    pub directories: u64,
    /// How many of them sit where an earlier, interrupted restore of this dataset meant to
    /// create an entry, without its journal proving they are what it made.
    pub unproven: u64,
    /// The earlier restore's journal is format 1 (it records no identities).
    pub format1: bool,
    /// Folders of the dataset reached through a symlink or a mount point (or a non-directory
    /// on the way): how many.
    pub unsafe_count: u64,
    /// The first few, "path (why)".
    pub unsafe_first: Vec<String>,
    /// The caller asked to replace what is in the way (`replace_existing`).
    pub replace_asked: bool,
    /// Found while writing (something appeared after the check): what was written is said
    /// by the cleanup, not here.
    pub while_writing: bool,
}

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let more = |n: u64, shown: usize| {
            if n > shown as u64 {
                format!("; and {} more", n - shown as u64)
            } else {
                String::new()
            }
        };
        write!(f, "restore target {} ", self.target.display())?;
        if self.count > 0 {
            write!(
                f,
                "already holds {} where this dataset puts its own: {}{}",
                entries(self.count),
                self.first.join("; "),
                more(self.count, self.first.len())
            )?;
            if self.format1 && self.unproven > 0 {
                write!(
                    f,
                    " (an interrupted restore of this dataset left a format-1 journal, which                      does not record what it created, so its entries count as conflicts too)"
                )?;
            } else if self.unproven > 0 {
                write!(
                    f,
                    " ({} where an interrupted restore of this dataset meant to create {}, \
                     but its journal does not prove {} what it made)",
                    if self.unproven == 1 {
                        "1 of them sits"
                    } else {
                        "some of them sit"
                    },
                    if self.unproven == 1 { "it" } else { "them" },
                    if self.unproven == 1 {
                        "it is"
                    } else {
                        "they are"
                    },
                )?;
            }
        }
        if self.unsafe_count > 0 {
            if self.count > 0 {
                write!(f, "; and ")?;
            }
            write!(
                f,
                "reaches {} {} of the dataset through a symlink or a mount point, which tek                  never writes through: {}{}",
                self.unsafe_count,
                if self.unsafe_count == 1 {
                    "folder"
                } else {
                    "folders"
                },
                self.unsafe_first.join("; "),
                more(self.unsafe_count, self.unsafe_first.len())
            )?;
        }
        if !self.while_writing {
            write!(f, "; nothing was written")?;
        } else {
            write!(f, " (it appeared while the restore ran)")?;
        }
        let advice = if self.directories > 0 {
            format!(
                "{} where the dataset puts a file {} never replaced: move {} away",
                if self.directories == 1 {
                    "1 of them is a directory".to_string()
                } else {
                    format!("{} of them are directories", self.directories)
                },
                if self.directories == 1 {
                    "and is"
                } else {
                    "and are"
                },
                if self.directories == 1 { "it" } else { "them" },
            )
        } else if self.count == 0 {
            "remove the symlink or unmount what is mounted there, or restore into another folder"
                .to_string()
        } else if self.while_writing {
            "find out what put it there, then run the restore again".to_string()
        } else if self.replace_asked {
            "restore into an empty folder".to_string()
        } else {
            "restore into an empty folder, or ask to replace them (tek data restore \
             --replace-existing)"
                .to_string()
        };
        write!(f, " ({advice})")
    }
}

/// What a failed restore's cleanup did: it removes every entry the restore (or an unfinished
/// earlier restore of the dataset into the same target) created, and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Entries this restore had created (files, symlinks, hard links, directories).
    pub written: u64,
    /// Of them, removed again.
    pub removed: u64,
    /// Entries an interrupted earlier restore of the dataset had made (proved by its journal),
    /// removed.
    pub earlier_removed: u64,
    /// Entries that could not be removed, the first few ("path: why").
    pub remaining: Vec<String>,
    /// How many could not be removed.
    pub remaining_count: u64,
    /// Entries that stood in the target and were replaced, as asked (`replace_existing`),
    /// before the failure: what was there is gone with the restore's own entry.
    pub replaced_gone: u64,
    /// No removal was tried: the target's driver was given up on (`DataError::Stalled`), so
    /// every call into it fails or hangs. The entries written stay (`remaining_count`).
    pub target_dead: bool,
    /// Entries this restore had written that no longer stood at their paths (moved or removed
    /// by someone since, or their folder was).
    pub missing: u64,
    /// Of `remaining_count`, entries of the earlier restore (not this one's).
    pub remaining_earlier: u64,
    /// The target's filesystem stopped answering during the cleanup (a FUSE daemon gone:
    /// the error), so the entries after that were not looked at (counted in `remaining_count`).
    pub stopped_answering: Option<String>,
}

impl Cleanup {
    /// "; the N entries it had replaced, as asked, are gone", when there are any.
    fn replaced_gone_clause(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.replaced_gone == 0 {
            return Ok(());
        }
        write!(
            f,
            "; the {} it had replaced, as asked, {} gone",
            entries(self.replaced_gone),
            if self.replaced_gone == 1 { "is" } else { "are" }
        )
    }
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nothing_left = self.remaining_count == 0 && self.replaced_gone == 0;
        if self.written == 0 && self.earlier_removed == 0 && nothing_left {
            return write!(f, "nothing was written (the target is as it was before)");
        }
        if self.target_dead && self.written > 0 {
            write!(
                f,
                "wrote {}; none {} removed again: the target's filesystem no longer answers",
                entries(self.written),
                if self.written == 1 { "was" } else { "were" }
            )?;
            return self.replaced_gone_clause(f);
        }
        if self.written == 0 {
            write!(f, "this restore wrote nothing")?;
        } else if self.removed == self.written {
            write!(
                f,
                "wrote {}, removed {} again",
                entries(self.written),
                if self.written == 1 { "it" } else { "them all" }
            )?;
        } else {
            write!(
                f,
                "wrote {}, removed {} of them again",
                entries(self.written),
                self.removed
            )?;
        }
        if self.earlier_removed > 0 {
            write!(
                f,
                "; also removed the {} an earlier restore of this dataset into this folder \
                 had made",
                entries(self.earlier_removed)
            )?;
        }
        self.replaced_gone_clause(f)?;
        if self.missing > 0 {
            write!(
                f,
                "; {} no longer stood where {} had been written (moved or removed since)",
                entries(self.missing),
                if self.missing == 1 { "it" } else { "they" }
            )?;
        }
        if let Some(why) = &self.stopped_answering {
            write!(
                f,
                "; the target's filesystem stopped answering during the cleanup ({why}), so \
                 the entries after that could not be looked at"
            )?;
        }
        if self.remaining_count > 0 {
            let earlier = match self.remaining_earlier {
                0 => String::new(),
                n if n == self.remaining_count => " (all the earlier restore's)".to_string(),
                n => format!(" ({n} of them the earlier restore's)"),
            };
            write!(
                f,
                "; {} could not be removed and {}{earlier}",
                entries(self.remaining_count),
                if self.remaining_count == 1 {
                    "remains"
                } else {
                    "remain"
                },
            )?;
            if !self.remaining.is_empty() {
                write!(f, ": {}", self.remaining.join("; "))?;
            }
            if self.remaining_count > self.remaining.len() as u64 {
                write!(
                    f,
                    "; and {} more",
                    self.remaining_count - self.remaining.len() as u64
                )?;
            }
        } else if self.earlier_removed == 0
            && self.replaced_gone == 0
            && self.missing == 0
            && self.removed == self.written
        {
            write!(f, " (the target is as it was before)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod cleanup_tests {
    use super::*;

    #[test]
    fn the_cleanup_says_what_is_true_with_plurals_right() {
        let c = Cleanup::default();
        assert_eq!(
            c.to_string(),
            "nothing was written (the target is as it was before)"
        );
        let c = Cleanup {
            written: 1,
            removed: 1,
            ..Default::default()
        };
        assert_eq!(
            c.to_string(),
            "wrote 1 entry, removed it again (the target is as it was before)"
        );
        let c = Cleanup {
            written: 2,
            removed: 2,
            replaced_gone: 1,
            ..Default::default()
        };
        assert_eq!(
            c.to_string(),
            "wrote 2 entries, removed them all again; the 1 entry it had replaced, as asked, is gone"
        );
        let c = Cleanup {
            written: 3,
            removed: 2,
            remaining: vec!["d: the directory holds something else now".into()],
            remaining_count: 1,
            ..Default::default()
        };
        assert!(
            c.to_string().ends_with(
                "removed 2 of them again; 1 entry could not be removed and remains: d: the \
                 directory holds something else now"
            ),
            "{c}"
        );
    }

    #[test]
    fn entries_moved_away_and_a_target_that_stops_answering_are_said() {
        let c = Cleanup {
            written: 30,
            removed: 20,
            missing: 6,
            remaining: vec!["d6/big2.bin: it holds something else now".into()],
            remaining_count: 8,
            remaining_earlier: 4,
            stopped_answering: Some("Transport endpoint is not connected (os error 107)".into()),
            ..Default::default()
        };
        assert_eq!(
            c.to_string(),
            "wrote 30 entries, removed 20 of them again; 6 entries no longer stood where they \
             had been written (moved or removed since); the target's filesystem stopped \
             answering during the cleanup (Transport endpoint is not connected (os error \
             107)), so the entries after that could not be looked at; 8 entries could not be \
             removed and remain (4 of them the earlier restore's): d6/big2.bin: it holds \
             something else now; and 7 more"
        );
        let c = Cleanup {
            written: 2,
            removed: 1,
            missing: 1,
            ..Default::default()
        };
        assert_eq!(
            c.to_string(),
            "wrote 2 entries, removed 1 of them again; 1 entry no longer stood where it had \
             been written (moved or removed since)"
        );
    }

    #[test]
    fn a_dead_target_says_nothing_was_removed_once() {
        let c = Cleanup {
            written: 3,
            remaining_count: 3,
            target_dead: true,
            ..Default::default()
        };
        assert_eq!(
            c.to_string(),
            "wrote 3 entries; none were removed again: the target's filesystem no longer answers"
        );
        let c = Cleanup {
            written: 1,
            remaining_count: 1,
            ..c
        };
        assert!(
            c.to_string().starts_with("wrote 1 entry; none was removed"),
            "{c}"
        );
    }

    #[test]
    fn a_conflict_found_while_writing_does_not_say_nothing_was_written() {
        let c = Conflicts {
            target: "/t".into(),
            count: 1,
            first: vec!["a (entry 1) (a file is there)".into()],
            replace_asked: true,
            while_writing: true,
            ..Default::default()
        };
        let t = c.to_string();
        assert!(
            !t.contains("nothing was written") && !t.contains("--replace-existing"),
            "{t}"
        );
        assert!(t.contains("already holds 1 entry where"), "{t}");
        let c = Conflicts { count: 2, ..c };
        assert!(c.to_string().contains("2 entries"));
    }
}
