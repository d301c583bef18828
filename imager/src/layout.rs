//! The layout map: where each image byte lands on a disk larger than the image.
//!
//! When the partition to grow has partitions after it (Windows Setup puts Recovery after C:),
//! those partitions move to the end of the disk so the grown one can take the space between.
//! Rather than writing the image and copying them afterwards (a second copy, and a crash in the
//! middle of it loses the partition), the writer puts the image's bytes of the moved partitions
//! at their new offset directly: image offsets from [`Layout::from`] on land [`Layout::shift`]
//! bytes later. They are verified before the write and read back at the new place like every
//! other byte, and a resumed write (which starts over) computes the same map from the same
//! manifest and disk size.
//!
//! The shift is a multiple of 1 MiB: the moved partitions keep their alignment, and image
//! offset `o` stays congruent to its disk offset modulo 4096, which the O_DIRECT writer needs.
//! Everything from the first moved partition to the image's end moves as one block (gaps and
//! the image's backup GPT area included, which the GPT fix-ups overwrite or leave unused).

use blockdev::selector::{PartitionFacts, PartitionSelector};
use image_store::manifest::GptSummary;
use serde::Serialize;

/// Granularity of the shift.
pub const SHIFT_ALIGN: u64 = 1 << 20;

/// Image offsets `>= from` land at `offset + shift` on the disk; the rest where they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// First image offset that moves (`u64::MAX`: nothing moves).
    pub from: u64,
    /// Bytes the moved block is shifted by (a multiple of [`SHIFT_ALIGN`]).
    pub shift: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::IDENTITY
    }
}

impl Layout {
    /// Every byte where the image has it.
    pub const IDENTITY: Layout = Layout {
        from: u64::MAX,
        shift: 0,
    };

    /// True when nothing moves.
    pub fn is_identity(&self) -> bool {
        self.shift == 0
    }

    /// The disk offset of image offset `off`.
    pub fn disk(&self, off: u64) -> u64 {
        if off >= self.from {
            off + self.shift
        } else {
            off
        }
    }

    /// `[off, off + len)` cut where the map changes: (offset into the range, length, disk offset)
    /// for each side, in order.
    pub fn pieces(self, off: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
        let end = off + len;
        let cut = self.from.clamp(off, end);
        let first = (cut > off).then(|| (0, cut - off, off));
        let second = (end > cut).then(|| (cut - off, end - cut, self.disk(cut)));
        first.into_iter().chain(second)
    }

    /// Disk ranges `[start, end)` the image does not cover on a disk of `disk_size` bytes: the
    /// room the shift opened, and what lies past the moved block's end.
    pub fn uncovered(&self, image_size: u64, disk_size: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        if !self.is_identity() && self.from < image_size {
            v.push((self.from, self.from + self.shift));
        }
        let end = self.disk(image_size.saturating_sub(1)) + 1;
        if image_size > 0 && end < disk_size {
            v.push((end, disk_size));
        }
        v
    }
}

/// What the fix-ups will do to the partition table, decided before the first byte is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The byte map for the writer and the read-back.
    pub layout: Layout,
    /// Number of the partition to grow (resolved from the `grow_partition` selector).
    pub grow: Option<u32>,
    /// Numbers of the partitions that move with the block.
    pub moved: Vec<u32>,
}

/// Why a layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub String);

/// Plans the layout for an image whose GPT is `gpt` on a disk of `disk_size` bytes:
/// `grow_partition` (a selector) is resolved, the partitions after it move to the disk's end.
/// Without a grow hint or a GPT summary nothing moves.
pub fn plan(
    gpt: Option<&GptSummary>,
    grow_partition: Option<&str>,
    image_size: u64,
    disk_size: u64,
) -> Result<Plan, PlanError> {
    let (Some(g), Some(text)) = (gpt, grow_partition) else {
        return Ok(Plan::default());
    };
    let sel = PartitionSelector::parse(text).map_err(|e| PlanError(e.to_string()))?;
    let facts: Vec<PartitionFacts> = g
        .partitions
        .iter()
        .map(|p| PartitionFacts {
            number: p.number,
            name: p.name.clone(),
            type_guid: p.type_guid.clone(),
            label: p.label.clone(),
        })
        .collect();
    let hit = sel
        .resolve(&facts)
        .map_err(|e| PlanError(format!("grow_partition: {e}")))?;
    let grow = g
        .partitions
        .iter()
        .find(|p| p.number == hit.number)
        .expect("resolved from this list");
    let ss = g.logical_sector_size;
    let mut after: Vec<_> = g
        .partitions
        .iter()
        .filter(|p| p.first_lba > grow.last_lba)
        .collect();
    after.sort_by_key(|p| p.first_lba);
    if g.partitions.iter().any(|p| {
        p.number != grow.number && p.first_lba <= grow.last_lba && p.last_lba >= grow.first_lba
    }) {
        return Err(PlanError(format!(
            "partition {} overlaps another partition",
            grow.number
        )));
    }
    let Some(first) = after.first() else {
        return Ok(Plan {
            grow: Some(grow.number),
            ..Plan::default()
        });
    };
    let from = first.first_lba * ss;
    if from < crate::writer::HOLDBACK || from >= image_size {
        return Err(PlanError(format!(
            "partition {} starts at byte {from}, outside the image's movable range",
            first.number
        )));
    }
    let room = disk_size.saturating_sub(image_size);
    let shift = room / SHIFT_ALIGN * SHIFT_ALIGN;
    Ok(Plan {
        layout: if shift == 0 {
            Layout::IDENTITY
        } else {
            Layout { from, shift }
        },
        grow: Some(grow.number),
        moved: if shift == 0 {
            Vec::new()
        } else {
            after.iter().map(|p| p.number).collect()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_store::manifest::GptPartition;

    fn part(number: u32, name: &str, ty: &str, first: u64, last: u64) -> GptPartition {
        GptPartition {
            number,
            name: name.into(),
            type_guid: ty.into(),
            unique_guid: format!("00000000-0000-0000-0000-00000000000{number}"),
            first_lba: first,
            last_lba: last,
            filesystem: None,
            label: None,
            windows_bcd: false,
        }
    }

    fn windows() -> GptSummary {
        let basic = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
        GptSummary {
            logical_sector_size: 512,
            disk_guid: "D".into(),
            partitions: vec![
                part(
                    1,
                    "EFI system partition",
                    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                    2048,
                    206_847,
                ),
                part(3, "Basic data partition", basic, 239_616, 983_006),
                part(
                    4,
                    "Basic data partition",
                    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC",
                    983_040,
                    1_048_542,
                ),
            ],
        }
    }

    #[test]
    fn recovery_moves_by_whole_mebibytes() {
        let g = windows();
        let img = 512u64 << 20;
        let p = plan(Some(&g), Some("type:basic-data"), img, (1 << 30) + 12345).unwrap();
        assert_eq!(p.grow, Some(3));
        assert_eq!(p.moved, vec![4]);
        assert_eq!(p.layout.from, 983_040 * 512);
        assert_eq!(p.layout.shift, 512 << 20);
        assert_eq!(p.layout.disk(4096), 4096);
        assert_eq!(p.layout.disk(983_040 * 512), 983_040 * 512 + (512 << 20));
        // The ambiguous GPT name is refused, not guessed.
        let e = plan(Some(&g), Some("Basic data partition"), img, 1 << 30).unwrap_err();
        assert!(e.0.contains("ambiguous"), "{}", e.0);
        // Same size: nothing moves.
        let p = plan(Some(&g), Some("number:3"), img, img).unwrap();
        assert!(p.layout.is_identity() && p.moved.is_empty());
    }

    #[test]
    fn pieces_split_at_the_boundary_and_uncovered_ranges() {
        let l = Layout {
            from: 10 << 20,
            shift: 4 << 20,
        };
        let v: Vec<_> = l.pieces(9 << 20, 2 << 20).collect();
        assert_eq!(v, vec![(0, 1 << 20, 9 << 20), (1 << 20, 1 << 20, 14 << 20)]);
        let v: Vec<_> = l.pieces(0, 4096).collect();
        assert_eq!(v, vec![(0, 4096, 0)]);
        let v: Vec<_> = l.pieces(12 << 20, 4096).collect();
        assert_eq!(v, vec![(0, 4096, 16 << 20)]);
        assert_eq!(
            l.uncovered(20 << 20, (24 << 20) + 512),
            vec![(10 << 20, 14 << 20), (24 << 20, (24 << 20) + 512)]
        );
        assert_eq!(Layout::IDENTITY.uncovered(8, 16), vec![(8, 16)]);
    }
}
