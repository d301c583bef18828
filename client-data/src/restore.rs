//! Restore (migration): decrypt a dataset under a target directory, flush, read back, compare.
//!
//! Order matters:
//! 1. Authenticate everything before writing anything: the keyed BLAKE3 MACs of both ciphertext
//!    files must match the metadata (a tampered byte anywhere refuses the restore up front), and
//!    the whole manifest is decrypted and checked (normalised relative paths, nothing through a
//!    symlink, totals match).
//! 2. Write: every open goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!    RESOLVE_NO_XDEV)` relative to the target's descriptor ([`RestoreTarget`], never a path
//!    resolved again), so nothing lands outside it even if the target already holds hostile
//!    symlinks or mount points. Files are created `O_EXCL` after unlinking whatever stood at
//!    their name: an existing hard link or FIFO is never opened.
//!    Directory modes and times are applied last, deepest first (creating children would
//!    otherwise bump their mtimes, and a 0555 directory would refuse them).
//!    A thread reads and decrypts the data stream ahead ([`OpenPipe`]) while this one writes.
//!    Owners are set when CAP_CHOWN is effective (decided by capability, not by uid: the agent
//!    runs as user `tek` with ambient capabilities), else counted in the result; a setuid/setgid
//!    mode refused with EPERM (systemd `RestrictSUIDSGID=yes`) is set without those bits and listed.
//! 3. Read back: every 64 MiB or 4096 files, a thread `syncfs`es the target filesystem and hands
//!    the files that flush covered to reader threads, which read each back after
//!    `POSIX_FADV_DONTNEED` (dropping the now-clean pages, so the read comes from the device) and
//!    compare BLAKE3 (`readback`). So every file is read back only after it was flushed, while
//!    later files are still being written. A last flush after the directory metadata, then
//!    directories, symlinks and hard links are checked.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::time::TimeSpec;

use crate::audit::AuditEvent;
use crate::batch::OpenPipe;
use crate::custody::Custody;
use crate::dataset::{DatasetId, DatasetState, Destination, Migration, rfc3339};
use crate::error::{DataError, io};
use crate::ingest::{DATA_KEY, MAC_KEY, MANIFEST_KEY};
use crate::manifest::{Entry, EntryKind, ManifestReader};
use crate::ntfs_mount::FuseDriver;
use crate::ownership::Ownership;
use crate::proof::VerifiedRestore;
use crate::readback::{ReadBack, verify_dirs, verify_others};
use crate::stream::{DecryptReader, Key, StreamKind, auth_failure, mac_of};
use crate::target::RestoreTarget;
use crate::winnames::{NameMapping, show};

mod aside;
mod journal;
mod plan;
mod prepare;
mod result;
mod staged;
mod undo;
mod unlisted;
pub(crate) mod watchdog;
mod writer;
pub(crate) use journal::remove_all as remove_journal;
pub use result::{NotRestored, RestoreResult};
use writer::{Descriptors, Writer};

/// How a restore goes about it.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Replace what already stands in the target where the dataset puts a file, symlink or
    /// hard link (or a non-directory where it puts a directory); each is listed in
    /// [`RestoreResult::replaced`]. Without it such entries refuse the restore
    /// ([`DataError::TargetNotEmpty`]). Directories in the way of files are never replaced.
    pub replace_existing: bool,
    /// Warn after this long without progress (the target's driver does not answer).
    pub stall_warning: Duration,
    /// Give up after this long without progress: a FUSE driver is killed (when tek started
    /// it, [`RestoreOptions::driver`]) or its connection aborted, and the restore fails with
    /// [`DataError::Stalled`].
    pub stall_limit: Duration,
    /// The FUSE daemon serving the target, when tek started it
    /// ([`crate::PartitionMount::driver`]).
    pub driver: Option<FuseDriver>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            replace_existing: false,
            stall_warning: Duration::from_secs(30),
            stall_limit: Duration::from_secs(120),
            driver: None,
        }
    }
}

fn unsafe_path(entry: u64, reason: impl Into<String>) -> DataError {
    DataError::UnsafePath {
        entry,
        reason: reason.into(),
    }
}

/// The descriptors new entries get on an NTFS target, by depth (see `ntfs`): from the target
/// folder's own descriptor, down to the deepest directory of the dataset. Empty (with the
/// reason) when the folder's descriptor cannot be read or parsed.
fn descriptors(target: &RestoreTarget, depth: usize) -> Result<Descriptors, String> {
    use xattr::FileExt;
    let Some(name) = target.fs().security_xattr() else {
        return Ok(Vec::new());
    };
    let mut parent = match target.dir().get_xattr(name) {
        Ok(Some(v)) => v,
        Ok(None) => return Err("the target folder has no security descriptor".into()),
        Err(e) => return Err(format!("reading the target folder's descriptor: {e}")),
    };
    let mut out = Vec::with_capacity(depth + 1);
    for _ in 0..=depth {
        let dir = crate::ntfs::inherit(&parent, true)?;
        let file = crate::ntfs::inherit(&parent, false)?;
        out.push((Arc::new(dir.clone()), Arc::new(file)));
        parent = dir;
    }
    Ok(out)
}

pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn ts(sec: i64, nsec: u32) -> TimeSpec {
    TimeSpec::new(sec, i64::from(nsec))
}

fn data_error(target: &Path, err: std::io::Error) -> DataError {
    match auth_failure(&err) {
        Some(a) => DataError::Tampered {
            id: String::new(),
            what: "ciphertext",
            detail: a.to_string(),
        },
        None => DataError::Io {
            action: "reading staged ciphertext for",
            path: target.to_path_buf(),
            source: err,
        },
    }
}

fn manifest_reader(
    path: &Path,
    key: &Key,
) -> Result<ManifestReader<DecryptReader<File>>, DataError> {
    let f = File::open(path).map_err(io("opening manifest", path))?;
    let r =
        DecryptReader::new(f, key, StreamKind::Manifest).map_err(io("reading manifest", path))?;
    Ok(ManifestReader::new(r))
}

impl Custody {
    /// Restores dataset `id` under the directory `target_dir` (opened once, see
    /// [`RestoreTarget::open`]); see [`Custody::restore_with`].
    pub fn restore(
        &self,
        id: &DatasetId,
        target_dir: &Path,
        dest: &Destination,
    ) -> Result<RestoreResult, DataError> {
        self.restore_with(
            id,
            &RestoreTarget::open(target_dir)?,
            dest,
            &RestoreOptions::default(),
        )
    }

    /// [`Custody::restore_with`] with the default options.
    pub fn restore_into(
        &self,
        id: &DatasetId,
        target: &RestoreTarget,
        dest: &Destination,
    ) -> Result<RestoreResult, DataError> {
        self.restore_with(id, target, dest, &RestoreOptions::default())
    }

    /// Restores dataset `id` beneath the open directory `target`, flushes, reads back and
    /// compares. Every open is relative to `target`'s descriptor, never to a path. Refuses
    /// before writing anything when the target holds entries where the dataset puts its own
    /// (unless `opts.replace_existing`; see `plan`). A failure while writing removes what the
    /// restore wrote ([`DataError::RestoreAborted`]). On success marks the dataset Migrated
    /// (verified) and writes migrate + verify audit entries.
    pub fn restore_with(
        &self,
        id: &DatasetId,
        target: &RestoreTarget,
        dest: &Destination,
        opts: &RestoreOptions,
    ) -> Result<RestoreResult, DataError> {
        let target_dir = target.label();
        if let Some(job) = &dest.job {
            // Checked before anything is written: the audit entry at the end must not fail.
            crate::dataset::check_ident("job id", job)?;
        }
        let (_lock, mut meta) = self.lock_live(id, "restore")?;
        let kek = self.keys.kek(false)?;
        let key = self.keys.load(&kek, id.as_str())?;
        let dir = self.dataset_dir(id);
        let (data_path, manifest_path) = (dir.join("data.enc"), dir.join("manifest.enc"));
        let tampered = |what: &'static str, detail: String| DataError::Tampered {
            id: id.to_string(),
            what,
            detail,
        };

        // 1. Authenticate everything first.
        let t0 = std::time::Instant::now();
        let mac_key = key.derive(MAC_KEY);
        for (path, expect, what) in [
            (&manifest_path, &meta.manifest_mac, "manifest"),
            (&data_path, &meta.data_mac, "ciphertext"),
        ] {
            let f = File::open(path).map_err(io("opening", path))?;
            if &mac_of(f, &mac_key).map_err(io("reading", path))? != expect {
                return Err(tampered(
                    what,
                    "MAC over the whole file does not match".into(),
                ));
            }
        }
        let mkey = key.derive(MANIFEST_KEY);
        let man_err = |e: std::io::Error| match auth_failure(&e) {
            Some(a) => tampered("manifest", a.to_string()),
            None => tampered("manifest", e.to_string()),
        };
        // From the first look at the target on, a driver that stops answering is given up on.
        let progress = Arc::new(watchdog::Progress::default());
        let dog = watchdog::Watchdog::start(
            target,
            opts.driver.clone(),
            progress.clone(),
            opts.stall_warning,
            opts.stall_limit,
        );
        let dkey = key.derive(DATA_KEY);
        let staged = prepare::Staged {
            id: id.as_str(),
            dir: &dir,
            manifest: &manifest_path,
            key: &mkey,
            data: &data_path,
            data_key: &dkey,
            totals: (meta.info.entries, meta.info.bytes),
        };
        // Nothing was written yet: a stall here refuses the restore with its reason.
        let prepared = match prepare::prepare(&staged, target, opts.replace_existing, &progress) {
            Ok(p) if !dog.stalled() => p,
            Ok(_) => return Err(dog.finish().expect("recorded once stalled")),
            Err(e) => return Err(dog.finish().unwrap_or(e)),
        };
        let prepare::Prepared {
            ident,
            mut journal,
            mut rec,
            log,
            names,
            depth,
            plan,
        } = prepared;
        let fs = target.fs();

        // The target's own times, put back by a cleanup with those of merged directories.
        let mut times = plan.merged_times;
        if let Ok(st) = crate::sys::statx(target.dir(), b"") {
            times.push((Vec::new(), plan::times_of(&st)));
        }

        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "restore: authenticated");
        // 2. Write.
        let root = target
            .dir()
            .try_clone()
            .map_err(io("duplicating descriptor of restore target", target_dir))?;
        let mut res = RestoreResult {
            target_filesystem: fs.describe().to_string(),
            ..RestoreResult::default()
        };
        let sds = if fs.is_ntfs() {
            match descriptors(target, depth) {
                Ok(s) => {
                    res.security_note = Some(
                        "every restored file and folder got the security descriptor inherited \
                         from the target folder, as Windows gives copied files; owners and \
                         POSIX modes are not stored on NTFS"
                            .into(),
                    );
                    s
                }
                Err(why) => {
                    res.security_note = Some(format!(
                        "restored entries keep the filesystem's default security descriptor \
                         ({why})"
                    ));
                    Vec::new()
                }
            }
        } else {
            if fs.windows_names() {
                res.security_note = Some("FAT stores no owners, modes or permissions".into());
            }
            Vec::new()
        };
        let mut w = Writer {
            root,
            target: target_dir.to_path_buf(),
            parent: None,
            dirs: Vec::new(),
            own: Ownership::detect(),
            owners_not_restored: 0,
            setid_dropped: Vec::new(),
            fs,
            sds,
            not_restored: Default::default(),
            dirs_written: Vec::new(),
            wbuf: Vec::new(),
            replace: plan.replace,
            made_dirs: Vec::new(),
            created_upto: 0,
            progress: progress.clone(),
            log,
            created: 0,
            merged: plan.merged,
            replace_asked: opts.replace_existing,
            pending: None,
        };
        // The entry as restored: its path (and a hard link's target) mapped.
        let mapped = |mut e: Entry| -> Entry {
            if let Some(m) = &names {
                e.path = m.get(&e.path).to_vec();
                if e.kind == EntryKind::Hardlink {
                    e.target = m.get(&e.target).to_vec();
                }
                if e.kind == EntryKind::Symlink {
                    e.target = crate::winnames::map_link_text(&e.target);
                }
            }
            e
        };
        let flush_err = |e: nix::errno::Errno| DataError::Io {
            action: "flushing filesystem of",
            path: target_dir.to_path_buf(),
            source: e.into(),
        };
        let mut at: Option<(u64, Vec<u8>)> = None;
        let written = (|| -> Result<crate::readback::Verified, DataError> {
            let df = File::open(&data_path).map_err(io("opening", &data_path))?;
            // A thread reads and decrypts ahead while this one writes the files.
            let mut data = OpenPipe::start(df, &dkey, StreamKind::Data)
                .map_err(|e| data_error(target_dir, e))?;
            // Files are flushed and read back in the background as the restore proceeds.
            let mut rb = ReadBack::start(&w.root, fs, progress.clone())
                .map_err(io("starting read-back of", target_dir))?;
            let mut mr = manifest_reader(&manifest_path, &mkey)?;
            let mut n = 0u64;
            while let Some(e) = mr.next_entry().map_err(man_err)? {
                // The journal is ahead of every entry created (see `journal`).
                if n >= rec.intents_below {
                    w.log.sync()?;
                    rec.intents_below = (n + journal::STEP).min(meta.info.entries);
                    journal.put(&rec)?;
                }
                match &mut at {
                    Some((k, p)) => {
                        *k = n;
                        p.clear();
                        p.extend_from_slice(&e.path);
                    }
                    None => at = Some((n, e.path.clone())),
                }
                progress.doing(|s| {
                    s.push_str("writing ");
                    s.push_str(&show(&e.path));
                });
                let link_text =
                    (e.kind == EntryKind::Symlink && names.is_some()).then(|| e.target.clone());
                let mut e = mapped(e);
                if let Some(old) = link_text.filter(|t| *t != e.target) {
                    res.link_targets_mapped
                        .push(NameMapping::new(n, &old, &e.target));
                }
                match e.kind {
                    EntryKind::File => {
                        let sd = w.file(&mut e, n, &mut data)?;
                        res.bytes_restored += e.size;
                        rb.written(n, e, sd);
                        res.entries_restored += 1;
                        n += 1;
                        continue;
                    }
                    EntryKind::Dir => {
                        w.dir_entry(&e, n)?;
                        w.dirs.push((n, e.clone()));
                    }
                    EntryKind::Symlink => w.symlink(&e, n)?,
                    EntryKind::Hardlink => w.hardlink(&e, n)?,
                    k => {
                        let path = show(&e.path);
                        res.skipped
                            .push(format!("{} {path} (entry {n})", k.describe()));
                        n += 1;
                        continue;
                    }
                }
                res.entries_restored += 1;
                n += 1;
            }
            at = None;
            data.finish().map_err(|e| data_error(target_dir, e))?;
            w.parent = None;
            progress.doing(|s| s.push_str("setting the directories' metadata"));
            w.finish_dirs()?;
            tracing::debug!(secs = t0.elapsed().as_secs_f64(), "restore: written");
            // 3. The last flush (covering directory metadata too), the last reads.
            progress.doing(|s| s.push_str("flushing and reading back"));
            rb.finish().map_err(flush_err)
        })();
        let mut v = match written {
            Ok(mut v) => {
                // The read-back set these files' times again: journaled as they are now
                // (on ntfs-3g it set the same creation time, which identifies them there).
                for (n, st) in std::mem::take(&mut v.retimed) {
                    if fs != crate::TargetFs::Ntfs3g {
                        w.log.record(n, &journal::Ident::of(&st, None))?;
                    }
                }
                v
            }
            Err(cause) => {
                let cause = dog.finish().unwrap_or(cause);
                w.parent = None;
                let mut own = plan.own;
                own.sort_unstable();
                // This run's lines are in the log (one write(2) each): what it proves is
                // what the cleanup may remove (unreadable: nothing is proved, all is left).
                let made = journal.made(&rec).unwrap_or_default();
                let undo = undo::Undo {
                    created_upto: w.created_upto,
                    own: &own,
                    seen: &w.replace,
                    made_dirs: &w.made_dirs,
                    times: &times,
                    made: &made,
                    ntfs3g: fs == crate::TargetFs::Ntfs3g,
                    pending: w.pending,
                };
                // A driver given up on answers nothing any more (ENOTCONN, or it still hangs
                // when the give-up failed): no removal is tried, the entries written stay, and
                // the journal keeps them provable for a restore into the folder again.
                let mut cleanup = if matches!(cause, DataError::Stalled { .. }) {
                    crate::error::Cleanup {
                        remaining_count: w.created,
                        target_dead: true,
                        ..Default::default()
                    }
                } else {
                    let mut mr = manifest_reader(&manifest_path, &mkey)?;
                    undo.run(&w.root, || {
                        mr.next_entry().map(|e| e.map(&mapped)).map_err(man_err)
                    })
                };
                cleanup.written = w.created;
                // What is left of ours stays provable for the next run.
                let _ = w.log.sync();
                cleanup.replaced_gone = plan
                    .replaced_entries
                    .iter()
                    .filter(|&&k| k < w.created_upto)
                    .count() as u64;
                if cleanup.remaining_count == 0 {
                    // Nothing of ours is left in the target: its record goes.
                    journal.remove(&ident)?;
                }
                let shown = match &at {
                    Some((_, p)) => {
                        let m = names.as_ref().map(|m| m.get(p)).filter(|m| m != p);
                        match m {
                            Some(m) => format!("{} (restored as {})", show(p), show(m)),
                            None => show(p),
                        }
                    }
                    None => "the dataset's last steps (directory metadata, flush)".into(),
                };
                return Err(DataError::RestoreAborted {
                    target: target_dir.to_path_buf(),
                    entry: at.as_ref().map(|a| a.0),
                    at: shown,
                    cause: Box::new(cause),
                    cleanup: Box::new(cleanup),
                });
            }
        };
        drop(dog);
        res.owners_not_restored = w.owners_not_restored;
        if res.owners_not_restored > 0 && w.own != Ownership::Restore {
            res.ownership_note = Some("no CAP_CHOWN in the effective capability set".into());
        } else if res.owners_not_restored > 0 {
            res.ownership_note = Some("the kernel refused chown (EPERM or unmapped id)".into());
        }
        res.setid_dropped = std::mem::take(&mut w.setid_dropped);
        res.metadata_not_restored = std::mem::take(&mut w.not_restored)
            .into_iter()
            .map(|(what, (entries, reason))| NotRestored {
                what,
                entries,
                reason,
            })
            .collect();
        res.replaced = plan.replaced;
        res.resumed = plan.resumed;
        res.unjournaled = plan.unjournaled;
        res.merged_directories = plan.merged_shown.len() as u64;
        res.merged = plan.merged_shown;
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "restore: files verified");
        let mut mr = manifest_reader(&manifest_path, &mkey)?;
        let o = verify_others(&w.root, || {
            mr.next_entry().map(|e| e.map(&mapped)).map_err(man_err)
        })?;
        v.entries += o.entries;
        v.mismatches.extend(o.mismatches);
        v.mismatches
            .extend(verify_dirs(&w.root, fs, &w.dirs_written).mismatches);
        res.name_mappings = names.map(|m| m.mappings).unwrap_or_default();
        v.mismatches.sort();
        res.entries_verified = v.entries;
        res.bytes_verified = v.bytes;
        res.mismatches = v
            .mismatches
            .into_iter()
            .map(|(n, m)| format!("entry {n}: {m}"))
            .collect();

        let verified = res.ok();
        if verified {
            meta.migrations.push(Migration {
                at: rfc3339(self.now()),
                dest: dest.clone(),
                entries_verified: res.entries_verified,
                bytes_verified: res.bytes_verified,
            });
            meta.info.state = DatasetState::Migrated;
            meta.save(&dir)?;
            res.proof = Some(VerifiedRestore::after_read_back(id));
            // Verified. The record stays, covering every entry, until the wipe: the agent
            // journals the verification only after this returns, and a crash in between redoes
            // this restore, which must find its own verified copy, not conflicts.
            w.log.sync()?;
            if rec.intents_below < meta.info.entries {
                rec.intents_below = meta.info.entries;
                journal.put(&rec)?;
            }
        }
        self.audit.append_many([
            AuditEvent::Migrate {
                dataset: id.to_string(),
                client: meta.info.client.clone(),
                ticket: meta.info.ticket.clone(),
                job: dest.job.clone(),
                device: dest.device.sanitized(),
                entries: res.entries_restored,
                bytes: res.bytes_restored,
                skipped: res.skipped.len() as u64,
                renamed: res.name_mappings.len() as u64,
                replaced: res.replaced.len() as u64,
                resumed: res.resumed.len() as u64,
                unjournaled: res.unjournaled.len() as u64,
            },
            AuditEvent::Verify {
                dataset: id.to_string(),
                entries: res.entries_verified,
                bytes: res.bytes_verified,
                mismatches: res.mismatches.len() as u64,
                result: if verified { "passed" } else { "failed" }.into(),
            },
        ])?;
        Ok(res)
    }
}
