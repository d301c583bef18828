//! `tek image verify`: every chunk of one image or of all (present, decompresses, hashes right;
//! `--deep` also the whole-image hashes), plus the signature policy. One line per image says
//! what was checked, a chunk shared with an earlier image of the run is read once and said so,
//! and the last line names every image that failed and why.

use anyhow::{Context, Result, bail};
use image_store::{CheckedChunks, ImageRef, SignatureStatus};

use super::image::open_store;
use super::render::{count, print_json};
use agent::Depot;
use agent::errors::Chain;

/// Runs `tek image verify`.
pub(super) fn verify(
    depot: &Depot,
    image: Option<ImageRef>,
    all: bool,
    deep: bool,
    require_signature: bool,
    json: bool,
) -> Result<()> {
    let store = open_store(depot)?;
    let images = if all {
        store.list().context("listing images")?
    } else {
        vec![image.expect("clap requires an image without --all")]
    };
    if images.is_empty() && !json {
        println!("no images in the store: nothing verified");
    }
    let mut checked = CheckedChunks::new();
    let mut reports = Vec::new();
    // Each failed image with why, for the final line: every one is named.
    let mut failed: Vec<String> = Vec::new();
    for r in &images {
        // One unreadable manifest fails that image, not the run.
        let res = store
            .load(r, depot.trusted_keys())
            .with_context(|| format!("loading {r}"))
            .and_then(|li| {
                let rep = store
                    .verify(r, deep, &mut checked)
                    .with_context(|| format!("verifying {r}"))?;
                Ok((li.signature, rep))
            });
        let (sig, rep) = match res {
            Ok(v) => v,
            Err(e) => {
                if !json {
                    println!("{r}: ERROR: {}", Chain(&e));
                }
                failed.push(format!("{r} ({})", Chain(&e)));
                reports.push(serde_json::json!({
                    "image": r.to_string(), "ok": false,
                    "error": { "code": "unreadable", "message": Chain(&e).to_string() },
                }));
                continue;
            }
        };
        let mut why = Vec::new();
        if !rep.bad_chunks.is_empty() {
            why.push(format!(
                "{} bad",
                count(rep.bad_chunks.len() as u64, "chunk")
            ));
        }
        if !rep.hash_errors.is_empty() {
            why.push("whole-image hashes differ".to_string());
        }
        // A tampered manifest always fails; a missing or untrusted signature only on request.
        match &sig {
            SignatureStatus::Invalid { .. } => why.push(format!("signature {sig}")),
            s if require_signature && !s.is_valid() => {
                why.push(format!("signature {sig}, a valid one is required"))
            }
            _ => {}
        }
        let ok = why.is_empty();
        if !json {
            let content = if rep.ok() {
                "content OK"
            } else {
                "content BAD"
            };
            let verdict = if ok { "OK" } else { "FAILED" };
            println!(
                "{r}: {verdict}: {content} ({}); signature {sig}",
                rep.checked_summary()
            );
            for b in rep.bad_chunks.iter().chain(&rep.hash_errors) {
                println!("  {b}");
            }
        }
        if !ok {
            failed.push(format!("{r} ({})", why.join(", ")));
        }
        reports.push(serde_json::json!({
            "report": rep, "signature": sig, "ok": ok, "failures": why,
        }));
    }
    if json {
        print_json(&reports)?;
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} failed verification: {}",
            failed.len(),
            count(images.len() as u64, "image"),
            failed.join("; ")
        );
    }
    Ok(())
}
