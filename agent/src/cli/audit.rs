//! `tek audit ...`: the tamper-evident audit log (verify, show, head, breach-report).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use client_data::{AuditEvent, AuditHead, AuditLog, AuditPublicKey, BreachReport};

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
    /// Print the log.
    Show {
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
        AuditCommand::Show { json } => {
            for rec in log.records().context("reading audit log")? {
                let rec = rec.context("reading audit log")?;
                if json {
                    let mut v = serde_json::to_value(&rec).context("serializing")?;
                    v["hash"] = serde_json::Value::String(rec.hash.clone());
                    println!("{v}");
                } else {
                    let mut v = serde_json::to_value(&rec.event).context("serializing")?;
                    let kind = v["event"].as_str().unwrap_or("?").to_string();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("event");
                    }
                    println!("{:>6} {} {:<18} {}", rec.seq, rec.time, kind, v);
                }
            }
        }
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
            }
        }
    }
    Ok(())
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
