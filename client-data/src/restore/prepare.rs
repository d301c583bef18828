//! The restore's first look at the target, before anything is written: which earlier,
//! interrupted restore of this dataset the journal knows for this target (its identity: the
//! target folder's inode and birth time), what the target already holds where the dataset puts
//! each entry (`plan`), and the names mapped for a Windows target. Every call here that asks
//! the target's filesystem runs under the watchdog (a stalled ntfs-3g hangs the first
//! `fstatat`), and each entry checked ticks it.

use std::path::Path;

use super::journal::{self, Journal, Log, TargetRecord};
use super::plan::{self, Plan};
use super::unlisted::Expected;
use super::watchdog::Progress;
use super::{manifest_reader, unsafe_path};
use crate::error::DataError;
use crate::manifest::{SymlinkGuard, check_normalized};
use crate::stream::{Key, auth_failure};
use crate::target::RestoreTarget;
use crate::winnames::{NameMap, show};

/// What the check found, and the journal to go on with.
pub(super) struct Prepared {
    /// The target's identity in the journal.
    pub ident: String,
    pub journal: Journal,
    /// This target's record, as the writer continues it.
    pub rec: TargetRecord,
    pub log: Log,
    /// The mapped names (Windows targets only).
    pub names: Option<NameMap>,
    /// The deepest directory level of the dataset.
    pub depth: usize,
    pub plan: Plan,
}

/// What [`prepare`] checks the dataset against.
pub(super) struct Staged<'a> {
    pub id: &'a str,
    /// The dataset's staging directory.
    pub dir: &'a Path,
    pub manifest: &'a Path,
    pub key: &'a Key,
    /// The data stream and its key (read only for entries the log does not list, see
    /// `unlisted`).
    pub data: &'a Path,
    pub data_key: &'a Key,
    /// Entries and bytes, from the metadata.
    pub totals: (u64, u64),
}

/// Looks at the target (see the module doc). A conflict refuses the restore here
/// ([`DataError::TargetNotEmpty`]), before anything is written.
pub(super) fn prepare(
    s: &Staged<'_>,
    target: &RestoreTarget,
    replace_existing: bool,
    progress: &Progress,
) -> Result<Prepared, DataError> {
    let tampered = |detail: String| DataError::Tampered {
        id: s.id.to_string(),
        what: "manifest",
        detail,
    };
    let target_dir = target.label();
    progress.doing(|t| t.push_str("reading the target folder's identity"));
    // This target's record in the journal: entries an unfinished earlier restore made.
    let ident = journal::identity(target);
    let journal = Journal::load(s.dir)?;
    let earlier = journal.get(&ident).cloned();
    let made = match &earlier {
        Some(rec) => journal.made(rec)?,
        None => Default::default(),
    };
    // Windows targets: every name mapped before anything is written (a name that cannot
    // be mapped refuses the restore here). Every mapped path checked in the target.
    let fs = target.fs();
    let mut names = fs.windows_names().then(NameMap::default);
    let mut depth = 0usize;
    let plan = {
        let mut mr = manifest_reader(s.manifest, s.key)?;
        let mut guard = SymlinkGuard::default();
        let mut check = plan::Checker::new(
            target.dir(),
            earlier.as_ref(),
            &made,
            replace_existing,
            target_dir,
            fs == crate::TargetFs::Ntfs3g,
            Box::new(|| {
                let f = std::fs::File::open(s.data).ok()?;
                super::staged::StagedData::open(f, s.data_key).ok()
            }),
        );
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(e) = mr.next_entry().map_err(|e| match auth_failure(&e) {
            Some(a) => tampered(a.to_string()),
            None => tampered(e.to_string()),
        })? {
            check_normalized(&e.path).map_err(|r| unsafe_path(n, r))?;
            guard.check(&e).map_err(|r| unsafe_path(n, r))?;
            progress.doing(|t| {
                t.push_str("checking what the target holds at ");
                t.push_str(&show(&e.path));
            });
            if let Some(m) = &mut names {
                let p = m.add(n, &e.path).map_err(|t| DataError::NameTooLong {
                    entry: n,
                    mapped: t.mapped,
                })?;
                let mut m_e = e.clone();
                m_e.path = p.clone();
                if e.kind == crate::manifest::EntryKind::Hardlink {
                    m_e.target = m.get(&e.target).to_vec();
                } else if e.kind == crate::manifest::EntryKind::Symlink {
                    m_e.target = crate::winnames::map_link_text(&e.target);
                }
                let x = Expected {
                    entry: &m_e,
                    offset: bytes,
                };
                check.check(n, &x, &p, target_dir)?;
            } else {
                let x = Expected {
                    entry: &e,
                    offset: bytes,
                };
                check.check(n, &x, &e.path, target_dir)?;
            }
            depth = depth.max(e.path.iter().filter(|&&b| b == b'/').count());
            bytes += e.size;
            n += 1;
        }
        if mr.end != Some((n, bytes)) || (n, bytes) != s.totals {
            return Err(tampered("entry or byte totals do not match".into()));
        }
        check.finish()?
    };
    drop(made);
    // A record of a format-1 journal (no identities) starts over: nothing of it was
    // provably ours, and the plan refused or replaced (as asked) all of it.
    let fresh_log = earlier.as_ref().is_none_or(|r| r.format1);
    let mut rec = match earlier {
        Some(r) if !r.format1 => r,
        Some(r) => TargetRecord {
            intents_below: 0,
            ..Journal::fresh(&r.identity)
        },
        None => Journal::fresh(&ident),
    };
    rec.label = target_dir.display().to_string();
    let log = journal.open_log(&rec, fresh_log)?;
    Ok(Prepared {
        ident,
        journal,
        rec,
        log,
        names,
        depth,
        plan,
    })
}
