//! Detection latency: how long from starting `losetup` until the hotplug watcher reports the new
//! loop device `Present`, and from starting the detach until it reports it `Gone`.
//!
//! Run as root: `cargo run --release -p agent --example detect_latency -- [N] [SIZE_MIB]`
//! (defaults: 8 devices of 64 MiB, sparse files in a temporary directory). `bench/detect.sh`
//! wraps it. Only events for the devices it attached are counted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blockdev::watch::{DiskEvent, watch};
use client_data::loopdev::{LoopDevice, can_attach};
use tokio::sync::mpsc::Receiver;

async fn wait_for(
    rx: &mut Receiver<DiskEvent>,
    mut pick: impl FnMut(&DiskEvent) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pick(&ev) => return Ok(Instant::now()),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the watcher stopped"),
            Err(_) => bail!("no event within 10 s"),
        }
    }
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: n={} min={:.2} ms median={:.2} ms max={:.2} ms",
        v.len(),
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);
    let size_mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    if n == 0 {
        bail!("N must be at least 1");
    }
    if !can_attach() {
        bail!("attaching loop devices needs root and /dev/loop-control");
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut rx = watch(PathBuf::from("/sys")).context("starting the hotplug watcher")?;
    let (mut present, mut attach_only, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let path = dir.path().join(format!("bay{i}.img"));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size_mib << 20))
            .with_context(|| format!("creating {}", path.display()))?;
        let backing = std::fs::canonicalize(&path)
            .with_context(|| format!("resolving {}", path.display()))?;

        let t0 = Instant::now();
        let b = backing.clone();
        let attach = tokio::task::spawn_blocking(move || {
            let dev = LoopDevice::attach(&b);
            (dev, Instant::now())
        });
        let seen = wait_for(&mut rx, |ev| {
            matches!(ev, DiskEvent::Present(d) if d.loop_backing_file.as_deref() == Some(backing.as_path()))
        })
        .await?;
        let (dev, attached) = attach.await.context("joining losetup")?;
        let dev = dev.with_context(|| format!("attaching {}", backing.display()))?;
        present.push(seen - t0);
        attach_only.push(attached - t0);

        let name = dev.name();
        let t1 = Instant::now();
        let detach = tokio::task::spawn_blocking(move || dev.detach());
        let left = wait_for(
            &mut rx,
            |ev| matches!(ev, DiskEvent::Gone { name: g } if *g == name),
        )
        .await?;
        detach
            .await
            .context("joining losetup -d")?
            .with_context(|| format!("detaching {name}"))?;
        gone.push(left - t1);
        println!(
            "{name}: present {:.2} ms after losetup started (losetup itself {:.2} ms), gone {:.2} ms after detach started",
            present[i].as_secs_f64() * 1000.0,
            attach_only[i].as_secs_f64() * 1000.0,
            gone[i].as_secs_f64() * 1000.0,
        );
    }
    summary("losetup -> Present", present);
    summary("losetup run time  ", attach_only);
    summary("detach -> Gone    ", gone);
    Ok(())
}
