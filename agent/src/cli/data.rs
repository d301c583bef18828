//! `tek data ...` and `tek backup ...`: client data custody, a thin layer over
//! [`client_data::Custody`].
//!
//! Policy settings come from the environment (so the agent's unit file and the shell agree):
//! `TEK_KEK` (KEK file, default `<state>/keys/kek`), `TEK_HOLIDAYS` (file of YYYY-MM-DD lines,
//! `#` comments), `TEK_MAX_STAGING_AGE_DAYS` (default 14), `TEK_BACKUP_RETENTION_DAYS`
//! (default 3), and for demos and tests `TEK_TEST_NOW` (RFC 3339) to fix the clock.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use client_data::{
    Custody, CustodyConfig, CustodyPaths, DatasetId, Destination, WipeOptions, WithdrawReason,
};

use crate::Depot;

/// `tek data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Ingest a directory or a tar archive (plain, gzip, zstd) into encrypted staging.
    Ingest {
        /// Client id (an id, not a name).
        #[arg(long)]
        client: String,
        /// Service ticket.
        #[arg(long)]
        ticket: String,
        /// Directory or tar archive.
        source: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List datasets with age and state.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dataset's clear metadata.
    Show {
        /// Dataset id.
        dataset: String,
    },
    /// Restore a dataset under a directory, then read back and verify.
    Restore {
        /// Dataset id.
        dataset: String,
        /// Target directory (the mounted data partition).
        dir: PathBuf,
        /// Job id for the audit log.
        #[arg(long)]
        job: Option<String>,
        /// Device written (for the audit log; default: the directory).
        #[arg(long)]
        device: Option<String>,
        /// Device serial number.
        #[arg(long)]
        serial: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Destroy a dataset's staging copy and key; writes a sanitization record.
    Wipe {
        /// Dataset id.
        dataset: String,
        /// Wipe without a verified migration (needs --reason).
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why a forced wipe is needed.
        #[arg(long, requires = "force")]
        reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A client withdrew (or the contract ended): destroy its data now, open a deletion case.
    Withdraw {
        /// Client id.
        #[arg(long)]
        client: String,
        /// Date the request was received (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        received: String,
        /// Withdrawal or termination.
        #[arg(long, value_enum, default_value = "withdrawal")]
        reason: ReasonArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The running agent to tell (its jobs for this client's data are cancelled).
        #[command(flatten)]
        conn: crate::cli::agent::AgentConn,
    },
    /// Allow ingests for a withdrawn client again.
    Reactivate {
        /// Client id.
        #[arg(long)]
        client: String,
    },
    /// List deletion cases (and complete those whose backups are now unreadable).
    Deletions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--reason` of `tek data withdraw`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReasonArg {
    /// Written withdrawal by the client.
    Withdrawal,
    /// End of contract.
    Termination,
}

/// `tek backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write a key backup (encrypted under a new epoch key) into DIR.
    Keys {
        /// Backup directory: must exist, and be another filesystem than the state directory.
        dir: PathBuf,
        /// Allow DIR on the same filesystem as the state directory (the backup is then lost
        /// with that disk).
        #[arg(long)]
        same_filesystem: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Destroy expired key-backup epochs.
    Prune {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn env_num(name: &str, default: u32) -> Result<u32> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("parsing {name}={v:?} as a number of days")),
        Err(_) => Ok(default),
    }
}

fn read_holidays(path: &Path) -> Result<Vec<time::Date>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading holiday list {}", path.display()))?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            client_data::withdraw::parse_date(l)
                .with_context(|| format!("parsing holiday list {}", path.display()))
        })
        .collect()
}

/// Opens custody for a depot with the settings from the environment.
pub fn open_custody(depot: &Depot) -> Result<Custody> {
    let d = CustodyConfig::default();
    let mut cfg = CustodyConfig {
        kek: std::env::var_os("TEK_KEK").map(PathBuf::from),
        max_staging_age_days: env_num("TEK_MAX_STAGING_AGE_DAYS", d.max_staging_age_days)?,
        backup_retention_days: env_num("TEK_BACKUP_RETENTION_DAYS", d.backup_retention_days)?,
        ..d
    };
    if let Some(p) = std::env::var_os("TEK_HOLIDAYS") {
        cfg.holidays = read_holidays(Path::new(&p))?;
    }
    if let Ok(t) = std::env::var("TEK_TEST_NOW") {
        cfg.now = Some(
            client_data::dataset::parse_rfc3339(&t)
                .with_context(|| format!("parsing TEK_TEST_NOW={t:?} as RFC 3339"))?,
        );
    }
    let paths = CustodyPaths {
        staging: depot.staging(),
        keys: depot.keys(),
        audit: depot.audit(),
        reports: depot.reports(),
    };
    Custody::open_with(paths, cfg)
        .with_context(|| format!("opening client data custody in {}", depot.root().display()))
}

fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()))
}

fn parse_id(s: &str) -> Result<DatasetId> {
    s.parse::<DatasetId>()
        .with_context(|| format!("parsing dataset id {s:?}"))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    use std::io::Write;
    // Not println!: a reader that closes the pipe early (`| head`, `| grep -q`) must give an
    // error, not a panic.
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(v).context("serializing output")?
    )
    .context("writing output")?;
    Ok(())
}

/// Runs a `tek data` subcommand.
pub fn run(depot: &Depot, cmd: DataCommand) -> Result<()> {
    let c = open_custody(depot)?;
    match cmd {
        DataCommand::Ingest {
            client,
            ticket,
            source,
            json,
        } => {
            let info = c
                .ingest(&client, &ticket, &source)
                .with_context(|| format!("ingesting {}", source.display()))?;
            if json {
                print_json(&info)?;
            } else {
                println!("{}", info.id);
                eprintln!(
                    "{} entries, {} bytes, encrypted in staging",
                    info.entries, info.bytes
                );
            }
        }
        DataCommand::List { json } => {
            let list = c.listing().context("listing datasets")?;
            if json {
                print_json(&serde_json::json!({
                    "max_staging_age_days": c.config().max_staging_age_days,
                    "datasets": list,
                }))?;
            } else {
                println!(
                    "{:<22} {:<12} {:<12} {:>8} {:>14} {:>6}  STATE",
                    "DATASET", "CLIENT", "TICKET", "ENTRIES", "BYTES", "AGE"
                );
                for d in &list {
                    let flag = if d.overdue {
                        "  OVERDUE (max staging age exceeded)"
                    } else {
                        ""
                    };
                    println!(
                        "{:<22} {:<12} {:<12} {:>8} {:>14} {:>5}d  {}{}",
                        d.info.id,
                        d.info.client,
                        d.info.ticket,
                        d.info.entries,
                        d.info.bytes,
                        d.age_days,
                        d.info.state,
                        flag
                    );
                }
            }
        }
        DataCommand::Show { dataset } => {
            let id = parse_id(&dataset)?;
            print_json(
                &c.dataset(&id)
                    .with_context(|| format!("reading dataset {id}"))?,
            )?;
        }
        DataCommand::Restore {
            dataset,
            dir,
            job,
            device,
            serial,
            json,
        } => {
            let id = parse_id(&dataset)?;
            let dest = Destination {
                job,
                device_serial: serial,
                device: device.unwrap_or_else(|| dir.display().to_string()),
            };
            let res = c
                .restore(&id, &dir, &dest)
                .with_context(|| format!("restoring {id} to {}", dir.display()))?;
            if json {
                print_json(&res)?;
            } else {
                println!(
                    "restored {} entries ({} bytes), verified {} entries ({} bytes)",
                    res.entries_restored,
                    res.bytes_restored,
                    res.entries_verified,
                    res.bytes_verified
                );
                for s in &res.skipped {
                    println!("skipped: {s}");
                }
                if res.owners_not_restored > 0 {
                    println!(
                        "owners not restored: {} entries ({})",
                        res.owners_not_restored,
                        res.ownership_note.as_deref().unwrap_or("refused")
                    );
                }
                for s in &res.setid_dropped {
                    println!("setuid/setgid dropped: {s}");
                }
                for m in &res.mismatches {
                    println!("MISMATCH: {m}");
                }
            }
            if !res.ok() {
                anyhow::bail!(
                    "verifying {id} on {}: {} mismatches",
                    dir.display(),
                    res.mismatches.len()
                );
            }
        }
        DataCommand::Wipe {
            dataset,
            force,
            reason,
            json,
        } => {
            let id = parse_id(&dataset)?;
            let opts = WipeOptions {
                force_reason: if force { reason } else { None },
                operator: operator(),
            };
            let rec = c.wipe(&id, &opts).with_context(|| format!("wiping {id}"))?;
            if json {
                print_json(&rec)?;
            } else {
                println!("wiped {id}: {}", rec.verification_result);
                println!(
                    "sanitization record: {}",
                    c.paths()
                        .reports
                        .join("sanitization")
                        .join(format!("{}.html", rec.record))
                        .display()
                );
            }
        }
        DataCommand::Withdraw {
            client,
            received,
            reason,
            json,
            conn,
        } => {
            let reason = match reason {
                ReasonArg::Withdrawal => WithdrawReason::Withdrawal,
                ReasonArg::Termination => WithdrawReason::Termination,
            };
            let w = c
                .withdraw(&client, &received, reason, &operator())
                .with_context(|| format!("withdrawing client {client}"))?;
            if json {
                print_json(&w)?;
            } else {
                print_withdrawal(&w);
            }
            let told = tell_agent(&conn);
            if json {
                eprintln!("{told}");
            } else {
                println!("{told}");
            }
        }
        DataCommand::Reactivate { client } => {
            c.reactivate(&client)
                .with_context(|| format!("reactivating client {client}"))?;
            println!("client {client} reactivated");
        }
        DataCommand::Deletions { json } => {
            let cases = c.deletions().context("listing deletion cases")?;
            if json {
                print_json(&cases)?;
            } else {
                println!(
                    "{:<22} {:<12} {:<11} {:<11} {:<31} {:<30} {:<8} STATE",
                    "CASE",
                    "CLIENT",
                    "RECEIVED",
                    "DUE",
                    "LIVE DESTROYED",
                    "BACKUPS UNREADABLE",
                    "BY DUE"
                );
                for k in &cases {
                    let b = match &k.backup_unreadable_at {
                        Some(_) => format!("since {}", k.backup_unreadable_date()),
                        None => format!("expected {}", k.backup_unreadable_date()),
                    };
                    let in_time = if k.backups_in_time() { "yes" } else { "NO" };
                    println!(
                        "{:<22} {:<12} {:<11} {:<11} {:<31} {:<30} {:<8} {}",
                        k.case,
                        k.client,
                        k.received,
                        k.due,
                        k.live_destroyed_at,
                        b,
                        in_time,
                        k.state
                    );
                    if let Some(late) = &k.backup_late {
                        println!("  LATE: {late}");
                    }
                    if !k.pending.is_empty() {
                        println!("  pending: {}", k.pending.join(" "));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The lines of `tek data withdraw`, every number from the one [`client_data::Withdrawal`]
/// that was also recorded and audited.
fn print_withdrawal(w: &client_data::Withdrawal) {
    let k = &w.case;
    let opened = if w.existing_case {
        format!("case {} (already opened for this request)", k.case)
    } else {
        format!("case {} opened", k.case)
    };
    println!(
        "{opened}: {} datasets destroyed now, {} unfinished ingests discarded; {} datasets in \
         the case; due {}",
        w.destroyed_now.len(),
        w.discarded_now.len(),
        k.datasets.len(),
        k.due
    );
    if !w.rotation.destroyed.is_empty() {
        println!(
            "key backups rotated: epochs {} destroyed, other clients' keys now in {}",
            w.rotation.destroyed.join(" "),
            if w.rotation.new_epochs.is_empty() {
                "none (no other live keys)".to_string()
            } else {
                w.rotation
                    .new_epochs
                    .iter()
                    .map(|b| b.epoch.clone())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
    }
    match &k.backup_unreadable_at {
        Some(a) => println!("backup copies unreadable since {a}"),
        None => println!(
            "backup copies unreadable: expected {}",
            k.backup_unreadable_expected
        ),
    }
    if let Some(late) = &k.backup_late {
        println!("LATE: {late}");
    }
    if !k.pending.is_empty() {
        println!(
            "pending (still being destroyed; `tek data deletions` finishes them): {}",
            k.pending.join(" ")
        );
    }
    println!("case state: {}", k.state);
}

/// Tells a running agent that the custody records changed; returns what happened, in one line.
/// Not being able to tell it is no error: its runner re-checks the custody records before it
/// claims a disk and before it migrates.
fn tell_agent(conn: &crate::cli::agent::AgentConn) -> String {
    let fallback = "a job for this client's data that has not started migrating never will \
                    (the agent re-checks the custody records before claiming a disk and before \
                    migrating)";
    let socket = match conn.socket() {
        Ok(s) => s,
        Err(e) => return format!("agent not told ({e:#}); {fallback}"),
    };
    if !socket.exists() {
        return format!("no agent running at {}; {fallback}", socket.display());
    }
    let reply = conn
        .client()
        .and_then(|mut c| c.call::<Vec<String>>(crate::protocol::Op::CustodyChanged));
    match reply {
        Ok(jobs) if jobs.is_empty() => {
            "agent told: no job of this client's data was waiting or running".into()
        }
        Ok(jobs) => format!(
            "agent told: jobs {} cancelled (waiting) or stopping before migration (running)",
            jobs.join(" ")
        ),
        Err(e) => format!("agent at {} not told ({e:#}); {fallback}", socket.display()),
    }
}

/// Runs a `tek backup` subcommand.
pub fn run_backup(depot: &Depot, cmd: BackupCommand) -> Result<()> {
    let c = open_custody(depot)?;
    match cmd {
        BackupCommand::Keys {
            dir,
            same_filesystem,
            json,
        } => {
            let b = c
                .backup_keys(&dir, client_data::BackupOptions { same_filesystem })
                .with_context(|| format!("writing key backup to {}", dir.display()))?;
            if json {
                print_json(&b)?;
            } else {
                println!(
                    "{}: {} keys, epoch {} expires {}",
                    b.file.display(),
                    b.datasets,
                    b.epoch,
                    b.expires
                );
                if b.same_filesystem {
                    println!(
                        "note: --same-filesystem given: this backup is not checked to be on \
                         another filesystem than the depot state and may be lost with that disk"
                    );
                }
            }
        }
        BackupCommand::Prune { json } => {
            let gone = c.prune().context("pruning key-backup epochs")?;
            if json {
                print_json(&gone)?;
            } else {
                println!("destroyed {} expired epochs {}", gone.len(), gone.join(" "));
            }
        }
    }
    Ok(())
}
