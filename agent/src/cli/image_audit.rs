//! `tek image audit FILE | NAME@VERSION`: the privacy audit of an image (nothing mounted; see
//! `image_store::audit`). Prints one line per partition and per finding, and the verdict; exits
//! non-zero when the image is not clean. Matched personal text is never printed (paths are
//! masked).

use std::path::Path;

use anyhow::{Context, Result, bail};
use image_store::ImageRef;
use image_store::audit::{AuditOptions, AuditReport, PartitionStatus};

use super::image::open_store;
use super::render::print_json;
use agent::Depot;

/// `--record`: how the re-audited manifest is signed.
pub(super) struct Record<'a> {
    /// Re-sign with this key.
    pub key: Option<&'a image_store::SigningKey>,
    /// Or drop the signature.
    pub unsign: bool,
}

/// Runs `tek image audit`.
pub(super) fn run(
    depot: &Depot,
    target: &str,
    deep: bool,
    record: Option<Record<'_>>,
    json: bool,
) -> Result<()> {
    let opts = AuditOptions {
        deep,
        ..AuditOptions::default()
    };
    let path = Path::new(target);
    let mut recorded = None;
    let report = if path.exists() {
        if record.is_some() {
            bail!("--record needs NAME@VERSION: {target} is a file, which has no manifest");
        }
        image_store::audit::audit_file(path, &opts)
            .with_context(|| format!("auditing {}", path.display()))?
    } else {
        let image: ImageRef = target
            .parse()
            .with_context(|| format!("{target} is neither a file nor NAME@VERSION"))?;
        let store = open_store(depot)?;
        match record {
            None => store
                .audit(&image, &opts)
                .with_context(|| format!("auditing {image}"))?,
            Some(r) => {
                let report = record_audit(depot, &store, &image, &opts, &r)?;
                recorded = Some(match r.key {
                    Some(k) => format!("signed with {}", k.key_id()),
                    None => "unsigned".into(),
                });
                report
            }
        }
    };
    if json {
        print_json(&report)?;
    } else {
        print_report(&report);
        if let Some(signed) = recorded {
            println!("recorded in the manifest of {target} ({signed}) and in the audit log");
        }
    }
    if !report.is_clean() {
        bail!("{target}: {}", report.verdict_line());
    }
    Ok(())
}

/// `--record`: audits the stored image again, records the verdict in its manifest, then in the
/// audit log (opened first, so a depot whose log cannot be written refuses before the manifest
/// changes).
fn record_audit(
    depot: &Depot,
    store: &image_store::Store,
    image: &ImageRef,
    opts: &AuditOptions,
    r: &Record<'_>,
) -> Result<AuditReport> {
    let dir = depot.audit();
    let log = client_data::AuditLog::open(&dir, &depot.keys())
        .with_context(|| format!("opening audit log in {}", dir.display()))?;
    let report = store
        .record_audit(image, opts, resign(r.key, r.unsign))
        .with_context(|| format!("recording a new audit of {image}"))?;
    log.append(client_data::AuditEvent::ImageAuditRecorded {
        image: image.name.clone(),
        version: image.version.clone(),
        rules_version: report.rules_version,
        clean: report.is_clean(),
        findings: report.findings.len() as u64,
    })
    .with_context(|| format!("recording the new audit of {image} in the audit log"))?;
    Ok(report)
}

/// How an edited manifest is signed: with `key`, unsigned on request, else as it was (which
/// the store refuses for a signed image).
fn resign(key: Option<&image_store::SigningKey>, unsign: bool) -> image_store::Resign<'_> {
    match (key, unsign) {
        (Some(k), _) => image_store::Resign::With(k),
        (None, true) => image_store::Resign::Unsign,
        (None, false) => image_store::Resign::Keep,
    }
}

/// Runs `tek image accept`.
pub(super) fn accept(
    depot: &Depot,
    image: &ImageRef,
    finding: &str,
    reason: &str,
    key: Option<&image_store::SigningKey>,
    unsign: bool,
    json: bool,
) -> Result<()> {
    if reason.is_empty()
        || reason.len() > 64
        || !reason
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("the reason code must be 1-64 letters, digits or '-' (got {reason})");
    }
    let sign = resign(key, unsign);
    // The audit log first opened, so a depot whose log cannot be written refuses before the
    // manifest changes; the entry follows the committed edit.
    let dir = depot.audit();
    let log = client_data::AuditLog::open(&dir, &depot.keys())
        .with_context(|| format!("opening audit log in {}", dir.display()))?;
    let report = open_store(depot)?
        .accept_finding(image, finding, reason, sign)
        .with_context(|| format!("accepting finding {finding} of {image}"))?;
    let rule = report
        .findings
        .iter()
        .find(|f| f.id == finding)
        .map(|f| f.rule.clone())
        .unwrap_or_default();
    log.append(client_data::AuditEvent::ImageFindingAccepted {
        image: image.name.clone(),
        version: image.version.clone(),
        finding: finding.to_string(),
        rule,
        reason: reason.to_string(),
    })
    .with_context(|| format!("recording the acceptance of {finding} in the audit log"))?;
    let signed = match key {
        Some(k) => format!("signed with {}", k.key_id()),
        None => "unsigned".into(),
    };
    let out = serde_json::json!({
        "image": image.to_string(),
        "finding": finding,
        "reason": reason,
        "signed_by": key.map(|k| k.key_id().to_string()),
        "audit": report.verdict_line(),
        "clean": report.is_clean(),
    });
    super::render::emit(json, &out, |_| {
        format!(
            "accepted finding {finding} of {image} ({reason}); {signed}; recorded in the audit \
             log; audit: {}\n",
            report.verdict_line()
        )
    })
}

/// A manifest's audit in one line: the verdict, or "not audited".
pub(crate) fn audit_line(a: &Option<AuditReport>) -> String {
    match a {
        None => "not audited".into(),
        Some(r) => r.verdict_line(),
    }
}

/// What `--scrub-free` did, and the source's hashes.
pub(crate) fn print_scrubbed(s: &image_store::scrub::Scrubbed) {
    println!(
        "  free space zeroed: {} ({} of it held data); source before scrubbing: sha256 {}, \
         blake3 {}",
        image_store::audit::mib(s.free_bytes),
        image_store::audit::mib(s.nonzero_bytes),
        s.source_sha256,
        s.source_blake3
    );
}

/// The human-readable audit: partitions, findings, verdict.
pub(crate) fn print_report(r: &AuditReport) {
    for p in &r.partitions {
        let what = match &p.status {
            PartitionStatus::Audited { entries } => format!("audited, {entries} entries"),
            PartitionStatus::NotAudited { reason } => format!("not read: {reason}"),
            PartitionStatus::Blank { bytes } => {
                format!(
                    "no filesystem; all {} read zero",
                    image_store::audit::mib(*bytes)
                )
            }
            PartitionStatus::Error { reason } => format!("AUDIT FAILED: {reason}"),
        };
        let free = match &p.free {
            Some(f) => format!(
                "; free {}, of it non-zero {}",
                image_store::audit::mib(f.free_bytes),
                image_store::audit::mib(f.nonzero_bytes)
            ),
            None => String::new(),
        };
        println!(
            "partition {} \"{}\" ({}): {what}{free}",
            p.number, p.name, p.filesystem
        );
    }
    if let Some(o) = &r.outside {
        println!(
            "outside the partitions: {}, of it non-zero {}",
            image_store::audit::mib(o.free_bytes),
            image_store::audit::mib(o.nonzero_bytes)
        );
    }
    for f in &r.findings {
        let accepted = if r.accepted.iter().any(|a| a.finding == f.id) {
            " (accepted)"
        } else {
            ""
        };
        println!(
            "  {} {:8} p{} {} {}: {}{accepted}",
            f.id,
            f.severity.as_str(),
            f.partition,
            f.rule,
            f.path,
            f.detail
        );
    }
    println!("verdict: {}", r.verdict_line());
}
