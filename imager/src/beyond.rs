//! Clearing the disk the image does not cover: past the image's end, and with a layout map the
//! room opened for the grown partition (see `fanout.rs`'s caller and ARCHITECTURE.md, Zeroing).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::ImagerError;
use crate::layout::Layout;
use crate::options::BeyondImage;
use crate::report::BeyondAction;
use crate::target::{TargetDev, ZeroMethod};

/// Zeros written beyond the image per step, so that a cancel need not wait for a whole disk.
const BEYOND_STEP: u64 = 1 << 30;

/// Clears the disk the image does not cover according to `policy`: `[image_size, disk end)`,
/// and with a layout map the room opened for the grown partition. One action is reported, with
/// the bytes of every range; the weakest one wins (a range left alone makes it `skipped`).
pub(crate) fn clear_uncovered(
    dev: &mut TargetDev,
    image_size: u64,
    layout: Layout,
    policy: BeyondImage,
    cancel: &AtomicBool,
) -> Result<BeyondAction, ImagerError> {
    let mut total: Option<BeyondAction> = None;
    for (a, b) in layout.uncovered(image_size, dev.size()) {
        let act = clear_beyond(dev, a, b, policy, cancel)?;
        total = Some(match (total, act) {
            (None, a) => a,
            (Some(t), a) => t.merge(a),
        });
    }
    Ok(total.unwrap_or(BeyondAction::None))
}

/// Clears `[image_size, end)` according to `policy`.
fn clear_beyond(
    dev: &mut TargetDev,
    image_size: u64,
    end: u64,
    policy: BeyondImage,
    cancel: &AtomicBool,
) -> Result<BeyondAction, ImagerError> {
    if end <= image_size {
        return Ok(BeyondAction::None);
    }
    let bytes = end - image_size;
    if policy == BeyondImage::Skip {
        return Ok(BeyondAction::Skipped {
            bytes,
            reason: "skipped by option".into(),
        });
    }
    let s = dev.logical_sector();
    let a = image_size.div_ceil(s) * s;
    dev.write_zeros(image_size, a - image_size)?;
    if !dev.is_block() {
        dev.zero_range(a, end - a)?;
        return Ok(BeyondAction::Punched { bytes });
    }
    if let Some(m) = dev.zero_range_fast(a, end - a) {
        return Ok(match m {
            ZeroMethod::LoopDiscard => BeyondAction::Discarded { bytes },
            _ => BeyondAction::Zeroed {
                bytes,
                offloaded: true,
            },
        });
    }
    if policy == BeyondImage::Overwrite {
        // BLKZEROOUT or our own writes over the rest of a large disk take minutes: in steps
        // (sector multiples), checking the cancel flag between them.
        let mut offloaded = true;
        let mut at = a;
        while at < end {
            if cancel.load(Ordering::Relaxed) {
                return Err(ImagerError::Cancelled { offset: image_size });
            }
            let n = (end - at).min(BEYOND_STEP);
            offloaded &= dev.zero_range(at, n)?.offloaded();
            at += n;
        }
        return Ok(BeyondAction::Zeroed { bytes, offloaded });
    }
    Ok(BeyondAction::Skipped {
        bytes,
        reason: "the device offers no fast zeroing; use --beyond overwrite".into(),
    })
}
