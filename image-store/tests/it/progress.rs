//! What an import and an export report while they run (`tek image import`/`export`'s bars),
//! and the export to a writer that cannot seek (`tek image export -`).

use image_store::{ImageRef, ImportOptions, ImportProgress, Store};

#[test]
fn import_reports_stored_bytes_in_order_then_auditing() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let img = d.path().join("disk.img");
    let mut bytes = tek_testkit::bytes(7, 3 << 20);
    bytes[1 << 20..2 << 20].fill(0);
    std::fs::write(&img, &bytes).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = ImportOptions {
        progress: Some(tx),
        ..ImportOptions::default()
    };
    let r: ImageRef = "p@1".parse().unwrap();
    store.import(&r, &img, &opts, None).unwrap();
    drop(opts);
    let got: Vec<ImportProgress> = rx.try_iter().collect();
    let stored: Vec<u64> = got
        .iter()
        .filter_map(|p| match p {
            ImportProgress::Stored(n) => Some(*n),
            ImportProgress::Auditing => None,
        })
        .collect();
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
    assert_eq!(stored.last(), Some(&(3 << 20)), "ends at the image size");
    assert_eq!(got.last(), Some(&ImportProgress::Auditing), "{got:?}");
}

#[test]
fn export_stream_writes_holes_as_zeros_and_reports_positions() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let img = d.path().join("disk.img");
    let mut bytes = vec![0u8; 2 << 20];
    bytes[..1000].copy_from_slice(&tek_testkit::bytes(1, 1000));
    std::fs::write(&img, &bytes).unwrap();
    let r: ImageRef = "p@1".parse().unwrap();
    store
        .import(&r, &img, &ImportOptions::default(), None)
        .unwrap();
    let mut out = Vec::new();
    let mut last = (0, 0);
    let m = store
        .export_stream(&r, &mut out, std::path::Path::new("pipe"), |p, s| {
            last = (p, s)
        })
        .unwrap();
    assert_eq!(m.size, 2 << 20);
    assert!(out == bytes, "the stream is the image");
    assert_eq!(last, (2 << 20, 2 << 20));
}
