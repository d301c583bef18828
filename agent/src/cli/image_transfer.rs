//! Progress and pipes for `tek image import` and `tek image export`: a bar on a terminal (none
//! otherwise, so logs and pipes stay clean), and `export -`, which streams the raw image to
//! stdout (the store writes holes as zeros there, since a pipe cannot seek) for `| zstd`,
//! `| ssh`, `| dd`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use image_store::{ImageRef, ImportProgress, Store};
use indicatif::{ProgressBar, ProgressStyle};

use super::render::{emit, size};

/// A byte bar on stderr when it is a terminal, else a bar that draws nothing.
pub fn bar(total: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (b, template) = match total {
        Some(t) => (
            ProgressBar::new(t),
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{prefix} {spinner} {bytes} {binary_bytes_per_sec} {msg}",
        ),
    };
    b.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

/// Runs `import` with a bar over the source's bytes (a raw source's size is known; a compressed
/// one's decoded size is not, so it gets a counter), fed from the import's progress channel.
pub fn with_import_bar<T>(
    source: &Path,
    raw: bool,
    import: impl FnOnce(Option<crossbeam_channel::Sender<ImportProgress>>) -> T,
) -> T {
    let total = raw
        .then(|| std::fs::metadata(source).ok().map(|m| m.len()))
        .flatten();
    let b = bar(total, "importing");
    if b.is_hidden() {
        return import(None);
    }
    let (tx, rx) = crossbeam_channel::bounded(256);
    let drawer = {
        let b = b.clone();
        std::thread::spawn(move || {
            for p in rx {
                match p {
                    ImportProgress::Stored(n) => b.set_position(n),
                    ImportProgress::Auditing => {
                        b.set_message("read; probing and auditing the partitions")
                    }
                }
            }
        })
    };
    let out = import(Some(tx));
    drawer.join().ok();
    b.finish_and_clear();
    out
}

/// Whether an export's OUT names stdout (`-`).
pub fn is_stdout(out: &Path) -> bool {
    out.as_os_str() == "-"
}

/// `tek image export IMAGE OUT`: to a new file (sparse, synced, removed on error) or, for
/// `-`, to stdout; with a bar on a terminal. The summary goes to stderr for `-` (where
/// `--json` is refused: stdout carries the image).
pub fn export(store: &Store, image: &ImageRef, out: &Path, json: bool) -> Result<()> {
    // Read once for the bar's length (a bar of 0 B/0 B until the first chunk lands says
    // nothing); the export reads and checks it again.
    let (m, _) = store
        .load_manifest(image)
        .with_context(|| format!("loading image {image}"))?;
    let b = bar(Some(m.size), "exporting");
    let progress = |pos, len| {
        b.set_length(len);
        b.set_position(pos);
    };
    if is_stdout(out) {
        if json {
            bail!(
                "refusing --json with `export {image} -`: stdout carries the image; give a \
                 file name to get the JSON result"
            );
        }
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!(
                "refusing to write image {image} to a terminal: redirect stdout (`> FILE`, \
                 `| zstd`) or give a file name"
            );
        }
        let res = store.export_stream(image, stdout.lock(), Path::new("stdout"), progress);
        b.finish_and_clear();
        let m = res.with_context(|| format!("exporting {image} to stdout"))?;
        eprintln!(
            "exported {image} to stdout ({}, sha256 {})",
            size(m.size),
            m.sha256
        );
        return Ok(());
    }
    let res = store.export_with(image, out, progress);
    b.finish_and_clear();
    let m = res.with_context(|| format!("exporting {image} to {}", out.display()))?;
    let res = serde_json::json!({
        "image": image.to_string(), "path": out, "size_bytes": m.size, "sha256": m.sha256,
    });
    emit(json, &res, |_| {
        format!(
            "exported {image} to {} ({}, sha256 {})\n",
            out.display(),
            size(m.size),
            m.sha256
        )
    })
}
