//! `tek data ...`: client data custody, a thin layer over
//! [`client_data::Custody`].
//!
//! Custody settings (KEK, holidays, ages) come from [`agent::settings`], as the daemon's do:
//! the `[custody]` table of the agent's config (`TEK_CONFIG`, else `/etc/tek/agent.toml`),
//! with the environment as an override.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use client_data::{
    Custody, DatasetId, Destination, DeviceIdentity, WipeOptions, WipeReason, WithdrawReason,
};

use agent::Depot;

use super::render;
use super::table::Table;

/// `tek data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Ingest a directory or a tar archive (plain, gzip, zstd) into encrypted staging.
    Ingest {
        /// Client id (an id, not a name).
        #[arg(long, value_parser = ident("client id"))]
        client: String,
        /// Service ticket (an id: 1-64 of A-Z a-z 0-9 . _ -).
        #[arg(long, value_parser = ident("ticket"))]
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a dataset under a directory, then read back and verify.
    Restore {
        /// Dataset id.
        dataset: String,
        /// Target directory (the mounted data partition).
        dir: PathBuf,
        /// Job id for the audit log.
        #[arg(long, value_parser = ident("job id"))]
        job: Option<String>,
        /// Serial number of the device written (the audit log records the device's identity,
        /// never the directory).
        #[arg(long)]
        serial: Option<String>,
        /// World-wide name of the device written.
        #[arg(long)]
        wwn: Option<String>,
        /// Model of the device written.
        #[arg(long)]
        model: Option<String>,
        /// Replace what already stands in the directory where the dataset puts a file (each
        /// one is listed). Without it such entries refuse the restore before anything is
        /// written. Folders in the way of files are never replaced.
        #[arg(long)]
        replace_existing: bool,
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
        /// Why a forced wipe is needed, as a code: withdrawal, termination, retention-expired,
        /// migration-abandoned, operator-error, other.
        #[arg(long, requires = "force", value_parser = reason_code)]
        reason: Option<WipeReason>,
        /// Free-text explanation: kept in the sanitization record, never in the audit log.
        #[arg(long, requires = "force")]
        note: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A client withdrew (or the contract ended): destroy its data now, open a deletion case.
    Withdraw {
        /// Client id.
        #[arg(long, value_parser = ident("client id"))]
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
        conn: super::AgentConn,
    },
    /// Allow ingests for a withdrawn client again.
    Reactivate {
        /// Client id.
        #[arg(long)]
        client: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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

/// Opens custody for a depot with the settings of the agent's config and the environment.
pub fn open_custody(depot: &Depot) -> Result<Custody> {
    agent::settings::open_custody(depot, &agent::settings::command_config()?)
}

/// Said once, by the ingest that made the depot's key-encryption key: without it (and its check
/// file) no staged dataset can be read, and `tek backup keys` does not copy it.
fn kek_backup_notice(kek: &std::path::Path, check: &std::path::Path) -> String {
    // A relative `--state` would give a command that only works from here.
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (kek, check) = (&abs(kek), &abs(check));
    // The audit key signs the log from its first entry and belongs with the KEK's copy.
    let audit_key = check.with_file_name("audit.key");
    let mut files = format!("{} {}", kek.display(), check.display());
    if audit_key.exists() {
        files = format!("{files} {}", audit_key.display());
    }
    format!(
        "tek: created the depot's key-encryption key {kek} (first ingest).\n\
         \x20 Back it up now: without it no staged client data can be read, and `tek backup keys` \
         does not copy it.\n\
         \x20 Copy it with its check file{also} to removable media kept locked away from this \
         machine and its backups, e.g.\n\
         \x20   install -m 0600 {files} /media/kek-usb/",
        kek = kek.display(),
        also = if audit_key.exists() {
            " and the audit key"
        } else {
            ""
        },
    )
}

/// A clap value parser applying the id rule (`client_data::dataset::check_ident`), so a name,
/// an e-mail address or a phone number is refused before anything runs.
pub fn ident(what: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s| {
        client_data::dataset::check_ident(what, s)
            .map(|_| s.to_string())
            .map_err(|e| e.to_string())
    }
}

fn reason_code(s: &str) -> Result<WipeReason, String> {
    s.parse().map_err(|e: client_data::DataError| e.to_string())
}

/// Who runs the command, as an id for the records: the (sudo) user name when it passes the id
/// rule, else `uid-N`.
fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| client_data::dataset::check_ident("operator", u).is_ok())
        .unwrap_or_else(|| format!("uid-{}", nix::unistd::getuid()))
}

fn parse_id(s: &str) -> Result<DatasetId> {
    s.parse::<DatasetId>()
        .with_context(|| format!("parsing dataset id \"{}\"", s.escape_debug()))
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
            let made = c
                .prepare_kek()
                .context("preparing the key-encryption key for the first ingest")?;
            let res = c.ingest(&client, &ticket, &source);
            // Said even when the ingest failed: the key exists now either way.
            if let Some((kek, check)) = &made {
                eprintln!("{}", kek_backup_notice(kek, check));
            }
            let info = res.with_context(|| format!("ingesting {}", source.display()))?;
            if json {
                render::print_json(&info)?;
            } else {
                println!("{}", info.id);
                eprintln!(
                    "{}, {}, encrypted in staging",
                    render::count(info.entries, "entry"),
                    render::size(info.bytes)
                );
            }
        }
        DataCommand::List { json } => {
            let list = c.listing().context("listing datasets")?;
            let max_age = c.config().max_staging_age_days;
            if json {
                let rows = list
                    .iter()
                    .map(|d| {
                        let mut v = serde_json::to_value(d).context("serializing a dataset")?;
                        v["max_staging_age_days"] = max_age.into();
                        Ok(v)
                    })
                    .collect::<Result<Vec<_>>>()?;
                render::print_json(&rows)?;
            } else if list.is_empty() {
                render::print("no datasets in staging\n")?;
            } else {
                let mut t = Table::new(&[
                    "DATASET", "CLIENT", "TICKET", "ENTRIES", "SIZE", "AGE", "STATE",
                ])
                .right_aligned(&[3, 4, 5]);
                for d in &list {
                    let state = if d.overdue {
                        format!(
                            "{}, OVERDUE (older than {})",
                            d.info.state,
                            render::count(max_age, "day")
                        )
                    } else {
                        d.info.state.to_string()
                    };
                    t.row([
                        d.info.id.to_string(),
                        d.info.client.clone(),
                        d.info.ticket.clone(),
                        d.info.entries.to_string(),
                        render::size(d.info.bytes),
                        render::count(d.age_days.max(0) as u64, "day"),
                        state,
                    ]);
                }
                render::print(&t.render())?;
            }
        }
        DataCommand::Show { dataset, json } => {
            let id = parse_id(&dataset)?;
            let info = c
                .dataset(&id)
                .with_context(|| format!("reading dataset {id}"))?;
            render::emit(json, &info, |d| {
                format!(
                    "dataset:  {}\nclient:   {}\nticket:   {}\ncreated:  {}\ncontents: {}, {}\n\
                     state:    {}\n",
                    d.id,
                    d.client,
                    d.ticket,
                    render::when(&d.created),
                    render::count(d.entries, "entry"),
                    render::size(d.bytes),
                    d.state
                )
            })?;
        }
        DataCommand::Restore {
            dataset,
            dir,
            job,
            serial,
            wwn,
            model,
            replace_existing,
            json,
        } => {
            let id = parse_id(&dataset)?;
            let dest = Destination {
                job,
                device: DeviceIdentity::new(
                    serial.as_deref(),
                    wwn.as_deref(),
                    model.as_deref(),
                    None,
                    None,
                ),
            };
            // The same stall limits as the agent's jobs (agent.toml's `[restore]`).
            let opts = client_data::RestoreOptions {
                replace_existing,
                ..agent::settings::command_config()?.restore.options()
            };
            let res = client_data::RestoreTarget::open(&dir)
                .and_then(|t| c.restore_with(&id, &t, &dest, &opts))
                .with_context(|| format!("restoring {id} to {}", dir.display()))?;
            if json {
                render::print_json(&res)?;
            } else {
                println!(
                    "restored {} ({}), verified {} ({})",
                    render::count(res.entries_restored, "entry"),
                    render::size(res.bytes_restored),
                    render::count(res.entries_verified, "entry"),
                    render::size(res.bytes_verified)
                );
                for s in &res.skipped {
                    println!("skipped: {s}");
                }
                for s in &res.replaced {
                    println!("replaced (as asked): {s}");
                }
                if !res.resumed.is_empty() {
                    let n = res.resumed.len() as u64;
                    println!(
                        "resumed: {} an earlier restore of this dataset into this folder \
                         (interrupted, or verified and now done again) had written, proved its \
                         own by the restore journal, {} replaced (listed in --json)",
                        render::count(n, "entry"),
                        if n == 1 { "was" } else { "were" }
                    );
                }
                if !res.unjournaled.is_empty() {
                    let n = res.unjournaled.len() as u64;
                    println!(
                        "{} the interrupted run had not journaled matched the staged data and \
                         {} replaced (listed in --json)",
                        render::count(n, "entry"),
                        if n == 1 { "was" } else { "were" }
                    );
                }
                if !res.merged.is_empty() {
                    println!(
                        "merged: {} already in the target, written into, their owner, mode \
                         and times left as they were:",
                        render::count(res.merged.len() as u64, "folder")
                    );
                    for m in res.merged.iter().take(10) {
                        println!("  {m}");
                    }
                    if res.merged.len() > 10 {
                        println!("  and {} more (listed in --json)", res.merged.len() - 10);
                    }
                }
                if res.owners_not_restored > 0 {
                    println!(
                        "owners not restored: {} ({})",
                        render::count(res.owners_not_restored, "entry"),
                        res.ownership_note.as_deref().unwrap_or("refused")
                    );
                }
                for s in &res.setid_dropped {
                    println!("setuid/setgid dropped: {s}");
                }
                if !res.name_mappings.is_empty() {
                    println!(
                        "{} names renamed for {} (rule tek-winnames-1, read back under the new name):",
                        res.name_mappings.len(),
                        res.target_filesystem
                    );
                    for m in &res.name_mappings {
                        println!("  renamed: {} -> {}", m.from, m.to_escaped);
                    }
                }
                for m in &res.link_targets_mapped {
                    println!("  symlink text mapped: {} -> {}", m.from, m.to_escaped);
                }
                for n in &res.metadata_not_restored {
                    println!(
                        "not restored: {} on {} ({})",
                        n.what,
                        render::count(n.entries, "entry"),
                        n.reason
                    );
                }
                if let Some(note) = &res.security_note {
                    println!("permissions: {note}");
                }
                for m in &res.mismatches {
                    println!("MISMATCH: {m}");
                }
            }
            if !res.ok() {
                anyhow::bail!(
                    "verifying {id} on {}: {}",
                    dir.display(),
                    render::count(res.mismatches.len() as u64, "mismatch")
                );
            }
        }
        DataCommand::Wipe {
            dataset,
            force,
            reason,
            note,
            json,
        } => {
            let id = parse_id(&dataset)?;
            let opts = WipeOptions {
                note: if force { note } else { None },
                operator: operator(),
            };
            let rec = match reason.filter(|_| force) {
                // `--force --reason`: the explicit way around the proof.
                Some(reason) => c.force_wipe(&id, reason, &opts),
                None => c
                    .verified_restore(&id)
                    .and_then(|proof| c.wipe(&proof, &opts)),
            }
            .with_context(|| format!("wiping {id}"))?;
            if json {
                render::print_json(&rec)?;
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
                render::print_json(&w)?;
            } else {
                super::data_withdrawal::print_withdrawal(&w);
            }
            let told = super::data_withdrawal::tell_agent(&conn);
            if json {
                eprintln!("{told}");
            } else {
                println!("{told}");
            }
        }
        DataCommand::Reactivate { client, json } => {
            c.reactivate(&client)
                .with_context(|| format!("reactivating client {client}"))?;
            let out = serde_json::json!({ "client": client, "reactivated": true });
            render::emit(json, &out, |_| format!("client {client} reactivated\n"))?;
        }
        DataCommand::Deletions { json } => {
            let cases = c.deletions().context("listing deletion cases")?;
            if json {
                render::print_json(&cases)?;
            } else if cases.is_empty() {
                render::print("no deletion cases\n")?;
            } else {
                render::print(&super::data_withdrawal::deletions_table(&cases))?;
            }
        }
    }
    Ok(())
}
