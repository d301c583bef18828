//! `tek bays`: the configured bays and what the agent says of each; with `--discover`, the
//! disks present now and their port paths (no agent needed), to write the bay configuration.
//! The disks holding `/` or the depot's state root are marked: a bay must never be configured
//! on their port (the agent refuses them anyway, DESIGN invariant 1).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use blockdev::holders::Host;
use clap::Args;

use agent::Depot;
use agent::server::protocol::{Op, Status};

use super::table::Table;
use super::{AgentConn, render};

/// `tek bays` arguments.
#[derive(Debug, Args)]
pub struct BaysArgs {
    /// List the disks present now (no agent needed), to write the bay config.
    #[arg(long)]
    pub discover: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: AgentConn,
}

/// Why a disk is the workstation's own, if it is: it holds `/`, the state root, or both.
pub fn system_mark(
    name: &str,
    root: &BTreeSet<String>,
    state: &BTreeSet<String>,
) -> Option<String> {
    match (root.contains(name), state.contains(name)) {
        (true, true) => Some("SYSTEM DISK: holds / and the depot's state".into()),
        (true, false) => Some("SYSTEM DISK: holds /".into()),
        (false, true) => Some("SYSTEM DISK: holds the depot's state".into()),
        (false, false) => None,
    }
}

/// Runs `tek bays`.
pub fn run(depot: &Depot, args: BaysArgs) -> Result<()> {
    let BaysArgs {
        discover,
        json,
        conn,
    } = args;
    let cfg = conn.config()?;
    if discover {
        let disks = blockdev::sysfs::scan_disks(Path::new("/sys"))
            .context("scanning /sys/class/block for disks")?;
        let bay = |d: &blockdev::sysfs::DiskInfo| {
            agent::daemon::matching::bay_of(&cfg, d).map(|b| b.name.clone())
        };
        let host = Host::current();
        let root = host.system_disks();
        let state = host.disks_backing(depot.for_agent(&cfg).root());
        if json {
            let rows: Vec<_> = disks
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "disk": d,
                        "bay": bay(d),
                        "system_disk": system_mark(&d.name, &root, &state),
                    })
                })
                .collect();
            return render::print_json(&rows);
        }
        let mut text = String::new();
        if disks.is_empty() {
            text.push_str("no disks found\n");
        }
        for d in &disks {
            let bay = bay(d).map(|b| format!("  [bay {b}]")).unwrap_or_default();
            let mark = system_mark(&d.name, &root, &state)
                .map(|m| format!("  [{m}]"))
                .unwrap_or_default();
            text.push_str(&format!("{}{bay}{mark}\n", blockdev::sysfs::describe(d)));
        }
        text.push_str(
            "\nPlug a disk into each bay in turn and copy its port path into a [[bay]] port_path.\n",
        );
        return render::print(&text);
    }
    let live: Option<Status> = conn.client().and_then(|mut c| c.call(Op::Status)).ok();
    let mut rows = Vec::new();
    let mut t = Table::new(&["BAY", "MATCHES", "PROVISIONING", "STATE"]);
    for b in &cfg.bays {
        let matcher = match (&b.port_path, &b.loop_backing) {
            (Some(p), _) => format!("port {p}"),
            (_, Some(g)) => format!("loop backing {g}"),
            _ => String::new(),
        };
        let state = live
            .as_ref()
            .and_then(|s| s.bays.iter().find(|v| v.name == b.name))
            .map(|v| v.state.clone());
        t.row([
            b.name.clone(),
            matcher,
            b.default_image
                .as_ref()
                .map_or("-".into(), |i| i.to_string()),
            state
                .clone()
                .unwrap_or_else(|| "(agent not reachable)".into()),
        ]);
        rows.push(serde_json::json!({
            "name": b.name,
            "port_path": b.port_path,
            "loop_backing": b.loop_backing,
            "default_image": b.default_image,
            "state": state,
        }));
    }
    if json {
        return render::print_json(&rows);
    }
    if cfg.bays.is_empty() {
        return render::print("no bays configured (see `tek bays --discover`)\n");
    }
    render::print(&t.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_disks_are_marked_with_what_they_hold() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let (root, state) = (set(&["vda"]), set(&["vda", "sdb"]));
        assert_eq!(
            system_mark("vda", &root, &state).as_deref(),
            Some("SYSTEM DISK: holds / and the depot's state")
        );
        assert_eq!(
            system_mark("sdb", &root, &state).as_deref(),
            Some("SYSTEM DISK: holds the depot's state")
        );
        assert_eq!(system_mark("sdc", &root, &state), None);
    }
}
