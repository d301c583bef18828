//! `tek write IMAGE TARGET...`: the hands-on imaging command. Shows each disk's identity, asks for
//! confirmation (unless `--yes`), writes with the imager library, draws progress (bars on a
//! terminal, a line every few seconds otherwise), and prints or saves the per-target reports.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use image_store::{ImageRef, SignatureStatus};
use imager::{BeyondImage, ImageSource, TargetReport, WriteOptions};

use super::interrupt::say;
use super::render::size;
use agent::Depot;

/// `--beyond`'s values, with their help, parsed into the imager's [`BeyondImage`].
fn beyond_parser() -> impl clap::builder::TypedValueParser<Value = BeyondImage> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("auto")
            .help("Clear it where the device zeroes fast; say so in the report otherwise"),
        PossibleValue::new("overwrite").help("Always clear it, writing zeros if needed"),
        PossibleValue::new("skip").help("Leave it as it is"),
    ])
    .map(|s| s.parse::<BeyondImage>().expect("listed values parse"))
}

/// Arguments of `tek write`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// NAME@VERSION from the store, or a path to a raw image or one compressed with zstd, gzip,
    /// xz or bzip2 (detected by content).
    pub image: String,
    /// Block devices or files to write.
    #[arg(required = true)]
    pub targets: Vec<PathBuf>,
    /// Save the JSON reports (an array, one per target) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print the JSON reports on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// What to do past the image's end.
    #[arg(long, default_value = "auto", value_parser = beyond_parser())]
    pub beyond: BeyondImage,
    /// Read what the target holds and skip writes where it already matches.
    #[arg(long)]
    pub reuse: bool,
    /// Do not fix up the GPT (backup location, growing, GUIDs).
    #[arg(long)]
    pub no_fixups: bool,
    /// Read large zeroed holes back completely instead of sampling them.
    #[arg(long)]
    pub verify_holes_fully: bool,
    /// Write store images that are unsigned or signed by an unknown key.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Write an image whose privacy audit is missing or not clean (files are audited here;
    /// compressed files cannot be, so they need this flag).
    #[arg(long)]
    pub allow_unaudited: bool,
}

/// The privacy audit gate of `tek write` (DESIGN invariant 7): a store image's recorded
/// verdict, a raw file audited now.
fn check_audit(source: &ImageSource, args: &WriteArgs) -> Result<()> {
    if args.allow_unaudited {
        return Ok(());
    }
    let res = match source {
        ImageSource::Stored { image, .. } => {
            image_store::audit::require_clean(image.manifest.audit.as_ref())
        }
        ImageSource::File(p) => {
            let raw = image_store::source::Source::open(p)
                .with_context(|| format!("opening {}", p.display()))?
                .format()
                == image_store::source::SourceFormat::Raw;
            if !raw {
                bail!(
                    "refusing {}: a compressed image cannot be audited before writing; import it \
                     (which audits it) or pass --allow-unaudited",
                    p.display()
                );
            }
            let report = image_store::audit::audit_file(p, &Default::default())
                .with_context(|| format!("auditing {}", p.display()))?;
            image_store::audit::require_clean(Some(&report))
        }
    };
    res.map_err(|e| {
        anyhow::anyhow!(
            "refusing {}: {e}; pass --allow-unaudited to write it anyway",
            args.image
        )
    })
}

/// A store reference always wins: an argument that parses as NAME@VERSION is the store's image,
/// even when a file of that name sits in the current directory (names cannot hold `/`, so
/// `./NAME@VERSION` names the file). Anything else must be an existing file.
fn resolve_source(depot: &Depot, args: &WriteArgs) -> Result<ImageSource> {
    let p = Path::new(&args.image);
    let r: ImageRef = match args.image.parse() {
        Ok(r) => r,
        Err(_) if p.exists() => return Ok(ImageSource::File(p.to_path_buf())),
        Err(e) => bail!(
            "reading image {}: no such file, and not a store image ({e})",
            args.image
        ),
    };
    let store = super::image::open_store(depot)?;
    let image = store.load(&r, depot.trusted_keys()).with_context(|| {
        if p.exists() {
            format!("loading image {r} (to write the file of that name, give it as ./{r})")
        } else {
            format!("loading image {r}")
        }
    })?;
    match &image.signature {
        SignatureStatus::Valid { .. } => {}
        SignatureStatus::Invalid { reason } => {
            bail!("refusing image {r}: its signature does not match ({reason})")
        }
        other if !args.allow_unsigned => {
            bail!("refusing image {r}: {other}; pass --allow-unsigned to write it anyway")
        }
        _ => {}
    }
    Ok(ImageSource::Stored {
        store: Arc::new(store),
        image,
    })
}

/// The image as the prompt and the summary name it: `name@version` for a store image (with its
/// signature), the file name and format for a file.
fn image_line(info: &imager::ImageInfo) -> String {
    let name = image_name(info);
    let how = match (&info.signature, info.file_format) {
        (Some(SignatureStatus::Valid { key_id }), _) => format!(", signed by trusted key {key_id}"),
        (Some(sig), _) => format!(", {sig}"),
        (None, Some(f)) if f != "raw" => format!(", decoded from {f}"),
        _ => String::new(),
    };
    format!("{name} ({}{how})", size(info.size))
}

/// Shows the image and what each target is and holds now, then asks (unless `--yes`). No
/// question when every target is refused: nothing would be written, and the write that
/// follows only reports the refusals.
fn confirm(source: &ImageSource, args: &WriteArgs) -> Result<imager::ImageInfo> {
    if let ImageSource::File(p) = source
        && let Ok(f) = imager::file_format(p)
        && f != image_store::source::SourceFormat::Raw
    {
        // Decoding a large xz file takes minutes: say why nothing seems to happen.
        say(&format!(
            "tek write: decoding {} ({}) once to check it and learn its size...",
            p.display(),
            f.name()
        ));
    }
    let info = source.info().context("inspecting the image")?;
    eprintln!("image: {}", image_line(&info));
    let mut writable = Vec::new();
    for t in &args.targets {
        match imager::check_target(t, info.size, info.gpt_sector) {
            Ok(i) => {
                eprintln!(
                    "  {}: {} serial {}, {}, sectors {}/{}",
                    t.display(),
                    i.model.as_deref().unwrap_or("unknown model"),
                    i.serial.as_deref().unwrap_or("unknown"),
                    size(i.size),
                    i.logical_sector,
                    i.physical_sector
                );
                writable.push(t.display().to_string());
            }
            Err(r) => eprintln!("  {}: REFUSED: {r}", t.display()),
        }
        match super::disk_contents::describe(t) {
            Ok(lines) => {
                let mut lines = lines.into_iter();
                if let Some(first) = lines.next() {
                    eprintln!("      holds: {first}");
                }
                for l in lines {
                    eprintln!("      {l}");
                }
            }
            Err(e) => eprintln!("      holds: unknown ({e:#})"),
        }
        if let Some(m) = imager::read_unfinished_marker(t) {
            eprintln!("      {m}");
        }
    }
    if args.yes || writable.is_empty() {
        return Ok(info);
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to write without --yes: stdin is not a terminal to confirm on");
    }
    let refused = args.targets.len() - writable.len();
    eprint!(
        "Everything on {} will be overwritten with {}{}. Continue? [y/N] ",
        writable.join(", "),
        image_name(&info),
        match refused {
            0 => String::new(),
            n => format!(" ({n} refused target{} left untouched)", plural(n)),
        }
    );
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("not confirmed; nothing written");
    }
    Ok(info)
}

/// `name@version` for a store image, the file name for a file.
fn image_name(info: &imager::ImageInfo) -> String {
    match &info.version {
        Some(v) => format!("{}@{v}", info.name),
        None => info.name.clone(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn summary(r: &TargetReport, signal: Option<&str>) -> String {
    match &r.result {
        imager::TargetResult::Failed {
            phase,
            offset,
            table_reset,
            ..
        } if signal.is_some() => format!(
            "{}: INTERRUPTED by {} while {}{}: {}",
            r.path.display(),
            signal.unwrap_or_default(),
            phase.words(),
            offset
                .map(|o| format!(" at image offset {o}"))
                .unwrap_or_default(),
            if *table_reset {
                "partition table reset (both GPT headers and the protective MBR zeroed); the \
                 disk holds a partial image and no partition table: write it again before use"
            } else {
                "the partition table could NOT be reset: the disk holds a partial image and \
                 may look valid; do not use it, write it again"
            }
        ),
        imager::TargetResult::Ok => format!(
            "{}: ok: {} written, {} zeroed, {} skipped, {} verified in {:.1}s",
            r.path.display(),
            size(r.bytes_written),
            size(r.bytes_zeroed),
            size(r.bytes_skipped),
            size(r.bytes_verified),
            r.durations.total_secs
        ),
        imager::TargetResult::Refused { refusal } => {
            format!("{}: refused: {refusal}", r.path.display())
        }
        imager::TargetResult::Failed {
            phase,
            error,
            table_reset,
            ..
        } => format!(
            "{}: FAILED while {}: {error}{}",
            r.path.display(),
            phase.words(),
            if *table_reset {
                " (partition table reset)"
            } else {
                ""
            }
        ),
    }
}

/// Runs `tek write`.
pub fn run(depot: &Depot, args: WriteArgs) -> Result<()> {
    let source = resolve_source(depot, &args)?;
    check_audit(&source, &args)?;
    let info = confirm(&source, &args)?;
    let opts = WriteOptions {
        beyond: args.beyond,
        reuse_existing: args.reuse,
        fixups: !args.no_fixups,
        verify_holes_fully: args.verify_holes_fully,
        ..Default::default()
    };
    // From here on SIGINT/SIGTERM/SIGHUP stop the write cleanly instead of killing it.
    let interrupted = super::interrupt::catch(opts.cancel.clone())?;
    if let Some(sig) = interrupted.signal() {
        bail!("interrupted by {sig} before writing; nothing written");
    }
    let (tx, rx) = crossbeam_channel::bounded(1024);
    let width = args
        .targets
        .iter()
        .map(|t| t.display().to_string().chars().count())
        .max()
        .unwrap_or(0);
    let drawer = std::thread::spawn(move || super::write_progress::show(rx, width));
    let reports =
        imager::write_image_with_info(&source, Some(info), &args.targets, &opts, Some(tx));
    drawer.join().ok();
    let signal = interrupted.signal();
    let json = serde_json::to_string_pretty(&reports).context("serialising the reports")?;
    if let Some(p) = &args.report {
        std::fs::write(p, format!("{json}\n"))
            .with_context(|| format!("writing the report {}", p.display()))?;
    }
    if args.json {
        super::render::print_json(&reports)?;
    }
    for r in &reports {
        say(&summary(r, signal));
        if let Some(m) = &r.unfinished_write {
            say(&format!(
                "{}: before this write it held an unfinished tek write from {} (image {})",
                r.path.display(),
                m.started,
                m.image
            ));
        }
    }
    let bad = reports.iter().filter(|r| !r.ok()).count();
    if let Some(sig) = signal {
        bail!(
            "interrupted by {sig}: {bad} of {} target(s) not written",
            reports.len()
        );
    }
    if bad > 0 {
        // A refused target is untouched; a failed one may have been partly written.
        let refused = reports
            .iter()
            .filter(|r| matches!(r.result, imager::TargetResult::Refused { .. }))
            .count();
        let mut what = Vec::new();
        if refused > 0 {
            what.push(format!("{refused} refused, untouched"));
        }
        if bad > refused {
            what.push(format!(
                "{} failed after claiming (see each target's line above)",
                bad - refused
            ));
        }
        bail!(
            "{bad} of {} target(s) not written: {}",
            reports.len(),
            what.join("; ")
        );
    }
    Ok(())
}
