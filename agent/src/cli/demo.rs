//! `tek demo`: the whole journey on a built-in sample, in a temporary depot, in well under a
//! minute: build a sample GPT image, sign and import it, ingest sample client data, start the
//! agent in-process with a virtual bay, plug a "disk" in (as root a loop device, which the
//! agent sees through a real kernel uevent), run the job, print the service report and the
//! sanitization record. Without root (no loop devices, no mounts) the target is a plain file
//! and the job carries no client data; the demo says so.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use client_data::{Custody, CustodyPaths};
use image_store::{ImageRef, ImportOptions, SigningKey, Store};
use tokio::sync::{broadcast, mpsc, oneshot};

use agent::Depot;
use agent::config::Config;
use agent::daemon::Agent;
use agent::job::journal::Journal;
use agent::job::report::Report;
use agent::job::{Job, JobState};
use agent::sample;
use agent::server::client::Client;
use agent::server::protocol::{Event, Op};
use agent::server::{self, DeviceEvent};

fn say(step: &str) {
    println!("\n### {step}");
}

/// What the demo writes: the Linux sample (ESP, ROOT, DATA) or the Windows one.
struct Sample {
    image: ImageRef,
    disk_size: u64,
}

/// Runs the demo (`windows`: the Windows-layout sample, `sample_windows.rs`).
pub fn run(windows: bool) -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("tek-demo-")
        .tempdir()
        .context("creating the demo's temporary directory")?;
    let dir = tmp.path();
    let real_disk = nix::unistd::geteuid().is_root() && client_data::loopdev::can_attach();
    println!("tek demo in {} (removed at the end)", dir.display());
    if !real_disk {
        println!(
            "NOTE: not root (or no loop devices): the target is a plain file, not a block device,\n\
             no uevent is involved, and the job carries no client data (mounting needs root)."
        );
    }

    let depot = Depot::at(&dir.join("state"));
    let work = dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let img = if windows {
        say(
            "1. building a 130 MiB Windows sample (GPT as Setup makes it: ESP, MSR, Windows NTFS, \
             Recovery NTFS after it; NTFS with mkntfs)",
        );
        agent::sample_windows::build_windows_image(&work)?
    } else {
        say(
            "1. building a 64 MiB sample image (GPT: ESP, ROOT, DATA; FAT12 and ext4 with mkfs.ext4)",
        );
        sample::build_image(&work, "demo")?
    };

    if windows {
        say(&format!(
            "2. signing and importing it as win@1 (data partition {}, data path {}, grow {})",
            agent::sample_windows::WIN_DATA_PARTITION,
            agent::sample_windows::WIN_DATA_PATH,
            agent::sample_windows::WIN_GROW_PARTITION
        ));
    } else {
        say("2. signing and importing it as sample@1 (data partition hint: DATA)");
    }
    let (secret, public) = image_store::generate_keypair(&work.join("keys"), "demo-depot")
        .context("generating a signing key")?;
    std::fs::create_dir_all(depot.trusted_keys())
        .with_context(|| format!("creating {}", depot.trusted_keys().display()))?;
    std::fs::copy(&public, depot.trusted_keys().join("demo-depot.pub"))
        .context("trusting the demo key")?;
    let key = SigningKey::load(&secret).context("loading the demo key")?;
    let store = Store::open(depot.store()).context("opening the demo store")?;
    let mut opts = ImportOptions::default();
    let sample = if windows {
        use agent::sample_windows as w;
        opts.hints.data_partition = Some(w::WIN_DATA_PARTITION.into());
        opts.hints.data_path = Some(w::WIN_DATA_PATH.into());
        opts.hints.grow_partition = Some(w::WIN_GROW_PARTITION.into());
        Sample {
            image: "win@1".parse().context("parsing win@1")?,
            disk_size: 2 * w::WIN_SAMPLE_SIZE,
        }
    } else {
        opts.hints.data_partition = Some(sample::DATA_PARTITION.into());
        Sample {
            image: "sample@1".parse().context("parsing sample@1")?,
            disk_size: 128 << 20,
        }
    };
    let image = sample.image.clone();
    let rep = store
        .import(&image, &img, &opts, Some(&key))
        .context("importing the sample image")?;
    println!(
        "imported {image}: {} chunks, {} bytes of data, {} bytes of holes, signed by demo-depot",
        rep.chunks, rep.data_bytes, rep.hole_bytes
    );

    let mut dataset = None;
    if real_disk {
        say("3. ingesting sample client data into encrypted staging");
        let src = sample::build_client_data(&work)?;
        let custody = Custody::open(CustodyPaths {
            staging: depot.staging(),
            keys: depot.keys(),
            audit: depot.audit(),
            reports: depot.reports(),
        })
        .context("opening custody")?;
        let info = custody
            .ingest("demo-client", "DEMO-1", &src)
            .context("ingesting the sample client data")?;
        println!(
            "dataset {}: {} entries, {} bytes, staged",
            info.id, info.entries, info.bytes
        );
        dataset = Some(info.id.to_string());
    } else {
        say("3. (skipped without root: client data ingest and migration)");
    }

    say("4. starting the agent in-process with one virtual bay");
    let bay_dir = dir.join("bay");
    std::fs::create_dir_all(&bay_dir).with_context(|| format!("creating {}", bay_dir.display()))?;
    // One bay, so there is no other write to share: no share window to wait out.
    let cfg = Config::parse(&format!(
        "socket = {:?}\nstate = {:?}\n[policy]\nshare_write_window_ms = 0\n\
         [[bay]]\nname = \"demo-bay\"\nloop_backing = {:?}\n",
        dir.join("agent.sock"),
        depot.root(),
        format!("{}/disk-*.img", bay_dir.display()),
    ))?;
    println!("config:\n{}", toml::to_string(&cfg).unwrap_or_default());
    let steps = agent::job::steps::RealSteps::open(&depot, &cfg)?;
    let agent = Agent::new(cfg.clone(), Journal::open(&depot.jobs())?, Arc::new(steps))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let job = rt.block_on(journey(&cfg, agent, &bay_dir, &sample, dataset, real_disk))?;
    if windows {
        print_layout(&job);
    }

    say("7. service report");
    let custody = crate::cli::data::open_custody(&depot).ok();
    let mut report = Report::with_custody(&job, custody.as_ref());
    report.audit = agent::job::report::AuditAnchor::saved(&depot.reports(), &job.id);
    let letterhead = cfg.depot.letterhead()?;
    print!("{}", report.to_text(&letterhead));
    if let Some(s) = &job.results.sanitization {
        say("8. sanitization record of the staging wipe");
        super::render::print_json(s)?;
    }
    if job.state != JobState::Done {
        bail!(
            "the demo job ended {}: {}",
            job.state,
            job.error.as_deref().unwrap_or("no error recorded")
        );
    }
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the write did to the layout: the moved partitions and the grown filesystem.
fn print_layout(job: &Job) {
    let Some(w) = job.results.write.as_ref().map(|w| w.json()) else {
        return;
    };
    say("6b. layout on the disk (from the write report)");
    for m in w["gpt"]["moved"].as_array().into_iter().flatten() {
        println!(
            "partition {} ({}) moved to the disk's end: first LBA {} -> {}",
            m["number"], m["name"], m["old_first_lba"], m["new_first_lba"]
        );
    }
    let f = &w["filesystem"];
    if f.is_object() {
        println!(
            "partition {} {}: {} -> {} bytes, grown {}{}",
            f["partition"],
            f["filesystem"].as_str().unwrap_or("(unknown)"),
            f["old_bytes"],
            f["new_bytes"],
            f["grown"],
            f["note"]
                .as_str()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        for c in f["checks"].as_array().into_iter().flatten() {
            let verdict = if c["clean"] == true {
                "clean"
            } else {
                "PROBLEMS"
            };
            println!(
                "  check `{}`: {verdict}",
                c["command"].as_str().unwrap_or("")
            );
        }
        if let Some(boot) = f["first_boot"].as_str() {
            println!("  first boot: {boot}");
        }
    }
}

async fn journey(
    cfg: &Config,
    agent: Arc<Agent>,
    bay_dir: &Path,
    sample: &Sample,
    dataset: Option<String>,
    real_disk: bool,
) -> Result<Job> {
    let image = &sample.image;
    let disk_size = sample.disk_size;
    let mib = disk_size >> 20;
    let listener = server::bind_socket(&cfg.socket, &cfg.socket_group)?;
    let (feed, devices) = if real_disk {
        (None, server::hotplug_events("/sys".into())?)
    } else {
        let (tx, rx) = mpsc::channel(4);
        (Some(tx), rx)
    };
    let mut events = agent.subscribe();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, agent.clone(), devices, async {
        let _ = stop_rx.await;
    }));

    say("5. registering the job over the control socket (as `tek job add` does)");
    let sock = cfg.socket.clone();
    let img = image.to_string();
    let ds = dataset.clone();
    let job: Job = tokio::task::spawn_blocking(move || {
        Client::connect(&sock)?.call(Op::JobAdd {
            ticket: "DEMO-1".into(),
            image: img,
            data: ds,
            bay: Some("demo-bay".into()),
            serial: None,
            dataset_of_other_ticket: None,
        })
    })
    .await??;
    println!("job {} queued for bay demo-bay", job.id);

    let disk_file = bay_dir.join("disk-1.img");
    let f = std::fs::File::create(&disk_file)
        .with_context(|| format!("creating {}", disk_file.display()))?;
    f.set_len(disk_size)
        .with_context(|| format!("sizing {}", disk_file.display()))?;
    drop(f);
    let mut _loop_dev = None;
    if real_disk {
        say(&format!(
            "6. plugging in a {mib} MiB disk: losetup (the agent sees the kernel uevent)"
        ));
        let dev = client_data::loopdev::LoopDevice::attach(&disk_file)
            .context("attaching the demo disk")?;
        println!("attached {}", dev.path().display());
        _loop_dev = Some(dev);
    } else if let Some(tx) = &feed {
        say(&format!(
            "6. plugging in a {mib} MiB plain file as the disk (no root: no uevent)"
        ));
        let mut disk = blockdev::DiskInfo::hand_made("disk-1.img");
        disk.dev_path = disk_file.clone();
        disk.model = Some("plain file".into());
        disk.size_bytes = disk_size;
        disk.loop_backing_file = Some(disk_file.clone());
        let _ = tx.send(DeviceEvent::Present(Box::new(disk))).await;
    }
    let result = follow(&mut events, &job.id).await;
    let _ = stop_tx.send(());
    server.await.context("waiting for the agent")??;
    drop(_loop_dev);
    result?;
    agent.job(&job.id)
}

async fn follow(events: &mut broadcast::Receiver<Event>, id: &str) -> Result<()> {
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    let mut last_pct = -1i64;
    loop {
        let ev = tokio::select! {
            _ = &mut deadline => bail!("the demo job did not finish within 120 s"),
            ev = events.recv() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => bail!("agent events ended: {e}"),
        };
        match ev {
            Event::DeviceArrived { disk, bay: Some(b) } => {
                println!("agent: {} arrived in bay {b}", disk.name)
            }
            Event::DiskStatus { name, status } => println!("agent: {name}: {}", status.line()),
            Event::JobProgress { id: j, progress } if j == id && progress.bytes_total > 0 => {
                let pct = (progress.bytes_done * 100 / progress.bytes_total) as i64 / 25 * 25;
                if pct != last_pct {
                    last_pct = pct;
                    println!("  {} {pct}%", progress.phase);
                }
            }
            Event::JobState { job } if job.id == id => {
                println!("job {}: {}", job.id, job.state);
                last_pct = -1;
                if job.state.is_terminal() || job.state == JobState::Interrupted {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}
