//! A push does not take the remote's word for what it holds (issue 14, finding F3): a pack
//! whose bytes rotted on the server, or an id list that names chunks its pack does not hold,
//! is found before any chunk of it is reused, reported by name, and its chunks go up again in a
//! new pack, so the pushed image can be pulled and a re-push repairs a damaged one.

use std::time::Instant;

use image_library::packs::{self, PACK_DOCUMENT_FORMAT, PackIds};
use image_library::{pull, push};

use crate::fixture::{Depots, chunk_ids, chunk_in_pack, s3_remote};
use crate::proxy::{Act, Proxy};

#[test]
fn a_pack_whose_bytes_rotted_on_the_server_is_named_and_a_re_push_repairs_the_image() {
    let Some(d) = Depots::new() else { return };
    let v1 = d.maint.import("win11@1", 61, 1, 4);
    let v2 = d.maint.import("win11@2", 61, 2, 4);
    let remote = s3_remote(&d.server, "lib");
    push(&d.maint.store, &v1, &remote, &d.maint.trusted).unwrap();
    let (m, _) = d.maint.store.load_manifest(&v1).unwrap();
    let (file, key, off, len) =
        chunk_in_pack(&d.server, "lib", &d.maint.store, &v1, chunk_ids(&m)[3]);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    bad[(off + len / 2) as usize] ^= 0x40;
    std::fs::write(&file, &bad).unwrap();

    // v2 shares that pack's chunks: they are not reused from it.
    let r = push(&d.maint.store, &v2, &remote, &d.maint.trusted).unwrap();
    eprintln!("push v2 onto a rotted pack: {r:?}");
    assert_eq!(r.untrusted_packs.len(), 1, "{r:?}");
    assert!(
        r.untrusted_packs[0].contains(&format!("/{key} does not hold")),
        "{r:?}"
    );
    pull(&remote, &v2, &d.bench.store, &d.bench.trusted).unwrap();
    crate::same_bytes(&d.maint.export(&v2), &d.bench.export(&v2));

    // v1 itself: its re-push finds the pack lying too, puts up what v2's pack lacks and
    // rewrites v1's pack index, so v1 pulls (the rotted pack is no longer used).
    let r = push(&d.maint.store, &v1, &remote, &d.maint.trusted).unwrap();
    eprintln!("re-push v1: {r:?}");
    assert!(r.was_remote && r.uploaded > 0, "{r:?}");
    assert_eq!(r.untrusted_packs.len(), 1, "{r:?}");
    pull(&remote, &v1, &d.bench.store, &d.bench.trusted).unwrap();
    crate::same_bytes(&d.maint.export(&v1), &d.bench.export(&v1));
}

#[test]
fn an_id_list_naming_chunks_its_pack_does_not_hold_is_not_believed() {
    let Some(d) = Depots::new() else { return };
    let image = d.maint.import("win11@1", 62, 1, 4);
    let (m, _) = d.maint.store.load_manifest(&image).unwrap();
    // A pack of junk whose id list claims every chunk of the image, before the first push.
    let ids: Vec<_> = packs::distinct(&m);
    let junk = tek_testkit::bytes(7, ids.iter().map(|c| c.2 as usize).sum());
    let name = blake3::hash(&junk).to_hex().to_string();
    let mut at = 0;
    let list = PackIds {
        format: PACK_DOCUMENT_FORMAT,
        chunks: ids
            .iter()
            .map(|&(id, _, len)| {
                let place = (id, at, len / 2);
                at += len / 2;
                place
            })
            .collect(),
    };
    let lib = d.server.object_path("lib");
    std::fs::create_dir_all(lib.join("packs")).unwrap();
    std::fs::write(lib.join(packs::pack_key(&name)), &junk).unwrap();
    std::fs::write(lib.join(packs::ids_key(&name)), list.to_bytes()).unwrap();
    std::fs::write(
        lib.join(image_library::layout::INFO_KEY),
        serde_json::to_vec(&image_library::layout::LibraryInfo::current()).unwrap(),
    )
    .unwrap();

    let remote = s3_remote(&d.server, "lib");
    let r = push(&d.maint.store, &image, &remote, &d.maint.trusted).unwrap();
    eprintln!("push onto a lying id list: {:?}", r.untrusted_packs);
    assert_eq!((r.present, r.uploaded), (0, r.chunks), "{r:?}");
    assert_eq!(r.untrusted_packs.len(), 1, "{r:?}");
    assert!(
        r.untrusted_packs[0].contains(&format!("/packs/{name}.pack does not hold")),
        "{r:?}"
    );
    pull(&remote, &image, &d.bench.store, &d.bench.trusted).unwrap();
    crate::same_bytes(&d.maint.export(&image), &d.bench.export(&image));
}

/// Not an assertion of speed: the figures of "push v2 after v1" (requests, seconds) that the
/// check of reused chunks costs, printed for bench/README.md.
#[test]
fn push_v2_after_v1_figures() {
    let Some(d) = Depots::new() else { return };
    let v1 = d.maint.import("win11@1", 63, 1, 64);
    let v2 = d.maint.import("win11@2", 63, 2, 64);
    let remote = s3_remote(&d.server, "lib");
    push(&d.maint.store, &v1, &remote, &d.maint.trusted).unwrap();
    let t = Instant::now();
    let r = push(&d.maint.store, &v2, &remote, &d.maint.trusted).unwrap();
    eprintln!(
        "FIGURES push v2 after v1 (64 MiB, {} chunks, {} present): {} requests, {:.2} s",
        r.chunks,
        r.present,
        r.requests,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(r.uploaded + r.present, r.chunks);
}

/// Answers every PUT of a pack with 200 and drops it; forwards everything else.
fn swallow_packs(first: &str, _head: &str) -> Act {
    match first.starts_with("PUT ") && first.contains(".pack ") {
        true => Act::Reply(b"HTTP/1.1 200 OK\r\nETag: \"0\"\r\nContent-Length: 0\r\n\r\n".to_vec()),
        false => Act::Forward,
    }
}

#[test]
fn a_server_that_acknowledges_a_pack_it_does_not_keep_fails_the_push_before_the_manifest() {
    let Some(d) = Depots::new() else { return };
    let v1 = d.maint.import("win11@1", 63, 1, 2);
    let proxy = Proxy::start(&d.server.endpoint(), swallow_packs);
    let remote = crate::fixture::s3_remote_with(
        &proxy.endpoint,
        "lib",
        (
            tek_testkit::servers::ACCESS_KEY,
            tek_testkit::servers::SECRET_KEY,
        ),
        crate::fixture::quick(),
    );
    let e = push(&d.maint.store, &v1, &remote, &d.maint.trusted).unwrap_err();
    eprintln!("{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(".pack") && msg.contains("acknowledged") && msg.contains("does not have it"),
        "{msg}"
    );
    // Nothing visible: no manifest, nothing listed.
    let direct = s3_remote(&d.server, "lib");
    assert!(image_library::list(&direct).unwrap().is_empty());
}

#[test]
fn a_format_1_push_checks_the_chunk_objects_it_reuses_and_replaces_a_rotted_one() {
    let Some(d) = Depots::new() else { return };
    crate::fixture::make_format_1(&d.server, "f1");
    let v1 = d.maint.import("win11@1", 64, 1, 4);
    let v2 = d.maint.import("win11@2", 64, 2, 4);
    let remote = s3_remote(&d.server, "f1");
    push(&d.maint.store, &v1, &remote, &d.maint.trusted).unwrap();
    // A chunk v2 shares with v1, its object's bytes changed on the server (same size).
    let (m1, _) = d.maint.store.load_manifest(&v1).unwrap();
    let (m2, _) = d.maint.store.load_manifest(&v2).unwrap();
    let in_v2: std::collections::HashSet<_> = chunk_ids(&m2).into_iter().collect();
    let shared = chunk_ids(&m1)
        .into_iter()
        .find(|id| in_v2.contains(id))
        .expect("v2 shares a chunk with v1");
    let file = d
        .server
        .object_path(&format!("f1/{}", image_library::layout::chunk_key(shared)));
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();

    let r = push(&d.maint.store, &v2, &remote, &d.maint.trusted).unwrap();
    eprintln!("push v2 over a rotted chunk object: {r:?}");
    assert!(r.uploaded >= 1, "the rotted chunk goes up again: {r:?}");
    pull(&remote, &v2, &d.bench.store, &d.bench.trusted).unwrap();
    crate::same_bytes(&d.maint.export(&v2), &d.bench.export(&v2));
}
