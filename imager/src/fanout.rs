//! [`write_image`]: one image onto many targets. One read and decode feeds every target through
//! a bounded queue per target; each target runs on its own thread and fails alone.
//!
//! How far a slow disk may hold back the others: a target's queue holds [`TARGET_QUEUE`] pieces.
//! Once handing pieces to a target has blocked for [`SLOW_WAIT`] in total while another target was
//! starved (its queue nearly empty), the slow target is split off: it drains its queue and then
//! decodes the image again by itself from where it stopped. So a slow disk holds the fast ones
//! back by at most `SLOW_WAIT` once; it costs one more decode stream, at the slow disk's pace.
//! When every queue is full (all disks equally slow) nobody is split off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::buffer::{ALIGN, AlignedBuf};
use crate::decode::Item;
use crate::eligibility::{self, Refusal};
use crate::error::ImagerError;
use crate::fsgrow;
use crate::gptfix;
use crate::ioctl;
use crate::layout;
use crate::marker;
use crate::options::WriteOptions;
use crate::progress::{Phase, ProgressEvent, Reporter};
use crate::report::{TargetReport, TargetResult};
use crate::source::{ImageInfo, ImageSource};
use crate::target::TargetDev;
use crate::verify;
use crate::writer::OrderedWriter;

/// Pieces queued per target (spans of about 4 MiB, shared between targets).
pub const TARGET_QUEUE: usize = 8;
/// How long a blocked hand-off to one target may hold back starved others before it is split off.
pub const SLOW_WAIT: Duration = Duration::from_secs(2);

/// Writes one image to every target (one read/decode feeds all; each target fails alone).
pub fn write_image(
    source: &ImageSource,
    targets: &[PathBuf],
    opts: &WriteOptions,
    progress: Option<Sender<ProgressEvent>>,
) -> Vec<TargetReport> {
    write_image_with_info(source, None, targets, opts, progress)
}

/// [`write_image`] with the [`ImageInfo`] the caller already got from `source.info()` (for its
/// confirmation prompt), so a compressed file is not scanned twice. A store image's chunks are
/// looked for again (a stat each): the technician may have answered the prompt much later.
pub fn write_image_with_info(
    source: &ImageSource,
    info: Option<ImageInfo>,
    targets: &[PathBuf],
    opts: &WriteOptions,
    progress: Option<Sender<ProgressEvent>>,
) -> Vec<TargetReport> {
    let info = match info {
        Some(i) => source.check_chunks().map(|()| i),
        None => source.info(),
    };
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            return targets
                .iter()
                .map(|t| {
                    failed(
                        TargetReport::new(t.clone(), None),
                        Phase::Checking,
                        &e,
                        false,
                    )
                })
                .collect();
        }
    };
    let mut reports: Vec<Option<TargetReport>> = Vec::new();
    let mut live: Vec<(usize, TargetDev, TargetReport)> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let mut rep = TargetReport::new(t.clone(), Some(info.clone()));
        match claim(t, &info, opts.expected_diskseq.get(t).copied()) {
            Ok((id, dev)) => {
                rep.identity = Some(id);
                rep.direct_io = dev.is_direct();
                live.push((i, dev, rep));
                reports.push(None);
            }
            Err(refusal) => {
                rep.result = TargetResult::Refused { refusal };
                reports.push(Some(rep));
            }
        }
    }
    if live.is_empty() {
        return reports.into_iter().flatten().collect();
    }
    let stream = match source.open_stream(&info, 0) {
        Ok(s) => s,
        Err(e) => {
            for (i, _, rep) in live {
                reports[i] = Some(failed(rep, Phase::Writing, &e, false));
            }
            return reports.into_iter().flatten().collect();
        }
    };
    std::thread::scope(|s| {
        let mut feeds = Vec::new();
        let mut handles = Vec::new();
        for (i, dev, rep) in live {
            let (tx, rx) = bounded::<Item>(TARGET_QUEUE);
            let split = Arc::new(AtomicBool::new(false));
            feeds.push(Feed {
                tx: Some(tx),
                split: split.clone(),
                held_back: Duration::ZERO,
            });
            let reporter = Reporter::new(progress.clone(), rep.path.clone());
            let info = &info;
            handles.push((
                i,
                s.spawn(move || run_target(source, info, opts, dev, rep, rx, split, reporter)),
            ));
        }
        distribute(stream, &mut feeds, &opts.cancel);
        drop(feeds);
        for (i, h) in handles {
            reports[i] = Some(h.join().expect("target thread panicked"));
        }
    });
    crate::span::trim_pool();
    reports.into_iter().flatten().collect()
}

struct Feed {
    tx: Option<Sender<Item>>,
    split: Arc<AtomicBool>,
    /// Total time handing pieces to this target blocked while another target was starved.
    held_back: Duration,
}

/// Granularity of the blocked-time accounting.
const POLL: Duration = Duration::from_millis(50);

/// Hands every piece to every live target; splits off a target that holds starved others back.
/// Returns soon after a cancel even while the source is stalled.
fn distribute(stream: Receiver<Item>, feeds: &mut [Feed], cancel: &AtomicBool) {
    loop {
        let item = match stream.recv_timeout(POLL) {
            Ok(item) => item,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let end = item.is_err();
        for i in 0..feeds.len() {
            let Some(tx) = feeds[i].tx.clone() else {
                continue;
            };
            let mut msg = item.clone();
            loop {
                match tx.send_timeout(msg, POLL) {
                    Ok(()) => break,
                    Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                        feeds[i].tx = None; // the target failed and went away
                        break;
                    }
                    Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                        let starved = feeds.iter().enumerate().any(|(j, f)| {
                            j != i && f.tx.as_ref().is_some_and(|t| t.len() < TARGET_QUEUE / 4)
                        });
                        if starved {
                            feeds[i].held_back += POLL;
                        }
                        if feeds[i].held_back >= SLOW_WAIT {
                            tracing::info!("splitting off a slow target");
                            feeds[i].split.store(true, Ordering::SeqCst);
                            feeds[i].tx = None;
                            break;
                        }
                        msg = m;
                    }
                }
            }
        }
        if end {
            return;
        }
    }
}

/// Checks and claims one target; EBUSY / a held lock become [`Refusal::Busy`]. The claimed
/// disk must be the one detected (`expected`, the caller's `diskseq`) and the one checked.
fn claim(
    t: &Path,
    info: &ImageInfo,
    expected: Option<u64>,
) -> Result<(eligibility::TargetInfo, TargetDev), Refusal> {
    let id = eligibility::check_target(t, info.size, info.gpt_sector)?;
    if let (Some(want), Some(seen)) = (expected, id.diskseq)
        && want != seen
    {
        return Err(Refusal::DiskChanged {
            path: t.display().to_string(),
            when: "since it was detected".into(),
            expected: want,
            actual: seen,
        });
    }
    let dev =
        TargetDev::open_checked(t, info.size, expected.or(id.diskseq)).map_err(|e| match e {
            ImagerError::Refused { refusal, .. } => refusal,
            e => Refusal::Busy {
                detail: e.to_string(),
            },
        })?;
    Ok((id, dev))
}

fn failed(mut rep: TargetReport, phase: Phase, e: &ImagerError, reset: bool) -> TargetReport {
    rep.result = TargetResult::Failed {
        phase,
        error: e.to_string(),
        offset: e.offset(),
        table_reset: reset,
    };
    if let ImagerError::Mismatch { offsets, .. } = e {
        rep.mismatch_offsets = offsets.clone();
    }
    rep
}

#[allow(clippy::too_many_arguments)]
fn run_target(
    source: &ImageSource,
    info: &ImageInfo,
    opts: &WriteOptions,
    mut dev: TargetDev,
    mut rep: TargetReport,
    rx: Receiver<Item>,
    split: Arc<AtomicBool>,
    mut progress: Reporter,
) -> TargetReport {
    let t0 = Instant::now();
    let mut phase = Phase::Writing;
    // The layout map comes first: a grow hint that cannot be carried out is refused before the
    // disk is touched.
    let plan = match plan_layout(info, opts, &dev) {
        Ok(p) => p,
        Err(e) => {
            progress.phase(Phase::Failed, 0);
            return failed(rep, Phase::Checking, &e, false);
        }
    };
    let r = job_steps(
        source,
        info,
        opts,
        &plan,
        &mut dev,
        &mut rep,
        rx,
        &split,
        &mut progress,
        &mut phase,
    );
    rep.split_off |= split.load(Ordering::SeqCst);
    rep.direct_io = dev.is_direct();
    rep.durations.total_secs = t0.elapsed().as_secs_f64();
    match r {
        Ok(()) => {
            progress.phase(Phase::Done, 0);
            // Every step above returned Ok: written, read back equal, first MiB last.
            rep.verified = Some(crate::proof::VerifiedImage::after_read_back(&rep));
            rep
        }
        Err(e) => {
            drop(split);
            let mut reset = gptfix::reset_partition_table(&mut dev, info.size).is_ok();
            if !plan.layout.is_identity() {
                // The image's backup GPT was written where the layout map moved it.
                let end = plan.layout.disk(info.size - 1) + 1;
                reset &= gptfix::reset_partition_table(&mut dev, end).is_ok();
            }
            progress.phase(Phase::Failed, 0);
            failed(rep, phase, &e, reset)
        }
    }
}

/// The layout map for this target (`layout.rs`): partitions after the one to grow move to the
/// disk's end. Only with fix-ups on and a GPT summary (store images).
fn plan_layout(
    info: &ImageInfo,
    opts: &WriteOptions,
    dev: &TargetDev,
) -> Result<layout::Plan, ImagerError> {
    if !opts.fixups || info.gpt_sector.is_none() {
        return Ok(layout::Plan::default());
    }
    // Import and `tek image set` refuse this hint already; a manifest is checked again here.
    if info.hints.randomize_guids
        && info
            .gpt
            .iter()
            .flat_map(|g| &g.partitions)
            .any(|p| p.windows_bcd)
    {
        return Err(ImagerError::Gpt {
            path: dev.path().to_path_buf(),
            reason: "randomize_guids on an image whose ESP holds EFI/Microsoft/Boot/BCD: the \
                     BCD store names partitions by GUID, the disk would not boot"
                .into(),
        });
    }
    layout::plan(
        info.gpt.as_ref(),
        info.hints.grow_partition.as_deref(),
        info.size,
        dev.size(),
    )
    .map_err(|e| ImagerError::Gpt {
        path: dev.path().to_path_buf(),
        reason: e.0,
    })
}

#[allow(clippy::too_many_arguments)]
fn job_steps(
    source: &ImageSource,
    info: &ImageInfo,
    opts: &WriteOptions,
    plan: &layout::Plan,
    dev: &mut TargetDev,
    rep: &mut TargetReport,
    rx: Receiver<Item>,
    split: &AtomicBool,
    progress: &mut Reporter,
    phase: &mut Phase,
) -> Result<(), ImagerError> {
    let size = info.size;
    let t = Instant::now();
    progress.phase(Phase::Writing, size);
    rep.unfinished_write = marker::read(dev);
    if let Some(m) = &rep.unfinished_write {
        tracing::warn!("{}: {m}", dev.path().display());
    }
    // From here on the disk's old partition table would describe a half-written disk: reset it,
    // and leave a marker a kill -9 cannot remove (a finished write overwrites it).
    marker::arm(dev, info)?;
    let mut w = OrderedWriter::with_layout(dev, size, opts.reuse_existing, plan.layout);
    let mut rx = rx;
    loop {
        let item = match rx.recv_timeout(POLL) {
            Ok(item) => item,
            // A stalled source (a hung network mount, a chunk that never arrives) must not
            // keep a cancel from taking effect.
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if opts.cancel.load(Ordering::Relaxed) {
                    return Err(ImagerError::Cancelled {
                        offset: w.position(),
                    });
                }
                continue;
            }
            Err(_) if split.load(Ordering::SeqCst) && w.position() < size => {
                // Split off: decode again from here, at this disk's own pace.
                rx = source.open_stream(info, w.position())?;
                split.store(false, Ordering::SeqCst);
                rep.split_off = true;
                continue;
            }
            Err(_) if opts.cancel.load(Ordering::Relaxed) => {
                // The distributor stopped handing out pieces because of the cancel.
                return Err(ImagerError::Cancelled {
                    offset: w.position(),
                });
            }
            Err(_) => break,
        };
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(ImagerError::Cancelled {
                offset: w.position(),
            });
        }
        match item {
            Ok(piece) => w.push(&piece)?,
            Err(e) => {
                return Err(ImagerError::Stream {
                    reason: e.to_string(),
                    offset: e.offset(),
                });
            }
        }
        progress.update(w.position());
    }
    w.finish()?;
    let stats = w.stats;
    let extents = std::mem::take(&mut w.extents);
    let mut holdback = std::mem::take(&mut w.holdback);
    drop(w);
    rep.bytes_written = stats.bytes_written;
    rep.bytes_zeroed = stats.bytes_zeroed;
    rep.bytes_skipped = stats.bytes_skipped;
    rep.durations.write_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    *phase = Phase::ClearingBeyond;
    progress.phase(Phase::ClearingBeyond, dev.size() - size);
    rep.beyond = crate::beyond::clear_uncovered(dev, size, plan.layout, opts.beyond, &opts.cancel)?;
    rep.durations.beyond_secs = t.elapsed().as_secs_f64();

    if let Some(hook) = &opts.before_read_back {
        (hook.0)(dev.path());
    }
    let t = Instant::now();
    *phase = Phase::Flushing;
    progress.phase(Phase::Flushing, 0);
    dev.sync()?;
    dev.drop_cache()?;
    *phase = Phase::Verifying;
    progress.phase(Phase::Verifying, size);
    let out = verify::verify_mapped(
        dev,
        &extents,
        &holdback,
        size,
        plan.layout,
        opts.verify_holes_fully,
        &opts.cancel,
        &mut |d| progress.update(d),
    )?;
    rep.bytes_verified = out.bytes_verified;
    if !out.mismatches.is_empty() {
        return Err(ImagerError::Mismatch {
            path: dev.path().to_path_buf(),
            offsets: out.mismatches,
        });
    }
    rep.durations.verify_secs = t.elapsed().as_secs_f64();
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(ImagerError::Cancelled { offset: size });
    }

    let t = Instant::now();
    if let (true, Some(sector)) = (opts.fixups, info.gpt_sector) {
        *phase = Phase::FixingGpt;
        progress.phase(Phase::FixingGpt, 0);
        let mut changes = gptfix::fix_gpt(dev, &mut holdback, sector, &info.hints, plan)?;
        dev.sync()?;
        dev.drop_cache()?;
        for (off, bytes) in std::mem::take(&mut changes.written) {
            rep.bytes_written += bytes.len() as u64;
            let bad = verify::verify_bytes(dev, off, &bytes)?;
            if !bad.is_empty() {
                return Err(ImagerError::Mismatch {
                    path: dev.path().to_path_buf(),
                    offsets: bad,
                });
            }
            rep.bytes_verified += bytes.len() as u64;
        }
        let grown = changes.grown_range;
        rep.gpt = Some(changes);
        // The grown partition's filesystem follows its partition, before the first MiB makes
        // the disk look finished: a failed grow or check resets the table like any failure.
        if let Some((number, first, last)) = grown
            && last > first
        {
            *phase = Phase::GrowingFilesystem;
            progress.phase(Phase::GrowingFilesystem, 0);
            let g = fsgrow::grow(
                dev.path(),
                number,
                first * sector,
                (last - first + 1) * sector,
            )?;
            dev.drop_cache()?;
            rep.filesystem = Some(g);
        }
    }
    // The last moment a cancel can still stop the write: after the first MiB, the disk is done.
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(ImagerError::Cancelled { offset: size });
    }
    *phase = Phase::FirstMib;
    progress.phase(Phase::FirstMib, holdback.len() as u64);
    let mut buf = AlignedBuf::new(holdback.len().max(ALIGN));
    buf.as_mut_slice()[..holdback.len()].copy_from_slice(&holdback);
    dev.write_at(&buf.as_slice()[..holdback.len()], 0)?;
    rep.bytes_written += holdback.len() as u64;
    dev.sync()?;
    dev.drop_cache()?;
    let bad = verify::verify_bytes(dev, 0, &holdback)?;
    if !bad.is_empty() {
        return Err(ImagerError::Mismatch {
            path: dev.path().to_path_buf(),
            offsets: bad,
        });
    }
    rep.bytes_verified += holdback.len() as u64;
    if dev.is_block() {
        use std::os::fd::AsFd;
        // Loop devices without partition scanning answer EINVAL; that is fine.
        rep.reread_partitions = Some(match ioctl::reread_partitions(dev.buffered().as_fd()) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        });
    }
    rep.durations.finish_secs = t.elapsed().as_secs_f64();
    Ok(())
}
