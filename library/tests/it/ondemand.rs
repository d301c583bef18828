//! Pulling while reading: a reader of a store with arrivals (the imager writing a disk while its
//! image is pulled) gets every chunk verified as it lands, before the pull ends, and a corrupt
//! object mid-stream ends the read with the chunk id and the object's URL.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use image_library::{Pull, push};
use image_store::{Arrivals, Piece, StoreError};

use crate::fixture::{Depots, chunk_ids, http_remote, quick, s3_remote};
use crate::{binaries, same_bytes};
use tek_testkit::servers::Nginx;

#[test]
fn a_reader_gets_the_image_while_it_arrives_and_the_pull_still_commits_it() {
    let Some((_, nginx)) = binaries() else { return };
    let Some(d) = Depots::new() else { return };
    let image = d.maint.import("win11@1", 11, 1, 6);
    push(
        &d.maint.store,
        &image,
        &s3_remote(&d.server, "lib"),
        &d.maint.trusted,
    )
    .unwrap();
    // 300 KiB/s per response: the 6 MiB image takes a second or more to arrive, so a reader
    // that had to wait for the whole image would get its first piece after the last chunk.
    let web = Nginx::start(
        &nginx,
        &d.server.root.join("library"),
        &d.dir.join("ng"),
        Some("300k"),
    );
    let remote = http_remote(&web.url("lib"), &quick());
    let arrivals = Arrivals::new([]);
    let store = d.bench.store.with_arrivals(arrivals.clone());
    let pull = Pull::start(&remote, &image, &store, &d.bench.trusted).unwrap();
    assert!(arrivals.pending() > 0, "the pull announces what it fetches");
    let extents = pull.image().manifest.extents.clone();
    let first_piece = Arc::new(Mutex::new(None));
    let (reader, first) = (store.clone(), first_piece.clone());
    let read = std::thread::spawn(move || {
        let mut out = Vec::new();
        for p in reader.pieces(extents, Default::default()) {
            first.lock().unwrap().get_or_insert_with(Instant::now);
            match p.expect("every piece verified") {
                Piece::Data(c) => out.extend_from_slice(c.data()),
                Piece::Hole { len, .. } => out.resize(out.len() + len as usize, 0),
            }
        }
        out
    });
    let total = pull.wanted_bytes();
    let last_chunk = Mutex::new(None);
    let report = pull
        .run(&|n| {
            if n == total {
                *last_chunk.lock().unwrap() = Some(Instant::now());
            }
        })
        .unwrap();
    let pulled_at = last_chunk
        .lock()
        .unwrap()
        .expect("progress reached the total");
    let bytes = read.join().unwrap();
    let first = first_piece.lock().unwrap().expect("a piece");
    assert!(
        first < pulled_at,
        "the first piece came only after the last chunk"
    );
    assert!(report.fetched > 0 && !report.was_local);
    assert_eq!(arrivals.pending(), 0);
    let got = d.dir.join("read.img");
    std::fs::write(&got, bytes).unwrap();
    same_bytes(&d.maint.export(&image), &got);
    // Committed: a plain reader of the bench's store has it too.
    same_bytes(&d.maint.export(&image), &d.bench.export(&image));
}

#[test]
fn a_corrupt_object_mid_stream_ends_the_read_naming_the_chunk_and_its_url() {
    let Some(d) = Depots::new() else { return };
    let image = d.maint.import("win11@1", 12, 1, 4);
    let remote = s3_remote(&d.server, "lib");
    push(&d.maint.store, &image, &remote, &d.maint.trusted).unwrap();
    let (m, _) = d.maint.store.load_manifest(&image).unwrap();
    let ids = chunk_ids(&m);
    let bad = ids[ids.len() / 2];
    let (file, _, off, len) =
        crate::fixture::chunk_in_pack(&d.server, "lib", &d.maint.store, &image, bad);
    let mut data = std::fs::read(&file).unwrap();
    data[(off + len / 2) as usize] ^= 0x20;
    std::fs::write(&file, &data).unwrap();

    let arrivals = Arrivals::new([]);
    let store = d.bench.store.with_arrivals(arrivals.clone());
    let pull = Pull::start(&remote, &image, &store, &d.bench.trusted).unwrap();
    let extents = pull.image().manifest.extents.clone();
    let reader = store.clone();
    let read = std::thread::spawn(move || {
        // As the imager does: stop at the first error.
        reader
            .pieces(extents, Default::default())
            .find_map(|p| p.err())
    });
    let e = pull.run(&|_| {}).unwrap_err().to_string();
    assert!(e.contains(&bad.to_string()), "{e}");
    let err = read.join().unwrap().expect("the read must fail");
    assert!(matches!(err, StoreError::NotFetched { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&bad.to_string()), "{text}");
    assert!(text.contains("s3://library/lib/packs/"), "{text}");
    // Nothing of the bad chunk and no manifest reached the bench's store.
    assert!(!d.bench.store.chunk_path(bad).exists());
    assert!(!d.bench.store.exists(&image));
}
