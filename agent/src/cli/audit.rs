//! `tek audit ...`: the tamper-evident audit log (verify, show, head, breach-report).

use anyhow::{Context, Result};
use clap::Subcommand;
use client_data::{AuditEvent, AuditLog, BreachReport};

use crate::Depot;

/// `tek audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; names the first bad entry.
    Verify {
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
    /// Print the current chain head (keep it off the machine).
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
    let log =
        AuditLog::open(&dir).with_context(|| format!("opening audit log in {}", dir.display()))?;
    match cmd {
        AuditCommand::Verify { json } => {
            let head = log.verify().context("verifying audit log")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&head).context("serializing")?
                );
            } else {
                println!("audit log OK: {} entries, head {}", head.entries, head.hash);
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&head).context("serializing")?
                );
            } else {
                println!(
                    "{} {} {}",
                    head.entries,
                    head.hash,
                    head.time.unwrap_or_default()
                );
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("serializing")?
                );
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
