//! `tek audit ...`: the tamper-evident audit log (verify, show, head, breach-report).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use std::io::Write;

use client_data::{
    AuditEvent, AuditFilter, AuditHead, AuditLog, AuditPublicKey, AuditRecord, BreachReport,
};

use agent::Depot;

/// `tek audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, every signed checkpoint and the signed head; names the first bad
    /// entry, or the truncation.
    Verify {
        /// Check the signatures against this public key (a copy kept off the machine) instead
        /// of the depot's `keys/audit.pub`.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the log, or the entries a window, a client or event kinds select.
    #[command(
        after_help = "Examples:\n  tek audit show --since 2026-03-01 --until 2026-03-07 --client C-1042\n  tek audit show --event wipe --event withdraw -n 20"
    )]
    Show {
        /// Only entries at or after T (RFC 3339, or YYYY-MM-DD for the start of that day, UTC).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Only entries at or before T (RFC 3339, or YYYY-MM-DD for the whole of that day, UTC).
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// Only entries about this client (naming it or one of its datasets).
        #[arg(long, value_name = "ID", value_parser = super::data::ident("client id"))]
        client: Option<String>,
        /// Only entries of this kind (repeat, or separate with commas).
        #[arg(long, value_name = "KIND", value_delimiter = ',',
              value_parser = clap::builder::PossibleValuesParser::new(client_data::EVENT_KINDS))]
        event: Vec<String>,
        /// Only the last N selected entries.
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Print JSON lines as stored.
        #[arg(long)]
        json: bool,
    },
    /// Print the current chain head and the last signed checkpoint (keep them off the machine).
    Head {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What client data was held, where it went, and what was wiped in a time window.
    BreachReport {
        /// Window start (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "T1")]
        from: String,
        /// Window end (RFC 3339 or YYYY-MM-DD, inclusive).
        #[arg(long, value_name = "T2")]
        to: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `tek audit` subcommand.
pub fn run(depot: &Depot, cmd: AuditCommand) -> Result<()> {
    let dir = depot.audit();
    let log = AuditLog::open(&dir, &depot.keys())
        .with_context(|| format!("opening audit log in {}", dir.display()))?;
    match cmd {
        AuditCommand::Verify { public_key, json } => {
            let key = public_key
                .as_deref()
                .map(|p| {
                    AuditPublicKey::load(p)
                        .with_context(|| format!("reading public key {}", p.display()))
                })
                .transpose()?;
            let head = log
                .verify_with(key.as_ref())
                .context("verifying audit log")?;
            if json {
                super::render::print_json(&head)?;
            } else {
                let signed_head = match &head.signed_head {
                    Some(h) => format!("signed head verified (seq {})", h.seq),
                    None if head.entries == 0 => "empty".into(),
                    None => {
                        "no signed head yet (a format 1 log, signed from its next entry)".into()
                    }
                };
                let checkpoints = match &head.checkpoint {
                    Some(c) => format!(
                        "{} signed checkpoints verified (last at seq {})",
                        head.checkpoints, c.seq
                    ),
                    None => "no checkpoint yet".into(),
                };
                println!(
                    "audit log OK: {} entries, head {}; {signed_head}; {checkpoints}",
                    head.entries, head.hash
                );
                print_unsigned(&head);
            }
        }
        AuditCommand::Show {
            since,
            until,
            client,
            event,
            lines,
            json,
        } => show(&log, since, until, client, event, lines, json)?,
        AuditCommand::Head { json } => {
            let head = log.head().context("reading audit log head")?;
            if json {
                super::render::print_json(&head)?;
            } else {
                match head.entries {
                    0 => println!("head: 0 entries (empty log)"),
                    n => println!(
                        "head: {n} entries, seq {} hash {} at {}",
                        n - 1,
                        head.hash,
                        head.time.as_deref().unwrap_or("-")
                    ),
                }
                if let Some(h) = &head.signed_head {
                    println!(
                        "signed head: seq {} hash {} signed {}",
                        h.seq, h.hash, h.time
                    );
                }
                match &head.checkpoint {
                    Some(c) => println!(
                        "checkpoint: seq {} hash {} signed {} by audit key {}",
                        c.seq, c.hash, c.time, c.public_key
                    ),
                    None => println!("checkpoint: none yet"),
                }
                print_unsigned(&head);
            }
        }
        AuditCommand::BreachReport { from, to, json } => {
            let f = client_data::breach::parse_bound(&from, false).context("parsing --from")?;
            let t = client_data::breach::parse_bound(&to, true).context("parsing --to")?;
            let report = BreachReport::build(&log, f, t).context("building breach report")?;
            log.append(AuditEvent::BreachReport {
                from: report.from.clone(),
                to: report.to.clone(),
                clients: report.clients.len() as u64,
                datasets: report.dataset_count(),
            })
            .context("recording the breach report in the audit log")?;
            if json {
                super::render::print_json(&report)?;
            } else {
                println!(
                    "breach report {} .. {} ({} audit entries read)",
                    report.from, report.to, report.audit_entries
                );
                for c in &report.clients {
                    println!("client {}:", c.client);
                    for d in &c.datasets {
                        println!(
                            "  dataset {} ticket {}: {} entries, {} bytes, encrypted={}, state {}, held in {} from {}{}",
                            d.dataset,
                            d.ticket,
                            d.entries,
                            d.bytes,
                            d.encrypted,
                            d.state,
                            d.held_in,
                            d.held_from,
                            d.held_until
                                .as_ref()
                                .map(|u| format!(" until {u}"))
                                .unwrap_or_default()
                        );
                        for w in &d.written_to {
                            println!("    written to {w}");
                        }
                    }
                    for w in &c.wipes {
                        println!("  wiped {w}");
                    }
                    for w in &c.withdrawals {
                        println!("  {w}");
                    }
                }
                if report.clients.is_empty() {
                    println!("no client data was held in this window");
                }
                print_key_backups(&report.key_backups);
            }
        }
    }
    Ok(())
}

/// `tek audit show`: the selected entries in log order (the last `lines` of them when given);
/// an empty selection says so on stderr, so a pipe reads nothing.
fn show(
    log: &AuditLog,
    since: Option<String>,
    until: Option<String>,
    client: Option<String>,
    event: Vec<String>,
    lines: Option<usize>,
    json: bool,
) -> Result<()> {
    let bound = |s: Option<String>, end: bool, what: &str| {
        s.map(|s| client_data::breach::parse_bound(&s, end))
            .transpose()
            .with_context(|| format!("parsing {what}"))
    };
    let windowed = since.is_some() || until.is_some();
    let mut filter = AuditFilter::new(
        bound(since, false, "--since")?,
        bound(until, true, "--until")?,
        client,
        event,
    )
    .context("choosing audit entries")?;
    let mut tail = std::collections::VecDeque::new();
    let mut shown = 0u64;
    let mut out = std::io::stdout().lock();
    for rec in log.records().context("reading audit log")? {
        let rec = rec.context("reading audit log")?;
        if !filter.keep(&rec) {
            continue;
        }
        shown += 1;
        if shown == 1 && !json && lines.is_none() {
            writeln!(out, "{SHOW_HEADER}").context("writing output")?;
        }
        let line = audit_line(&rec, json)?;
        match lines {
            Some(n) => {
                tail.push_back(line);
                if tail.len() > n {
                    tail.pop_front();
                }
            }
            None => writeln!(out, "{line}").context("writing output")?,
        }
    }
    if !tail.is_empty() && !json {
        writeln!(out, "{SHOW_HEADER}").context("writing output")?;
    }
    for line in tail {
        writeln!(out, "{line}").context("writing output")?;
    }
    out.flush().context("writing output")?;
    if shown == 0 {
        let what = if windowed || filter.client.is_some() || !filter.events.is_empty() {
            "no events match"
        } else {
            "no events: the audit log is empty"
        };
        eprintln!("{what}");
    }
    Ok(())
}

/// One entry as `show` prints it: the stored JSON (with its hash), or seq, time, kind and
/// fields.
fn audit_line(rec: &AuditRecord, json: bool) -> Result<String> {
    if json {
        let mut v = serde_json::to_value(rec).context("serializing")?;
        v["hash"] = serde_json::Value::String(rec.hash.clone());
        return Ok(v.to_string());
    }
    let mut v = serde_json::to_value(&rec.event).context("serializing")?;
    let kind = rec.event.kind();
    if let Some(o) = v.as_object_mut() {
        o.remove("event");
    }
    Ok(format!(
        "{:>6}  {:<23}  {:<18}  {}",
        rec.seq,
        super::render::when(&rec.time),
        kind,
        details(&v)
    ))
}

/// The header over `show`'s lines, in the same columns (the log streams: no table that waits
/// for its widest row).
const SHOW_HEADER: &str = "   SEQ  TIME                     EVENT               DETAILS";

/// An entry's fields as people read them: `client c-1, entries 12, bytes 3.1 MiB`; sizes in
/// units, times to the second, nothing null.
fn details(v: &serde_json::Value) -> String {
    use serde_json::Value;
    let Some(o) = v.as_object() else {
        return v.to_string();
    };
    let text = |k: &str, x: &Value| -> Option<String> {
        Some(match x {
            Value::Null => return None,
            Value::String(s) => super::render::when(s),
            Value::Number(n) if k == "bytes" || k.ends_with("_bytes") => n
                .as_u64()
                .map(super::render::size)
                .unwrap_or_else(|| n.to_string()),
            Value::Array(a) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        })
    };
    o.iter()
        .filter_map(|(k, x)| text(k, x).map(|t| format!("{} {t}", k.replace('_', " "))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The breach report's key backups: each one holds the dataset keys that make the depot's
/// backed-up ciphertext readable, so a breach of the backups during the window is a breach of
/// the datasets whose keys it holds.
fn print_key_backups(backups: &[client_data::KeyBackupBreach]) {
    if backups.is_empty() {
        println!("key backups in the window: none");
        return;
    }
    println!(
        "key backups in the window ({}; each holds dataset keys that make backed-up \
         ciphertext readable):",
        backups.len()
    );
    for b in backups {
        let end = match &b.destroyed {
            Some(d) => format!("destroyed {d}"),
            None => format!("not destroyed yet, expires {}", b.expires),
        };
        println!(
            "  epoch {}: written {}, {} dataset key{}, {end}",
            b.epoch,
            b.written,
            b.datasets,
            if b.datasets == 1 { "" } else { "s" }
        );
    }
}

/// Says so when the last entries are covered by no signature (a crash between an append and its
/// head update, or lines appended without the key; format 1 logs before their first new entry).
fn print_unsigned(head: &AuditHead) {
    if head.unsigned_entries > 0 {
        println!(
            "warning: the last {} entries are covered by no signature",
            head.unsigned_entries
        );
    }
}
