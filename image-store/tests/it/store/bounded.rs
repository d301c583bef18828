//! The export into a slow sink: the reader bound holds memory whatever the output speed.

use super::*;

/// A slow output holds the readers back: exporting a 96 MiB image into a sink that sleeps on
/// every write keeps the process's peak RSS (VmHWM, measured in a child process that does
/// nothing else) within the reader's bound. With the old unbounded result channel the workers
/// decompressed the whole image into memory ahead of the sink.
#[test]
fn export_into_a_slow_sink_stays_within_the_reader_bound() {
    const CHILD: &str = "TEK_SLOW_SINK_STORE";
    const NAME: &str = "store::bounded::export_into_a_slow_sink_stays_within_the_reader_bound";
    if let Ok(root) = std::env::var(CHILD) {
        let store = Store::open(Path::new(&root)).unwrap();
        let (m, _) = store.load_manifest(&r("big@1")).unwrap();
        let start = status_kib("VmRSS:");
        let mut sink = SlowSink {
            pos: 0,
            written: 0,
            len: 0,
        };
        store
            .export_to(
                &m,
                &mut sink,
                Path::new("sink"),
                image_store::Reader::default(),
            )
            .unwrap();
        assert_eq!((sink.pos, sink.len), (m.size, m.size));
        println!(
            "RSS-START {start} HWM {} WRITTEN {}",
            status_kib("VmHWM:"),
            sink.written
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.img");
    // Incompressible, no two chunks alike, and one sparse hole.
    let mut data = pseudo(96 << 20, 99);
    data[40 << 20..48 << 20].fill(0);
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let rep = store
        .import(&r("big@1"), &src, &ImportOptions::default(), None)
        .unwrap();
    std::fs::remove_file(&src).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path().join("store"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line, before the figures.
    let line = stdout
        .lines()
        .find_map(|l| l.find("RSS-START").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("child printed no figures: {stdout}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .step_by(2)
        .map(|v| v.parse().unwrap())
        .collect();
    let (start, hwm, written) = (f[0] << 10, f[1] << 10, f[2]);
    assert!(written >= 80 << 20, "{line}");
    let max_chunk = 4 * ImportOptions::default().chunk_avg as u64;
    let bound = image_store::Reader::default().bound_bytes(max_chunk);
    // Slack for the allocator, thread stacks and the manifest: far below the 88 MiB of data.
    let slack = 12 << 20;
    assert!(
        hwm <= start + bound + slack,
        "peak RSS {} MiB, at start {} MiB, bound {} MiB (+{} MiB slack), {} chunks",
        hwm >> 20,
        start >> 20,
        bound >> 20,
        slack >> 20,
        rep.chunks
    );
}
