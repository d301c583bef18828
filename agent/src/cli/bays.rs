//! `tek bays`: the configured bays and what the agent says of each; with `--discover`, the
//! disks present now and their port paths (no agent needed), to write the bay configuration.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

use agent::server::protocol::{Op, Status};

use super::AgentConn;

/// `tek bays` arguments.
#[derive(Debug, Args)]
pub struct BaysArgs {
    /// List the disks present now (no agent needed), to write the bay config.
    #[arg(long)]
    pub discover: bool,
    #[command(flatten)]
    pub conn: AgentConn,
}

/// Runs `tek bays`.
pub fn run(args: BaysArgs) -> Result<()> {
    let BaysArgs { discover, conn } = args;
    let cfg = conn.config()?;
    if discover {
        let disks = blockdev::sysfs::scan_disks(Path::new("/sys"))
            .context("scanning /sys/class/block for disks")?;
        if disks.is_empty() {
            println!("no disks found");
        }
        for d in &disks {
            let bay = agent::daemon::matching::bay_of(&cfg, d)
                .map(|b| format!("  [bay {}]", b.name))
                .unwrap_or_default();
            println!("{}{bay}", blockdev::sysfs::describe(d));
        }
        println!(
            "\nPlug a disk into each bay in turn and copy its port path into a [[bay]] port_path."
        );
        return Ok(());
    }
    if cfg.bays.is_empty() {
        println!("no bays configured (see `tek bays --discover`)");
    }
    let live: Option<Status> = conn.client().and_then(|mut c| c.call(Op::Status)).ok();
    for b in &cfg.bays {
        let matcher = match (&b.port_path, &b.loop_backing) {
            (Some(p), _) => format!("port {p}"),
            (_, Some(g)) => format!("loop backing {g}"),
            _ => String::new(),
        };
        let state = live
            .as_ref()
            .and_then(|s| s.bays.iter().find(|v| v.name == b.name))
            .map(|v| v.state.clone())
            .unwrap_or_else(|| "(agent not reachable)".into());
        let prov = b
            .default_image
            .as_ref()
            .map(|i| format!("  provisioning {i}"))
            .unwrap_or_default();
        println!("{}  {matcher}{prov}  {state}", b.name);
    }
    Ok(())
}
