//! Ingest: stream a directory tree or a tar archive (plain, gzip, zstd) into an encrypted dataset.
//!
//! Two streams are written side by side, each under its own subkey of a fresh dataset key:
//! `data.enc` (file contents, concatenated in manifest order) and `manifest.enc` (one record per
//! entry, see `manifest`). Nothing plaintext touches the disk; memory is a few buffers whatever the
//! number or size of files. File contents are read (and hashed) on the calling thread straight into
//! the batches of a [`SealPipe`], whose thread encrypts them (in parallel), MACs and writes them. The work happens in `<id>.partial/`, renamed into place only when
//! both streams and the metadata are fsync'd; any failure (a hostile archive, a full disk) removes
//! the partial dataset and destroys its key.
//!
//! An ingest holds its client's lock shared from before the withdrawn check to after the final
//! rename, re-reads the client record every quarter second while streaming and once more
//! before the rename, and discards itself when the client withdrew meanwhile (see `withdraw`).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::audit::AuditEvent;
use crate::batch::SealPipe;
use crate::custody::Custody;
use crate::dataset::{DatasetId, DatasetInfo, DatasetState, Meta, check_ident, rfc3339};
use crate::error::{DataError, io};
use crate::manifest::{Entry, EntryKind, SymlinkGuard, Time, encode_end};
use crate::stream::{EncryptWriter, Key, MacWriter, StreamKind};

mod archive;
use archive::read_tar;

/// Subkey purposes (BLAKE3 derive_key contexts).
pub(crate) const DATA_KEY: &str = "tek client-data v1 data stream";
pub(crate) const MANIFEST_KEY: &str = "tek client-data v1 manifest stream";
pub(crate) const MAC_KEY: &str = "tek client-data v1 ciphertext mac";

type Enc = EncryptWriter<MacWriter<File>>;

/// How often a running ingest re-reads its client's record.
const WITHDRAW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Notices a withdrawal of the client while the ingest streams.
struct Watch<'a> {
    custody: &'a Custody,
    client: &'a str,
    dataset: &'a DatasetId,
    next: std::time::Instant,
}

impl Watch<'_> {
    /// `WithdrawnDuringIngest` once the client withdrew (checked at most every
    /// [`WITHDRAW_POLL`], or now when `now`).
    fn check(&mut self, now: bool) -> Result<(), DataError> {
        let t = std::time::Instant::now();
        if !now && t < self.next {
            return Ok(());
        }
        self.next = t + WITHDRAW_POLL;
        if self.custody.client_withdrawn(self.client)? {
            return Err(DataError::WithdrawnDuringIngest {
                client: self.client.to_string(),
                dataset: self.dataset.to_string(),
                left_behind: false,
            });
        }
        Ok(())
    }
}

/// Receives entries and writes both encrypted streams.
struct Sink<'a> {
    data: SealPipe,
    manifest: Enc,
    data_path: PathBuf,
    manifest_path: PathBuf,
    source: PathBuf,
    guard: SymlinkGuard,
    entries: u64,
    bytes: u64,
    watch: Watch<'a>,
}

impl Sink<'_> {
    fn bad(&self, reason: impl Into<String>) -> DataError {
        DataError::BadSource {
            source_path: self.source.clone(),
            entry: self.entries,
            reason: reason.into(),
        }
    }

    /// Adds an entry; for files, copies exactly `e.size` bytes from `content`, hashing them.
    fn add(&mut self, mut e: Entry, content: Option<&mut dyn Read>) -> Result<(), DataError> {
        self.guard.check(&e).map_err(|r| self.bad(r))?;
        crate::xattrs::check_set(&e.xattrs).map_err(|r| self.bad(r))?;
        self.watch.check(false)?;
        if e.kind == EntryKind::File {
            let content = content.expect("file entry without content");
            let mut hasher = blake3::Hasher::new();
            let mut left = e.size;
            while left > 0 {
                // Read straight into the encryption pipeline's batch (no extra copy).
                let room = self
                    .data
                    .room()
                    .map_err(io("writing ciphertext", &self.data_path))?;
                let want = left.min(room.len() as u64) as usize;
                let got = content.read(&mut room[..want]);
                if let Ok(n) = got {
                    hasher.update(&room[..n]);
                }
                let n = match got {
                    Ok(0) => {
                        return Err(self.bad(format!(
                            "truncated: expected {} content bytes, got {}",
                            e.size,
                            e.size - left
                        )));
                    }
                    Ok(n) => n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(self.bad(format!("reading content: {err}"))),
                };
                self.data.fill(n);
                left -= n as u64;
                self.watch.check(false)?;
            }
            e.blake3 = *hasher.finalize().as_bytes();
            self.bytes += e.size;
        } else {
            e.size = 0;
        }
        e.encode(&mut self.manifest)
            .map_err(io("writing manifest", &self.manifest_path))?;
        self.entries += 1;
        Ok(())
    }
}

fn create(path: &Path) -> Result<File, DataError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating", path))
}

fn new_stream(path: &Path, key: &Key, mac: &Key, kind: StreamKind) -> Result<Enc, DataError> {
    EncryptWriter::new(MacWriter::new(create(path)?, mac), key, kind).map_err(io("writing", path))
}

fn finish_stream(w: Enc, path: &Path) -> Result<(String, u64), DataError> {
    let (mac, _) = w.finish().map_err(io("writing", path))?;
    mac.inner.sync_all().map_err(io("syncing", path))?;
    Ok((mac.mac_hex(), mac.bytes))
}

impl Custody {
    /// Ingests `source` (a directory, or a tar archive: plain, gzip or zstd) for `client` under
    /// `ticket`, encrypted under a fresh key. Prints nothing; returns the new dataset's metadata.
    pub fn ingest(
        &self,
        client: &str,
        ticket: &str,
        source: &Path,
    ) -> Result<DatasetInfo, DataError> {
        check_ident("client id", client)?;
        check_ident("ticket", ticket)?;
        // Held until the dataset is renamed into place or discarded (declared first, dropped
        // last): a withdrawal waits for it.
        let _client_lock = crate::withdraw::ClientLock::shared(&self.paths.staging, client)?;
        if self.client_withdrawn(client)? {
            return Err(DataError::ClientWithdrawn(client.to_string()));
        }
        // Known from now on, so a withdrawal during a first ingest finds the client.
        self.register_client(client)?;
        let src_meta = std::fs::metadata(source).map_err(io("reading source", source))?;
        let now = self.now();
        self.ingest_as(
            &DatasetId::generate(now),
            client,
            ticket,
            source,
            src_meta.is_dir(),
            now,
        )
    }

    /// Makes the depot's key-encryption key if there is none yet (the first ingest needs it).
    /// Returns its path and its check file's when this call made it, so the caller tells the operator, once, to keep
    /// a copy of it and its check file off the machine; `None` when it already existed.
    pub fn prepare_kek(
        &self,
    ) -> Result<Option<(std::path::PathBuf, std::path::PathBuf)>, DataError> {
        let (_, made) = self.keys.kek_made(true)?;
        Ok(made.then(|| (self.keys.kek_path().to_path_buf(), self.keys.check_path())))
    }

    /// [`Custody::ingest`] under the given fresh id. The id is taken exclusively: its
    /// `.partial` directory with `mkdir`, its wrapped key with `link(2)` (both fail if they
    /// exist), the final directory with `RENAME_NOREPLACE`; a taken id is [`DataError::IdTaken`]
    /// and leaves the dataset that holds it untouched (its key above all).
    pub(crate) fn ingest_as(
        &self,
        id: &DatasetId,
        client: &str,
        ticket: &str,
        source: &Path,
        is_dir: bool,
        now: time::OffsetDateTime,
    ) -> Result<DatasetInfo, DataError> {
        let kek = self.keys.kek(true)?;
        let id = id.clone();
        let _lock = self.lock(&id)?;
        if self.dataset_dir(&id).exists() {
            return Err(DataError::IdTaken(id.to_string()));
        }
        let partial = self.paths.staging.join(format!("{id}.partial"));
        match std::fs::create_dir(&partial) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(DataError::IdTaken(id.to_string()));
            }
            Err(e) => return Err(io("creating dataset directory", &partial)(e)),
        }
        // Names the partial's client, so a withdrawal finds (and discards) it.
        let owner = partial.join(crate::withdraw::PARTIAL_OWNER);
        if let Err(e) = std::fs::write(&owner, client) {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(io("writing", &owner)(e));
        }
        let key = Key::random();
        if let Err(e) = self.keys.store_new(&kek, id.as_str(), &key) {
            // Not ours to destroy: only the partial directory goes.
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        let result = self.ingest_into(&id, &partial, &key, client, ticket, source, is_dir, now);
        match result {
            Ok(info) => Ok(info),
            Err(e) => {
                self.discard_partial(&id, &partial);
                match e {
                    DataError::WithdrawnDuringIngest {
                        client, dataset, ..
                    } => Err(DataError::WithdrawnDuringIngest {
                        client,
                        dataset,
                        // Checked, not assumed: the message says what is left.
                        left_behind: partial.exists() || self.keys.has(id.as_str()),
                    }),
                    e => Err(e),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ingest_into(
        &self,
        id: &DatasetId,
        partial: &Path,
        key: &Key,
        client: &str,
        ticket: &str,
        source: &Path,
        is_dir: bool,
        now: time::OffsetDateTime,
    ) -> Result<DatasetInfo, DataError> {
        let mac_key = key.derive(MAC_KEY);
        let data_path = partial.join("data.enc");
        let manifest_path = partial.join("manifest.enc");
        let mut sink = Sink {
            data: SealPipe::start(
                create(&data_path)?,
                &key.derive(DATA_KEY),
                &mac_key,
                StreamKind::Data,
            )
            .map_err(io("writing", &data_path))?,
            manifest: new_stream(
                &manifest_path,
                &key.derive(MANIFEST_KEY),
                &mac_key,
                StreamKind::Manifest,
            )?,
            data_path: data_path.clone(),
            manifest_path: manifest_path.clone(),
            source: source.to_path_buf(),
            guard: SymlinkGuard::default(),
            entries: 0,
            bytes: 0,
            watch: Watch {
                custody: self,
                client,
                dataset: id,
                next: std::time::Instant::now() + WITHDRAW_POLL,
            },
        };
        let kind = if is_dir {
            walk_dir(source, &mut sink)?;
            "directory".to_string()
        } else {
            read_tar(source, &mut sink)?
        };
        let (entries, bytes) = (sink.entries, sink.bytes);
        encode_end(&mut sink.manifest, entries, bytes)
            .map_err(io("writing manifest", &manifest_path))?;
        let (data_file, data_mac, data_len) = sink
            .data
            .finish()
            .map_err(io("writing ciphertext", &data_path))?;
        data_file.sync_all().map_err(io("syncing", &data_path))?;
        let (manifest_mac, manifest_len) = finish_stream(sink.manifest, &manifest_path)?;
        let info = DatasetInfo {
            id: id.clone(),
            client: client.to_string(),
            ticket: ticket.to_string(),
            created: rfc3339(now),
            entries,
            bytes,
            state: DatasetState::Staged,
        };
        let meta = Meta {
            format: crate::dataset::META_FORMAT,
            info: info.clone(),
            ciphertext_bytes: data_len + manifest_len,
            data_mac,
            manifest_mac,
            migrations: Vec::new(),
            wiped_at: None,
        };
        meta.save(partial)?;
        // Last check under the client lock: a withdrawal that began meanwhile waits for this
        // lock, so either it sees the finished dataset or this ingest sees the withdrawal.
        sink.watch.check(true)?;
        let fin = self.dataset_dir(id);
        nix::fcntl::renameat2(
            None,
            partial,
            None,
            &fin,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| io("renaming into place", &fin)(e.into()))?;
        crate::keystore::sync_dir(&self.paths.staging)?;
        self.audit.append(AuditEvent::Ingest {
            dataset: id.to_string(),
            client: client.to_string(),
            ticket: ticket.to_string(),
            entries,
            bytes,
            ciphertext_bytes: meta.ciphertext_bytes,
            source: kind,
        })?;
        Ok(info)
    }
}

/// A `SystemTime` as seconds and nanoseconds since the epoch (also before it).
fn unix_time(t: std::time::SystemTime) -> Time {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                Time { sec: -s, nsec: 0 }
            } else {
                Time {
                    sec: -s - 1,
                    nsec: 1_000_000_000 - n,
                }
            }
        }
    }
}

fn entry_from_meta(path: Vec<u8>, kind: EntryKind, m: &std::fs::Metadata) -> Entry {
    Entry {
        path,
        kind,
        size: if kind == EntryKind::File { m.len() } else { 0 },
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        target: Vec::new(),
        blake3: [0; 32],
        atime: Some(Time {
            sec: m.atime(),
            nsec: m.atime_nsec() as u32,
        }),
        // statx's birth time where the filesystem reports one (std asks for STATX_BTIME).
        btime: m.created().ok().map(unix_time),
        xattrs: Vec::new(),
        extents: None,
    }
}

/// Opens a source file for reading without updating its access time where allowed
/// (`O_NOATIME` needs ownership or CAP_FOWNER), never following a symlink.
fn open_source(path: &Path, extra: i32) -> std::io::Result<File> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | extra | flags)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
}

/// Adds what a source entry carries beyond `stat`: extended attributes (checked, see
/// `xattrs`) and, on NTFS, the creation time.
fn add_extras(
    e: &mut Entry,
    src: crate::xattrs::Source<'_>,
    sink: &Sink<'_>,
) -> Result<(), DataError> {
    e.xattrs = crate::xattrs::read(src).map_err(|r| sink.bad(r))?;
    if let Some(t) = crate::xattrs::ntfs_crtime(src) {
        e.btime = Some(t);
    }
    Ok(())
}

/// Files with more than one link seen so far: (device, inode) -> the first path (memory grows
/// with the number of multiply-linked files only).
type Links = std::collections::HashMap<(u64, u64), Vec<u8>>;

/// Adds a regular file: its content and extras the first time its inode is seen, a hard link
/// to that first path after (stored once, linked at restore).
fn add_file(
    rel: Vec<u8>,
    mut f: File,
    fm: &std::fs::Metadata,
    sink: &mut Sink<'_>,
    links: &mut Links,
) -> Result<(), DataError> {
    if fm.nlink() > 1 {
        if let Some(first) = links.get(&(fm.dev(), fm.ino())) {
            let mut e = entry_from_meta(rel, EntryKind::Hardlink, fm);
            e.target = first.clone();
            return sink.add(e, None);
        }
        links.insert((fm.dev(), fm.ino()), rel.clone());
    }
    let mut e = entry_from_meta(rel, EntryKind::File, fm);
    e.extents = crate::sparse::data_extents(&mut f, fm);
    add_extras(&mut e, crate::xattrs::Source::File(&f), sink)?;
    sink.add(e, Some(&mut f))
}

/// Walks `root` depth-first with a stack of open directory iterators (memory grows with depth,
/// not with the number of files), never following symlinks.
fn walk_dir(root: &Path, sink: &mut Sink<'_>) -> Result<(), DataError> {
    let mut links = Links::new();
    let rd = std::fs::read_dir(root).map_err(io("listing source", root))?;
    let mut stack: Vec<(std::fs::ReadDir, Vec<u8>)> = vec![(rd, Vec::new())];
    while let Some((rd, prefix)) = stack.last_mut() {
        let Some(de) = rd.next() else {
            stack.pop();
            continue;
        };
        let de = de.map_err(io("listing source", root))?;
        let mut rel = prefix.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(de.file_name().as_bytes());
        let full = de.path();
        // The directory entry's type (d_type) spares regular files an lstat: they are opened and
        // fstat'ed, which is what counts (the entry could change in between).
        let dt = de
            .file_type()
            .map_err(io("reading metadata of source entry", &full))?;
        if dt.is_file() {
            // O_NOFOLLOW: refuse if swapped for a symlink meanwhile; O_NONBLOCK: do not hang if
            // swapped for a FIFO (the fstat below then refuses it).
            let f =
                open_source(&full, libc::O_NONBLOCK).map_err(io("opening source file", &full))?;
            let fm = f
                .metadata()
                .map_err(io("reading metadata of source file", &full))?;
            if !fm.is_file() {
                return Err(sink.bad("a regular file was replaced while being read"));
            }
            add_file(rel, f, &fm, sink, &mut links)?;
            continue;
        }
        let m = std::fs::symlink_metadata(&full)
            .map_err(io("reading metadata of source entry", &full))?;
        let ft = m.file_type();
        if ft.is_dir() {
            let mut e = entry_from_meta(rel.clone(), EntryKind::Dir, &m);
            add_extras(&mut e, crate::xattrs::Source::Path(&full), sink)?;
            sink.add(e, None)?;
            let sub = std::fs::read_dir(&full).map_err(io("listing source", &full))?;
            stack.push((sub, rel));
        } else if ft.is_file() {
            // O_NOFOLLOW: the entry was a regular file a moment ago; refuse if swapped for a link.
            let f = open_source(&full, 0).map_err(io("opening source file", &full))?;
            let fm = f
                .metadata()
                .map_err(io("reading metadata of source file", &full))?;
            add_file(rel, f, &fm, sink, &mut links)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full).map_err(io("reading symlink", &full))?;
            let mut e = entry_from_meta(rel, EntryKind::Symlink, &m);
            e.target = target.as_os_str().as_bytes().to_vec();
            sink.add(e, None)?;
        } else {
            let kind = if ft.is_char_device() {
                EntryKind::CharDev
            } else if ft.is_block_device() {
                EntryKind::BlockDev
            } else if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                EntryKind::Socket
            };
            sink.add(entry_from_meta(rel, kind, &m), None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::CustodyPaths;

    fn custody(root: &Path) -> Custody {
        Custody::open(CustodyPaths::under(root)).unwrap()
    }

    #[test]
    fn a_taken_id_leaves_the_other_dataset_and_its_key_alone() {
        let d = tempfile::tempdir().unwrap();
        let c = custody(d.path());
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"first").unwrap();
        let a = c.ingest("C-1", "T-1", &src).unwrap();
        let key_path = c.keys.key_path(a.id.as_str());
        let key_before = std::fs::read(&key_path).unwrap();
        // A second ingest that drew the same id (same day, same random bits).
        std::fs::write(src.join("f"), b"second").unwrap();
        let now = c.now();
        let e = c
            .ingest_as(&a.id, "C-2", "T-2", &src, true, now)
            .unwrap_err();
        assert!(matches!(e, DataError::IdTaken(_)), "{e}");
        assert_eq!(
            std::fs::read(&key_path).unwrap(),
            key_before,
            "key untouched"
        );
        assert!(!c.paths.staging.join(format!("{}.partial", a.id)).exists());
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        assert!(c.restore(&a.id, &out, &Default::default()).unwrap().ok());
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"first");

        // Only a wrapped key exists under the id (no directory): still taken, still kept.
        let b = DatasetId("ds-20260101-00000000000000000000000000000001".into());
        let kb = c.keys.key_path(b.as_str());
        std::fs::write(&kb, b"someone's key").unwrap();
        let e = c.ingest_as(&b, "C-2", "T-2", &src, true, now).unwrap_err();
        assert!(matches!(e, DataError::IdTaken(_)), "{e}");
        assert_eq!(std::fs::read(&kb).unwrap(), b"someone's key");
        assert!(!c.paths.staging.join(format!("{b}.partial")).exists());
        // A fresh id works.
        c.ingest("C-2", "T-2", &src).unwrap();
    }
}
