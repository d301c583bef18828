//! `tek data withdraw` and `tek data deletions`: what a withdrawal did, the deletion cases
//! table, and telling a running agent about the withdrawal.

use agent::errors::Chain;

use super::render;
use super::table::Table;

/// `tek data deletions` as a table, then a line per case that is late or still destroying.
pub(super) fn deletions_table(cases: &[client_data::DeletionCase]) -> String {
    let mut t = Table::new(&[
        "CASE",
        "CLIENT",
        "RECEIVED",
        "DUE",
        "LIVE DATA DESTROYED",
        "BACKUPS UNREADABLE",
        "IN TIME",
        "STATE",
    ]);
    let mut notes = String::new();
    for k in cases {
        let b = match &k.backup_unreadable_at {
            Some(_) => format!("since {}", k.backup_unreadable_date()),
            None => format!("expected {}", k.backup_unreadable_date()),
        };
        t.row([
            k.case.clone(),
            k.client.clone(),
            k.received.clone(),
            k.due.clone(),
            render::when(&k.live_destroyed_at),
            b,
            if k.backups_in_time() { "yes" } else { "NO" }.to_string(),
            k.state.clone(),
        ]);
        if let Some(late) = &k.backup_late {
            notes.push_str(&format!("{}: LATE: {late}\n", k.case));
        }
        if !k.pending.is_empty() {
            notes.push_str(&format!("{}: pending: {}\n", k.case, k.pending.join(" ")));
        }
    }
    let mut text = t.render();
    if !notes.is_empty() {
        text.push('\n');
        text.push_str(&notes);
    }
    text
}

/// The lines of `tek data withdraw`, every number from the one [`client_data::Withdrawal`]
/// that was also recorded and audited.
pub(super) fn print_withdrawal(w: &client_data::Withdrawal) {
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
pub(super) fn tell_agent(conn: &super::AgentConn) -> String {
    let fallback = "a job for this client's data that has not started migrating never will \
                    (the agent re-checks the custody records before claiming a disk and before \
                    migrating)";
    let socket = match conn.socket() {
        Ok(s) => s,
        Err(e) => return format!("agent not told ({}); {fallback}", Chain(&e)),
    };
    if !socket.exists() {
        return format!("no agent running at {}; {fallback}", socket.display());
    }
    let reply = conn
        .client()
        .and_then(|mut c| c.call::<Vec<String>>(agent::server::protocol::Op::CustodyChanged));
    match reply {
        Ok(jobs) if jobs.is_empty() => {
            "agent told: no job of this client's data was waiting or running".into()
        }
        Ok(jobs) => format!(
            "agent told: jobs {} cancelled (waiting) or stopping before migration (running)",
            jobs.join(" ")
        ),
        Err(e) => format!(
            "agent at {} not told ({}); {fallback}",
            socket.display(),
            Chain(&e)
        ),
    }
}
