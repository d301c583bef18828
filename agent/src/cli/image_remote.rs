//! `tek image push`, `tek image pull` and `tek image list --remote`: the shared image library
//! (`image_library`). S3 endpoint, region and credentials come from the standard `AWS_*`
//! variables; nothing here prints them.

use agent::library::evict::Eviction;
use anyhow::{Context, Result, bail};
use image_library::{Pull, PullFailed, PushProgress, Remote, RemoteOptions, RemoteUrl, S3Settings};
use image_store::ImageRef;

use agent::Depot;

use super::image::open_store;
use super::render::{print_json, size};

/// A library opened for a command: the bench's own (`[library]` of the agent's config, with its
/// credentials, endpoint, region and cache limit) when `url` is None or names it, else `url`
/// with the `AWS_*` settings.
struct Library {
    remote: Remote,
    /// The bench's `cache_max_bytes`, when this is the bench's library.
    cache_max_bytes: Option<u64>,
}

fn open_remote(url: Option<&str>) -> Result<Library> {
    let cfg = agent::settings::command_config()?;
    let own = cfg.library.url.as_deref().map(RemoteUrl::parse).transpose();
    let own = own.context("library.url in the agent's config")?;
    let given = url.map(RemoteUrl::parse).transpose()?;
    let is_own = match (&given, &own) {
        (None, Some(_)) => true,
        (Some(g), Some(o)) => g.to_string() == o.to_string(),
        (Some(_), None) => false,
        (None, None) => bail!(
            "no library to use: give its URL, or set [library] url in the agent's config \
             (TEK_CONFIG, else /etc/tek/agent.toml)"
        ),
    };
    if is_own {
        cfg.library.validate()?;
        let remote = cfg.library.open()?.context("library.url is not set")?;
        return Ok(Library {
            remote,
            cache_max_bytes: cfg.library.cache_max_bytes,
        });
    }
    let url = given.expect("a URL given when it is not the bench's library");
    let opts = RemoteOptions {
        s3: S3Settings::from_env(),
        ..RemoteOptions::default()
    };
    // Its error names the URL already ("setting up the client for URL: ...").
    let remote = Remote::open(&url, &opts)?;
    Ok(Library {
        remote,
        cache_max_bytes: None,
    })
}

/// `tek image push NAME@VERSION --to URL`.
pub fn push(depot: &Depot, image: &ImageRef, to: &str, json: bool) -> Result<()> {
    let store = open_store(depot)?;
    let remote = open_remote(Some(to))?.remote;
    // A bar on a terminal only, never beside --json's output, and made once its length is
    // known and not zero (a 0 B/0 B bar would look finished).
    let bar = std::sync::OnceLock::new();
    // The check of what the remote already holds (format 2): its own bar, gone when it ends.
    let check_bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    let progress = |p| match p {
        PushProgress::Checking { chunks, bytes } => {
            let b = match json || bytes == 0 {
                true => indicatif::ProgressBar::hidden(),
                false => super::image_transfer::bar(Some(bytes), "checking"),
            };
            b.set_message(format!(
                "{chunks} chunks the remote has (read back, BLAKE3-checked)"
            ));
            if let Ok(mut c) = check_bar.lock()
                && let Some(old) = c.replace(b)
            {
                old.finish_and_clear();
            }
        }
        PushProgress::Checked(n) => {
            if let Ok(c) = check_bar.lock()
                && let Some(b) = c.as_ref()
            {
                b.set_position(n);
            }
        }
        PushProgress::Missing { chunks, bytes } => {
            if let Some(c) = check_bar.lock().ok().and_then(|mut c| c.take()) {
                c.finish_and_clear();
            }
            let b = bar.get_or_init(|| match json || chunks == 0 {
                true => indicatif::ProgressBar::hidden(),
                false => super::image_transfer::bar(Some(bytes), "pushing"),
            });
            b.set_message(format!("{chunks} chunks the remote lacks"));
        }
        PushProgress::Uploaded(n) => bar.get().into_iter().for_each(|b| b.set_position(n)),
        PushProgress::Committing => bar
            .get()
            .into_iter()
            .for_each(|b| b.set_message("signature, manifest, index")),
    };
    let r =
        image_library::push_with_progress(&store, image, &remote, depot.trusted_keys(), &progress);
    if let Some(b) = bar.get() {
        b.finish_and_clear();
    }
    if let Some(c) = check_bar.lock().ok().and_then(|mut c| c.take()) {
        c.finish_and_clear();
    }
    let r = r.with_context(|| format!("pushing {image} to {}", remote.url()))?;
    if json {
        return print_json(&r);
    }
    // Each pack whose bytes did not hold what its id list says: its chunks were not reused.
    for line in &r.untrusted_packs {
        println!("{line}");
    }
    if r.was_remote && r.uploaded == 0 {
        println!(
            "{image} is already in {} (all {} chunks there)",
            remote.url(),
            r.chunks
        );
        return Ok(());
    }
    let packs = match r.packs {
        0 => String::new(),
        1 => " in 1 pack file".to_string(),
        n => format!(" in {n} pack files"),
    };
    // Both formats read back and check the chunks they reuse.
    let there = match r.present {
        0 => "0 already there".to_string(),
        n => format!("{n} already there (read back and checked)"),
    };
    println!(
        "pushed {image} to {}: {} of {} chunks uploaded ({}){packs}, {there}; \
         manifest and signature last ({:.1} s, {} requests)",
        remote.url(),
        r.uploaded,
        r.chunks,
        size(r.uploaded_bytes),
        r.seconds,
        r.requests
    );
    Ok(())
}

/// `tek image pull NAME@VERSION [--from URL]`.
pub fn pull(depot: &Depot, image: &ImageRef, from: Option<&str>, json: bool) -> Result<()> {
    let store = open_store(depot)?;
    let Library {
        remote,
        cache_max_bytes,
    } = open_remote(from)?;
    let context = || format!("pulling {image} from {}", remote.url());
    let started = Pull::start(&remote, image, &store, depot.trusted_keys());
    let p = started.map_err(anyhow::Error::new).with_context(context)?;
    // A bar over the image bytes still to fetch, on a terminal only (none for --json).
    let b = match json {
        true => indicatif::ProgressBar::hidden(),
        false => super::image_transfer::bar(Some(p.wanted_bytes()), "pulling"),
    };
    let stop = catch_signals(p.canceller())?;
    let r = p.run(&|n| b.set_position(n));
    b.finish_and_clear();
    if let Err(e) = &r
        && let image_library::LibraryError::Interrupted { .. } = &*e.error
    {
        // The chunks that arrived are kept (the error says how many): exit as the signal
        // would have, 128 + its number.
        let code = stop.code().unwrap_or(super::failure::EXIT_FAILED);
        let e = anyhow::Error::new(r.expect_err("an interrupted pull")).context(context());
        super::failure::report(&e, json);
        std::process::exit(i32::from(code));
    }
    let r = r
        .map_err(|e: PullFailed| anyhow::Error::new(e))
        .with_context(context)?;
    // The bench's cache limit, as after a job's pull: least recently used images go, never
    // one an unfinished job uses or the one just pulled.
    let eviction = match cache_max_bytes {
        Some(max) => {
            let dir = depot.audit();
            let log = client_data::AuditLog::open(&dir, &depot.keys())
                .with_context(|| format!("opening audit log in {}", dir.display()))?;
            let e = agent::library::evict::after_pull(&store, depot, &remote, max, image, &log);
            Some(e.with_context(|| {
                format!("{image} was pulled; keeping the cache under {}", size(max))
            })?)
        }
        None => None,
    };
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            pull: &'a image_library::PullReport,
            #[serde(skip_serializing_if = "Option::is_none")]
            eviction: Option<&'a Eviction>,
        }
        return print_json(&Out {
            pull: &r,
            eviction: eviction.as_ref(),
        });
    }
    if r.fetched == 0 && r.was_local {
        println!(
            "{image} is already in the store (all {} chunks present)",
            r.chunks
        );
    } else {
        print_pulled(&r, &remote);
    }
    if let (Some(e), Some(max)) = (&eviction, cache_max_bytes) {
        print_eviction(e, max);
    }
    Ok(())
}

/// The signal that stopped a pull, once one arrived.
#[derive(Clone, Default)]
struct Stopped(std::sync::Arc<std::sync::Mutex<Option<u8>>>);

impl Stopped {
    /// The exit status the signal stands for (130 for SIGINT, 143 for SIGTERM).
    fn code(&self) -> Option<u8> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Longest a stopped pull may take to check and keep the chunks that arrived.
const KEEP_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// From here on SIGINT and SIGTERM stop the pull (`cancel`) instead of killing it, so the
/// verified chunks that arrived since the last kept batch are kept for the next pull. If that
/// takes longer than [`KEEP_WITHIN`], the process exits anyway.
fn catch_signals(cancel: image_library::Cancel) -> Result<Stopped> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the signal handler")?;
    let (mut int, mut term) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt()).context("catching SIGINT")?,
            signal(SignalKind::terminate()).context("catching SIGTERM")?,
        )
    };
    let stopped = Stopped::default();
    let seen = stopped.clone();
    std::thread::Builder::new()
        .name("tek-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let (name, code) = tokio::select! {
                    _ = int.recv() => ("SIGINT", 130),
                    _ = term.recv() => ("SIGTERM", 143),
                };
                *seen.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
                cancel.cancel(name);
                super::interrupt::say(&format!(
                    "tek image pull: {name}: stopping; keeping the chunks that arrived..."
                ));
                tokio::time::sleep(KEEP_WITHIN).await;
                super::interrupt::say(&format!(
                    "tek image pull: {name}: the chunks that arrived were not all kept within \
                     {} s; exiting (the next pull fetches what is missing)",
                    KEEP_WITHIN.as_secs()
                ));
                std::process::exit(i32::from(code));
            })
        })
        .context("starting the signal thread")?;
    Ok(stopped)
}

fn print_eviction(e: &Eviction, max: u64) {
    for v in &e.evicted {
        println!(
            "evicted {} from the cache (least recently used; {} freed)",
            v.image,
            size(v.freed_bytes)
        );
    }
    if e.after_bytes > max {
        println!(
            "the cache holds {}, over its limit of {}; kept: {}",
            size(e.after_bytes),
            size(max),
            e.kept.join(", ")
        );
    }
}

fn print_pulled(r: &image_library::PullReport, remote: &Remote) {
    let image = &r.image;
    println!(
        "pulled {image} from {}: {} of {} chunks fetched and verified ({}), {} already in the \
         store; signature {} ({:.1} s, {} requests)",
        remote.url(),
        r.fetched,
        r.chunks,
        size(r.fetched_bytes),
        r.present,
        r.signature,
        r.seconds,
        r.requests
    );
}

/// `tek image list --remote [URL]` (no URL: the bench's library).
pub fn list(url: &str, json: bool) -> Result<()> {
    let remote = open_remote(Some(url).filter(|u| !u.is_empty()))?.remote;
    let images = image_library::list(&remote)
        .with_context(|| format!("listing the library at {}", remote.url()))?;
    if json {
        return print_json(&images);
    }
    if images.is_empty() {
        println!("no images in {}", remote.url());
    }
    for i in &images {
        println!("{}", i.image);
    }
    Ok(())
}
