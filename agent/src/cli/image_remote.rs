//! `tek image push`, `tek image pull` and `tek image list --remote`: the shared image library
//! (`image_library`). S3 endpoint, region and credentials come from the standard `AWS_*`
//! variables; nothing here prints them.

use anyhow::{Context, Result};
use image_library::{Pull, PullFailed, PushProgress, Remote, RemoteOptions, RemoteUrl, S3Settings};
use image_store::ImageRef;

use agent::Depot;

use super::image::open_store;
use super::render::{print_json, size};

fn open_remote(url: &str) -> Result<Remote> {
    let url = RemoteUrl::parse(url)?;
    let opts = RemoteOptions {
        s3: S3Settings::from_env(),
        ..RemoteOptions::default()
    };
    Remote::open(&url, &opts).with_context(|| format!("opening the library at {url}"))
}

/// `tek image push NAME@VERSION --to URL`.
pub fn push(depot: &Depot, image: &ImageRef, to: &str, json: bool) -> Result<()> {
    let store = open_store(depot)?;
    let remote = open_remote(to)?;
    // A bar on a terminal only, never beside --json's output, and made once its length is
    // known and not zero (a 0 B/0 B bar would look finished).
    let bar = std::sync::OnceLock::new();
    let progress = |p| match p {
        PushProgress::Missing { chunks, bytes } => {
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
    let r = r.with_context(|| format!("pushing {image} to {}", remote.url()))?;
    if json {
        return print_json(&r);
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
    println!(
        "pushed {image} to {}: {} of {} chunks uploaded ({}){packs}, {} already there; \
         signature and manifest last ({:.1} s, {} requests)",
        remote.url(),
        r.uploaded,
        r.chunks,
        size(r.uploaded_bytes),
        r.present,
        r.seconds,
        r.requests
    );
    Ok(())
}

/// `tek image pull NAME@VERSION --from URL`.
pub fn pull(depot: &Depot, image: &ImageRef, from: &str, json: bool) -> Result<()> {
    let store = open_store(depot)?;
    let remote = open_remote(from)?;
    let context = || format!("pulling {image} from {}", remote.url());
    let started = Pull::start(&remote, image, &store, depot.trusted_keys());
    let p = started.map_err(anyhow::Error::new).with_context(context)?;
    // A bar over the image bytes still to fetch, on a terminal only (none for --json).
    let b = match json {
        true => indicatif::ProgressBar::hidden(),
        false => super::image_transfer::bar(Some(p.wanted_bytes()), "pulling"),
    };
    let r = p.run(&|n| b.set_position(n));
    b.finish_and_clear();
    let r = r
        .map_err(|e: PullFailed| anyhow::Error::new(e))
        .with_context(context)?;
    if json {
        return print_json(&r);
    }
    if r.fetched == 0 && r.was_local {
        println!(
            "{image} is already in the store (all {} chunks present)",
            r.chunks
        );
        return Ok(());
    }
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
    Ok(())
}

/// `tek image list --remote URL`.
pub fn list(url: &str, json: bool) -> Result<()> {
    let remote = open_remote(url)?;
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
