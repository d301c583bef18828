//! `tek image ...`: the image library (import, sign, list, show, verify, export, retire, gc,
//! stats). A thin layer over `image_store::Store`; everything it prints is also available as
//! JSON (`--json`) for scripts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use image_store::{
    GcOptions, Hints, ImageRef, ImportOptions, Resign, SetHints, SignatureStatus, SigningKey,
    Store, generate_keypair,
};

use agent::Depot;

use super::render::{count, emit, print_json, size};

/// `tek image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a raw disk image (or one compressed with zstd, gzip or xz) as NAME@VERSION.
    Import(ImportArgs),
    /// Change an image's hints (a signed image needs --sign-key to re-sign, or --unsign).
    Set(SetArgs),
    /// Make an ed25519 signing key pair NAME.key / NAME.pub.
    Keygen {
        /// Key name (becomes the key id).
        name: String,
        /// Directory for the pair (default: <state>/signing-keys).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign an image's manifest with a secret key.
    Sign {
        /// NAME@VERSION.
        image: ImageRef,
        /// Secret key file (NAME.key from `tek image keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List stored images (or, with --remote, a library's).
    List {
        /// List the images of this library (s3://BUCKET/PREFIX or http(s)://HOST/PATH)
        /// instead; `--remote` alone lists the bench's library (`[library] url`).
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        remote: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload a signed image to an S3 library (only the chunks it lacks; manifest and
    /// signature last). Endpoint, region and credentials: AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
    Push {
        /// NAME@VERSION.
        image: ImageRef,
        /// The library: s3://BUCKET/PREFIX.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch an image from a library into the store: its manifest only with a valid signature
    /// by a trusted key, every chunk checked before it is stored, only the chunks the store
    /// lacks. From the bench's library (`[library]` in agent.toml: its credentials, endpoint,
    /// region, and `cache_max_bytes`, past which least recently used images are evicted)
    /// unless `--from` names another.
    Pull {
        /// NAME@VERSION.
        image: ImageRef,
        /// The library: s3://BUCKET/PREFIX or http(s)://HOST/PATH (default: `[library] url`).
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an image's manifest summary, GPT, hints and signature status.
    Show {
        /// NAME@VERSION.
        image: ImageRef,
        /// Print JSON (the manifest plus hash and signature status).
        #[arg(long)]
        json: bool,
    },
    /// Write the raw image to OUT (must not exist), byte-identical to the imported one; `-`
    /// writes it to stdout (holes as zeros), e.g. `tek image export a@1 - | zstd > a.img.zst`.
    Export {
        /// NAME@VERSION.
        image: ImageRef,
        /// Output file, or `-` for stdout.
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image's manifest (its chunks go at the next gc). Refused while unfinished
    /// jobs use it, unless --force, which fails those jobs with the reason.
    Rm {
        /// NAME@VERSION.
        image: ImageRef,
        /// Remove it although queued or interrupted jobs use it, failing them.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: super::AgentConn,
    },
    /// Remove chunks no image uses (safe while imports run).
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced chunks touched within this many seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        min_age: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check chunks (present, decompress, hash); --deep also recomputes whole-image hashes.
    Verify {
        /// NAME@VERSION (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        image: Option<ImageRef>,
        /// Verify every image.
        #[arg(long)]
        all: bool,
        /// Also recompute SHA-256 and BLAKE3 of each whole image.
        #[arg(long)]
        deep: bool,
        /// Also fail unless each signature is valid and by a trusted key.
        #[arg(long)]
        require_signature: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Privacy audit of an image file or a stored image, reading its filesystems without
    /// mounting them; fails unless the image is clean.
    Audit {
        /// An image FILE (raw) or NAME@VERSION in the store.
        target: String,
        /// Also scan text-like files for personal data (counts only, never the text); packaged
        /// software (/usr but /usr/local, WinSxS, System32, Program Files, ...) is not scanned.
        #[arg(long)]
        deep: bool,
        /// Record the new verdict in the stored image's manifest (NAME@VERSION only; keeps the
        /// acceptances of findings still made; a signed image needs --sign-key or --unsign).
        #[arg(long)]
        record: bool,
        /// Re-sign the recorded manifest with this secret key.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "unsign",
            requires = "record"
        )]
        sign_key: Option<PathBuf>,
        /// Drop the signature of a signed image instead.
        #[arg(long, requires = "record")]
        unsign: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept one audit finding as a false positive (recorded in the manifest; a signed image
    /// needs --sign-key to re-sign it, or --unsign).
    Accept {
        /// NAME@VERSION.
        image: ImageRef,
        /// The finding's id (from `tek image show` or `tek image audit`).
        #[arg(long, value_name = "ID")]
        finding: String,
        /// Why, as a short code (letters, digits, '-'), e.g. `vendor-sample-file`.
        #[arg(long, value_name = "CODE")]
        reason: String,
        /// Re-sign the changed manifest with this secret key.
        #[arg(long, value_name = "FILE", conflicts_with = "unsign")]
        sign_key: Option<PathBuf>,
        /// Drop the signature of a signed image instead.
        #[arg(long)]
        unsign: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store statistics: logical and stored bytes, chunk count, dedup ratio.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Hints, as given on the command line. An empty value clears a hint.
#[derive(Debug, Args)]
pub struct HintArgs {
    /// The partition that receives client data: number:N, name:GPT-NAME, label:FS-LABEL,
    /// type:basic-data|esp|msr|recovery|linux|GUID, or a bare GPT name.
    #[arg(long, value_name = "SELECTOR")]
    data_partition: Option<String>,
    /// Path inside that partition where client data goes (absolute).
    #[arg(long, value_name = "PATH")]
    data_path: Option<String>,
    /// The partition to grow to fill the disk (a selector, as --data-partition); partitions
    /// after it move to the disk's end.
    #[arg(long, value_name = "SELECTOR")]
    grow_partition: Option<String>,
    /// Give disk and partitions new random GUIDs per device.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    randomize_guids: Option<bool>,
}

impl HintArgs {
    fn apply(&self, mut h: Hints) -> Hints {
        let set = |v: &Option<String>, old: Option<String>| match v {
            None => old,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.clone()),
        };
        h.data_partition = set(&self.data_partition, h.data_partition);
        h.data_path = set(&self.data_path, h.data_path);
        h.grow_partition = set(&self.grow_partition, h.grow_partition);
        if let Some(b) = self.randomize_guids {
            h.randomize_guids = b;
        }
        h
    }
}

/// `tek image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NAME@VERSION.
    image: ImageRef,
    /// Raw image file, or zstd/gzip/xz of one (detected by content).
    file: PathBuf,
    /// Overwrite an existing NAME@VERSION.
    #[arg(long)]
    replace: bool,
    /// Sign the manifest with this secret key.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    #[command(flatten)]
    hints: HintArgs,
    /// FastCDC average chunk size in bytes (for measurements; default 65536).
    #[arg(long, hide = true, default_value_t = 65536)]
    chunk_avg: u32,
    /// Refuse an image that is (or decompresses to) more than this: bytes, or with a K, M, G,
    /// T or P suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "64T", value_parser = crate::cli::size::parse_size)]
    max_image_size: u64,
    /// Refuse a compressed image that expands more than RATIO:1 after its first GiB (a
    /// decompression bomb); 0 turns the check off.
    #[arg(long, value_name = "RATIO", default_value_t = image_store::DecodeLimits::DEFAULT_MAX_RATIO)]
    max_expansion: u64,
    /// Skip the privacy audit (the image is recorded as not audited, and benches that require
    /// a clean image refuse it).
    #[arg(long)]
    no_audit: bool,
    /// Store the image with the free space of its ext4, NTFS and FAT filesystems zeroed
    /// (deleted files live on there); the manifest keeps the source's hashes too. Raw files only.
    #[arg(long)]
    scrub_free: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `tek image set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// NAME@VERSION.
    image: ImageRef,
    #[command(flatten)]
    hints: HintArgs,
    /// Re-sign the changed manifest with this secret key.
    #[arg(long, value_name = "FILE", conflicts_with = "unsign")]
    sign_key: Option<PathBuf>,
    /// Drop the signature of a signed manifest when changing it (otherwise refused).
    #[arg(long)]
    unsign: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Opens the depot's image store; a depot whose state root does not exist is refused
/// ([`agent::depot::StateRootMissing`]), never created (opening a store creates its
/// directories).
pub(crate) fn open_store(depot: &Depot) -> Result<Store> {
    if !depot.root().is_dir() {
        return Err(agent::depot::StateRootMissing {
            path: depot.root().to_path_buf(),
        }
        .into());
    }
    Store::open(depot.store())
        .with_context(|| format!("opening image store {}", depot.store().display()))
}

fn load_key(p: &Option<PathBuf>) -> Result<Option<SigningKey>> {
    p.as_deref()
        .map(|p| {
            SigningKey::load(p).with_context(|| format!("loading signing key {}", p.display()))
        })
        .transpose()
}

/// Runs a `tek image` subcommand.
pub fn run(depot: &Depot, cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Import(a) => import(depot, a),
        ImageCommand::Set(a) => set(depot, a),
        ImageCommand::Keygen { name, dir, json } => {
            let dir = dir.unwrap_or_else(|| depot.root().join("signing-keys"));
            let (sk, pk) = generate_keypair(&dir, &name)
                .with_context(|| format!("making key pair {name} in {}", dir.display()))?;
            let out = serde_json::json!({
                "key_id": name,
                "secret_key": sk,
                "public_key": pk,
                "trusted_keys": depot.trusted_keys(),
            });
            emit(json, &out, |_| {
                format!(
                    "secret key: {}\npublic key: {}\nto trust it: copy {} into {}\n",
                    sk.display(),
                    pk.display(),
                    pk.display(),
                    depot.trusted_keys().display()
                )
            })
        }
        ImageCommand::Sign { image, key, json } => {
            let store = open_store(depot)?;
            let k = load_key(&Some(key))?.expect("key given");
            store
                .sign(&image, &k)
                .with_context(|| format!("signing {image}"))?;
            let st = store
                .load(&image, depot.trusted_keys())
                .with_context(|| format!("checking the new signature of {image}"))?
                .signature;
            // Checked, not assumed: the manifest may have changed between signing and now.
            if let SignatureStatus::Invalid { reason } = &st {
                bail!("signing {image}: the new signature does not verify ({reason})");
            }
            let out = serde_json::json!({
                "image": image.to_string(), "key_id": k.key_id(), "signature": st,
            });
            emit(json, &out, |_| {
                format!("signed {image} with {}: {st}\n", k.key_id())
            })
        }
        ImageCommand::List { remote: None, json } => super::image_show::list(depot, json),
        ImageCommand::List {
            remote: Some(url),
            json,
        } => super::image_remote::list(&url, json),
        ImageCommand::Push { image, to, json } => {
            super::image_remote::push(depot, &image, &to, json)
        }
        ImageCommand::Pull { image, from, json } => {
            super::image_remote::pull(depot, &image, from.as_deref(), json)
        }
        ImageCommand::Show { image, json } => super::image_show::show(depot, &image, json),
        ImageCommand::Export { image, out, json } => {
            super::image_transfer::export(&open_store(depot)?, &image, &out, json)
        }
        ImageCommand::Rm {
            image,
            force,
            json,
            conn,
        } => super::image_rm::run(depot, &image, force, json, &conn),
        ImageCommand::Gc {
            dry_run,
            min_age,
            json,
        } => {
            let store = open_store(depot)?;
            let opts = GcOptions {
                dry_run,
                min_age: std::time::Duration::from_secs(min_age),
            };
            let r = store.gc(&opts).context("collecting garbage")?;
            if json {
                return print_json(&r);
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            println!(
                "{verb} {} ({}); kept {} referenced, {} recent (younger than cutoff), \
                 {} quarantined; {} running",
                count(r.removed, "chunk"),
                size(r.removed_bytes),
                r.referenced,
                r.kept_recent,
                r.quarantined,
                count(r.live_imports, "import")
            );
            Ok(())
        }
        ImageCommand::Verify {
            image,
            all,
            deep,
            require_signature,
            json,
        } => super::image_verify::verify(depot, image, all, deep, require_signature, json),
        ImageCommand::Accept {
            image,
            finding,
            reason,
            sign_key,
            unsign,
            json,
        } => {
            let key = load_key(&sign_key)?;
            super::image_audit::accept(depot, &image, &finding, &reason, key.as_ref(), unsign, json)
        }
        ImageCommand::Audit {
            target,
            deep,
            record,
            sign_key,
            unsign,
            json,
        } => {
            let key = load_key(&sign_key)?;
            let record = record.then_some(super::image_audit::Record {
                key: key.as_ref(),
                unsign,
            });
            super::image_audit::run(depot, &target, deep, record, json)
        }
        ImageCommand::Stats { json } => super::image_show::stats(depot, json),
    }
}

fn set(depot: &Depot, a: SetArgs) -> Result<()> {
    let store = open_store(depot)?;
    let key = load_key(&a.sign_key)?;
    let sign = match (&key, a.unsign) {
        (Some(k), _) => Resign::With(k),
        (None, true) => Resign::Unsign,
        (None, false) => Resign::Keep,
    };
    let done = store
        .set_hints(&a.image, |h| a.hints.apply(h.clone()), sign)
        .with_context(|| format!("setting hints of {}", a.image))?;
    let sig = store
        .load(&a.image, depot.trusted_keys())
        .with_context(|| format!("checking the signature of {}", a.image))?
        .signature;
    let text = match &done {
        SetHints::Unchanged => {
            let mut t = format!(
                "nothing to change: {} already has these hints (not rewritten; signature {sig})\n",
                a.image
            );
            if key.is_some() {
                t.push_str(&format!(
                    "to sign it as it is: tek image sign {} --key FILE\n",
                    a.image
                ));
            }
            t
        }
        SetHints::Updated {
            signed_by: Some(k), ..
        } => format!("updated {} (signed with {k}: {sig})\n", a.image),
        SetHints::Updated {
            signature_dropped: true,
            ..
        } => format!(
            "updated {} (signature removed: it is unsigned now; sign it again)\n",
            a.image
        ),
        SetHints::Updated { .. } => format!("updated {} (unsigned, as before)\n", a.image),
    };
    let out = serde_json::json!({
        "image": a.image.to_string(),
        "changed": !matches!(done, SetHints::Unchanged),
        "signature": sig,
    });
    emit(a.json, &out, |_| text)
}

fn import(depot: &Depot, a: ImportArgs) -> Result<()> {
    let store = open_store(depot)?;
    let key = load_key(&a.sign_key)?;
    let opts = ImportOptions {
        hints: a.hints.apply(Hints::default()),
        replace: a.replace,
        chunk_avg: a.chunk_avg,
        limits: image_store::DecodeLimits {
            max_size: a.max_image_size,
            max_ratio: a.max_expansion,
            ..Default::default()
        },
        audit: (!a.no_audit).then(image_store::audit::AuditOptions::default),
        scrub_free: a.scrub_free,
        ..ImportOptions::default()
    };
    // A replaced, signed version loses its signature when no key is given: say so.
    let was_signed = a.replace && store.signature_path(&a.image).exists();
    let raw = image_store::source::Source::open(&a.file)
        .map(|s| s.format() == image_store::source::SourceFormat::Raw)
        .unwrap_or(false);
    let r = super::image_transfer::with_import_bar(&a.file, raw, |progress| {
        let opts = ImportOptions { progress, ..opts };
        store.import(&a.image, &a.file, &opts, key.as_ref())
    })
    .with_context(|| format!("importing {} as {}", a.file.display(), a.image))?;
    super::image_parts::warn_bitlocker(&r.manifest);
    if a.json {
        return print_json(&serde_json::json!({
            "image": a.image.to_string(),
            "source_format": r.source_format.name(),
            "size_bytes": r.manifest.size,
            "sha256": r.manifest.sha256,
            "blake3": r.manifest.blake3,
            "chunks": r.chunks,
            "new_chunks": r.new_chunks,
            "new_stored_bytes": r.new_stored_bytes,
            "data_bytes": r.data_bytes,
            "hole_bytes": r.hole_bytes,
            "seconds": r.seconds,
            "gpt": r.manifest.gpt.is_some(),
            "signed_by": key.as_ref().map(|k| k.key_id().to_string()),
            "audit": r.manifest.audit,
            "scrubbed": r.manifest.scrubbed,
        }));
    }
    println!(
        "imported {} ({}, {}) in {:.1} s ({:.2} GB/s)",
        a.image,
        r.source_format.name(),
        size(r.manifest.size),
        r.seconds,
        r.manifest.size as f64 / r.seconds.max(1e-9) / 1e9
    );
    println!(
        "  {}, {} new ({} stored); data {}, holes {}",
        count(r.chunks, "chunk"),
        r.new_chunks,
        size(r.new_stored_bytes),
        size(r.data_bytes),
        size(r.hole_bytes)
    );
    println!(
        "  sha256 {}\n  blake3 {}",
        r.manifest.sha256, r.manifest.blake3
    );
    match &r.manifest.gpt {
        Some(g) => println!(
            "  GPT with {}",
            count(g.partitions.len() as u64, "partition")
        ),
        None => println!("  no valid GPT"),
    }
    if let Some(s) = &r.manifest.scrubbed {
        super::image_audit::print_scrubbed(s);
    }
    if let Some(audit) = &r.manifest.audit {
        super::image_audit::print_report(audit);
    }
    println!(
        "  audit: {}",
        super::image_audit::audit_line(&r.manifest.audit)
    );
    match key {
        Some(k) => println!("  signed with {}", k.key_id()),
        None if was_signed => println!(
            "  unsigned: the replaced version's signature was removed (sign it with `tek image \
             sign {} --key FILE`)",
            a.image
        ),
        None => println!("  unsigned"),
    }
    Ok(())
}
