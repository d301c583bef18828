//! `tek image list` and `tek image show`: what the library holds, with signature, audit
//! verdict and completeness, as text or `--json`.

use anyhow::{Context, Result};
use image_store::{Extent, ImageRef};

use agent::Depot;

use super::image::open_store;
use super::render::{count, print, print_json, size, when};
use super::table::Table;

pub(super) fn list(depot: &Depot, json: bool) -> Result<()> {
    let store = open_store(depot)?;
    let mut rows = Vec::new();
    let mut table = Table::new(&["IMAGE", "SIZE", "CREATED", "SIGNATURE", "AUDIT", "CHUNKS"])
        .right_aligned(&[1]);
    for r in store.list().context("listing images")? {
        // One unreadable manifest must not hide the others: show it as an error row.
        let li = match store.load(&r, depot.trusted_keys()) {
            Ok(li) => li,
            Err(e) => {
                table.row([
                    r.to_string(),
                    String::new(),
                    String::new(),
                    format!("ERROR: {e}"),
                ]);
                rows.push(serde_json::json!({
                    "image": r.to_string(),
                    "error": { "code": "unreadable", "message": e.to_string() },
                }));
                continue;
            }
        };
        let absent = store
            .absent_chunks(&li.manifest)
            .with_context(|| format!("checking the chunks of {r}"))?;
        let quarantined = absent.iter().filter(|a| a.quarantined).count();
        let audit = super::image_audit::audit_line(&li.manifest.audit);
        table.row([
            r.to_string(),
            size(li.manifest.size),
            when(&li.manifest.created),
            li.signature.to_string(),
            audit.clone(),
            chunks_note(&absent),
        ]);
        rows.push(serde_json::json!({
            "image": r.to_string(),
            "size_bytes": li.manifest.size,
            "created": li.manifest.created,
            "sha256": li.manifest.sha256,
            "signature": li.signature,
            "complete": absent.is_empty(),
            "chunks_missing": absent.len() - quarantined,
            "chunks_quarantined": quarantined,
            "audit": audit,
            "clean": li.manifest.audit.as_ref().is_some_and(|a| a.is_clean()),
        }));
    }
    if json {
        return print_json(&rows);
    }
    if table.is_empty() {
        return print("no images (add one with `tek image import`)\n");
    }
    print(&table.render())
}

/// `complete`, or `INCOMPLETE: ...` for an image that cannot be written.
fn chunks_note(absent: &[image_store::AbsentChunk]) -> String {
    if absent.is_empty() {
        return "complete".into();
    }
    let quarantined = absent.iter().filter(|a| a.quarantined).count();
    format!(
        "INCOMPLETE: {} missing, {quarantined} quarantined",
        count((absent.len() - quarantined) as u64, "chunk")
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
            "image": image.to_string(),
            "size_bytes": m.size,
            "created": m.created,
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
    println!("size:       {} ({} bytes)", size(m.size), m.size);
    println!("created:    {}", when(&m.created));
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
        "extents:    {} ({}, {} in holes), {} avg {} B",
        m.extents.len(),
        count(chunks as u64, "chunk"),
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

/// `tek image stats`: logical and stored bytes, chunks, dedup ratio.
pub(super) fn stats(depot: &Depot, json: bool) -> Result<()> {
    let s = open_store(depot)?
        .stats()
        .context("computing store statistics")?;
    if json {
        return print_json(&s);
    }
    println!("images:          {}", s.images);
    println!(
        "logical size:    {} ({} bytes)",
        size(s.logical_bytes),
        s.logical_bytes
    );
    println!(
        "data:            {} (not in holes, all images)",
        size(s.data_bytes)
    );
    println!(
        "unique data:     {} (distinct chunks)",
        size(s.unique_bytes)
    );
    println!(
        "stored:          {} ({} bytes)",
        size(s.stored_bytes),
        s.stored_bytes
    );
    println!("chunks:          {}", s.chunks);
    println!("quarantined:     {}", count(s.quarantined, "chunk"));
    println!("dedup ratio:     {:.2}", s.dedup_ratio);
    println!("logical/stored:  {:.2}", s.total_ratio);
    Ok(())
}
