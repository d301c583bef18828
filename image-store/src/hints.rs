//! Checking an image's hints against its GPT summary: partition hints are selectors
//! (`blockdev::selector`) that must mean exactly one partition, at import and `tek image set`.

use crate::error::StoreError;
use crate::manifest::{GptSummary, Hints};

/// Checks hints against the image's GPT (None: the image has no GPT): each partition hint is a
/// selector (`blockdev::selector`) that must mean exactly one partition; `label:` needs the
/// labels probed at import. The data partition must not be BitLocker-encrypted.
pub fn check_hints(h: &Hints, gpt: Option<&GptSummary>) -> Result<(), StoreError> {
    for (hint, text) in [
        ("data_partition", &h.data_partition),
        ("grow_partition", &h.grow_partition),
    ] {
        let Some(text) = text else { continue };
        let p = resolve_hint(hint, text, gpt)?;
        if hint == "data_partition" && p.filesystem.as_deref() == Some("bitlocker") {
            return Err(StoreError::BadHint {
                hint,
                reason: format!(
                    "{text} is partition {} ({:?}), a BitLocker-encrypted volume: client data \
                     cannot be written into it",
                    p.number, p.name
                ),
            });
        }
    }
    if h.randomize_guids
        && let Some(p) = gpt
            .iter()
            .flat_map(|g| &g.partitions)
            .find(|p| p.windows_bcd)
    {
        return Err(StoreError::BadHint {
            hint: "randomize_guids",
            reason: format!(
                "partition {} ({:?}) holds the Windows boot manager's {}, which names the \
                 disk's partitions by GUID: with new GUIDs Windows would not boot (tek does not \
                 rewrite the BCD store)",
                p.number,
                p.name,
                crate::probe::BCD_PATH
            ),
        });
    }
    if let Some(p) = &h.data_path {
        crate::manifest::check_data_path(p).map_err(|reason| StoreError::BadHint {
            hint: "data_path",
            reason,
        })?;
    }
    Ok(())
}

/// The one partition of `gpt` the selector `text` of hint `hint` means.
pub fn resolve_hint<'a>(
    hint: &'static str,
    text: &str,
    gpt: Option<&'a GptSummary>,
) -> Result<&'a crate::manifest::GptPartition, StoreError> {
    let bad = |reason: String| StoreError::BadHint { hint, reason };
    let sel = blockdev::selector::PartitionSelector::parse(text).map_err(|e| bad(e.to_string()))?;
    let Some(g) = gpt else {
        return Err(bad(format!(
            "names partition {text:?} but the image has no GPT"
        )));
    };
    let facts: Vec<_> = g
        .partitions
        .iter()
        .map(|p| blockdev::selector::PartitionFacts {
            number: p.number,
            name: p.name.clone(),
            type_guid: p.type_guid.clone(),
            label: p.label.clone(),
        })
        .collect();
    let hit = sel.resolve(&facts).map_err(|e| bad(e.to_string()))?;
    Ok(g.partitions
        .iter()
        .find(|p| p.number == hit.number)
        .expect("resolved from this list"))
}
