//! `tek image list` and `tek image show`: what the library holds, with signature, audit
//! verdict and completeness, as text or `--json`.

use anyhow::{Context, Result};
use image_store::{Extent, ImageRef};

use agent::Depot;

use super::image::open_store;
use super::render::{print_json, size};

pub(super) fn list(depot: &Depot, json: bool) -> Result<()> {
    let store = open_store(depot)?;
    let mut rows = Vec::new();
    for r in store.list().context("listing images")? {
        // One unreadable manifest must not hide the others: show it as an error row.
        let li = match store.load(&r, depot.trusted_keys()) {
            Ok(li) => li,
            Err(e) => {
                if !json {
                    println!("{:<40} ERROR: {e}", r.to_string());
                }
                rows.push(serde_json::json!({ "image": r.to_string(), "error": e.to_string() }));
                continue;
            }
        };
        let absent = store
            .absent_chunks(&li.manifest)
            .with_context(|| format!("checking the chunks of {r}"))?;
        let quarantined = absent.iter().filter(|a| a.quarantined).count();
        rows.push(serde_json::json!({
            "image": r.to_string(),
            "size": li.manifest.size,
            "created": li.manifest.created,
            "sha256": li.manifest.sha256,
            "signature": li.signature,
            "complete": absent.is_empty(),
            "chunks_missing": absent.len() - quarantined,
            "chunks_quarantined": quarantined,
            "audit": super::image_audit::audit_line(&li.manifest.audit),
            "clean": li.manifest.audit.as_ref().is_some_and(|a| a.is_clean()),
        }));
        if !json {
            println!(
                "{:<40} {:>10}  {}  {}  audit: {}{}",
                r.to_string(),
                size(li.manifest.size),
                li.manifest.created,
                li.signature,
                super::image_audit::audit_line(&li.manifest.audit),
                incomplete_note(&absent)
            );
        }
    }
    if json {
        print_json(&rows)?;
    }
    Ok(())
}

/// `  INCOMPLETE: ...` for a list row whose image cannot be written, else nothing.
fn incomplete_note(absent: &[image_store::AbsentChunk]) -> String {
    if absent.is_empty() {
        return String::new();
    }
    let quarantined = absent.iter().filter(|a| a.quarantined).count();
    format!(
        "  INCOMPLETE: {} chunk(s) missing, {quarantined} quarantined",
        absent.len() - quarantined
    )
}

pub(super) fn show(depot: &Depot, image: &ImageRef, json: bool) -> Result<()> {
    let store = open_store(depot)?;
    let li = store
        .load(image, depot.trusted_keys())
        .with_context(|| format!("loading {image}"))?;
    let m = &li.manifest;
    let absent = store
        .absent_chunks(m)
        .with_context(|| format!("checking the chunks of {image}"))?;
    if json {
        return print_json(&serde_json::json!({
            "manifest": m,
            "manifest_hash": li.manifest_hash,
            "signature": li.signature,
            "complete": absent.is_empty(),
            "absent_chunks": absent,
        }));
    }
    let chunks = m
        .extents
        .iter()
        .filter(|e| matches!(e, Extent::Chunk { .. }))
        .count();
    let holes: u64 = m
        .extents
        .iter()
        .filter(|e| matches!(e, Extent::Hole { .. }))
        .map(|e| e.len())
        .sum();
    println!("image:      {image}");
    println!("size:       {} bytes ({})", m.size, size(m.size));
    println!("created:    {}", m.created);
    println!("sha256:     {}", m.sha256);
    println!("blake3:     {}", m.blake3);
    if let Some(s) = &m.scrubbed {
        super::image_audit::print_scrubbed(s);
    }
    println!("signature:  {}", li.signature);
    println!("manifest:   blake3 {}", li.manifest_hash);
    println!("audit:      {}", super::image_audit::audit_line(&m.audit));
    if let Some(a) = &m.audit {
        super::image_audit::print_report(a);
    }
    if absent.is_empty() {
        // A stat per chunk: whether their contents are right is `tek image verify`'s question.
        println!("chunks:     every chunk file is present (contents: tek image verify)");
    } else {
        println!(
            "chunks:     INCOMPLETE, cannot be written: {}",
            image_store::describe_absent(&absent)
        );
    }
    println!(
        "extents:    {} ({} chunks, {} in holes), {} avg {} B",
        m.extents.len(),
        chunks,
        size(holes),
        m.chunking.algorithm,
        m.chunking.avg
    );
    match &m.gpt {
        None => println!("gpt:        none (no valid GPT)"),
        Some(g) => {
            println!(
                "gpt:        disk {} ({}-byte sectors)",
                g.disk_guid, g.logical_sector_size
            );
            for p in &g.partitions {
                println!(
                    "  {:>3} {:<20} lba {:>10}..{:<10} type {} id {}",
                    p.number, p.name, p.first_lba, p.last_lba, p.type_guid, p.unique_guid
                );
                super::image_parts::print_filesystem(p);
            }
        }
    }
    let h = &m.hints;
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    println!(
        "hints:      data partition {}, data path {}, grow {}, randomize GUIDs {}",
        opt(&h.data_partition),
        opt(&h.data_path),
        opt(&h.grow_partition),
        h.randomize_guids
    );
    Ok(())
}
