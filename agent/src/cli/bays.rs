//! `tek bays`: the configured bays and what the agent says of each; with `--discover`, the
//! disks present now and their port paths (no agent needed), to write the bay configuration.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

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

/// Runs `tek bays`.
pub fn run(args: BaysArgs) -> Result<()> {
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
        if json {
            let rows: Vec<_> = disks
                .iter()
                .map(|d| serde_json::json!({ "disk": d, "bay": bay(d) }))
                .collect();
            return render::print_json(&rows);
        }
        let mut text = String::new();
        if disks.is_empty() {
            text.push_str("no disks found\n");
        }
        for d in &disks {
            let bay = bay(d).map(|b| format!("  [bay {b}]")).unwrap_or_default();
            text.push_str(&format!("{}{bay}\n", blockdev::sysfs::describe(d)));
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
