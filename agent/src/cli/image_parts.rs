//! What `tek image import` and `show` say about an image's partitions' contents (probed at
//! import: filesystem and label, BitLocker).

use image_store::manifest::GptPartition;

/// BitLocker volumes found at import (on stderr, also with `--json`): such a partition cannot be
/// grown or receive client data, and the image was probably captured from an encrypted disk.
pub(super) fn warn_bitlocker(m: &image_store::Manifest) {
    for p in m.gpt.iter().flat_map(|g| &g.partitions) {
        if p.filesystem.as_deref() == Some("bitlocker") {
            eprintln!(
                "warning: partition {} (\"{}\") is BitLocker-encrypted (-FVE-FS-): tek cannot grow \
                 it or write client data into it, and its contents cannot be audited",
                p.number,
                p.name.escape_debug()
            );
        }
    }
}

/// The line under a partition in `tek image show`: its filesystem and label, if probed.
pub(super) fn print_filesystem(p: &GptPartition) {
    let Some(fs) = &p.filesystem else { return };
    let label = p.label.as_deref().map(|l| format!(", label {l:?}"));
    let note = if fs == "bitlocker" {
        " (BitLocker-encrypted: not a data target, not grown)"
    } else {
        ""
    };
    println!("      filesystem {fs}{}{note}", label.unwrap_or_default());
}
