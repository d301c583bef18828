//! Push from one depot, pull into others over S3 and over HTTP, bytes checked with `cmp`.

use std::collections::HashSet;

use image_library::{LibraryError, RemoteImage, list, pull, push};
use image_store::{ChunkId, Manifest};

use crate::fixture::{Depots, http_remote, quick, s3_remote};
use crate::{binaries, same_bytes};
use tek_testkit::servers::Nginx;

fn chunk_ids(m: &Manifest) -> HashSet<ChunkId> {
    crate::fixture::chunk_ids(m).into_iter().collect()
}

#[test]
fn s3_push_pull_round_trip_and_v2_moves_only_its_new_chunks() {
    round_trip(false);
}

#[test]
fn a_format_1_remote_stays_format_1_and_round_trips() {
    round_trip(true);
}

fn round_trip(format_1: bool) {
    let Some(depots) = Depots::new() else {
        return;
    };
    let Depots {
        maint,
        bench,
        server,
        ..
    } = &depots;
    if format_1 {
        crate::fixture::make_format_1(server, "depot");
    }
    let version = if format_1 { 1 } else { 2 };
    let remote = s3_remote(server, "depot");

    let v1 = maint.import("win11@1", 7, 1, 8);
    let v2 = maint.import("win11@2", 7, 2, 8);
    let (m1, _) = maint.store.load_manifest(&v1).unwrap();
    let (m2, _) = maint.store.load_manifest(&v2).unwrap();
    let (c1, c2) = (chunk_ids(&m1), chunk_ids(&m2));
    let v2_new = c2.difference(&c1).count() as u64;
    assert!(
        v2_new > 0 && v2_new < c2.len() as u64 / 2,
        "{v2_new} of {}",
        c2.len()
    );

    let p = push(&maint.store, &v1, &remote, &maint.trusted).unwrap();
    assert_eq!(
        (p.chunks, p.uploaded, p.was_remote, p.library_version),
        (c1.len() as u64, c1.len() as u64, false, version)
    );
    assert_eq!(p.packs > 0, !format_1, "{p:?}");
    let packs = crate::fixture::walk(&server.object_path("depot/packs"));
    let chunk_objects = crate::fixture::walk(&server.object_path("depot/chunks"));
    assert_eq!(
        (packs.is_empty(), chunk_objects.is_empty()),
        (format_1, !format_1)
    );
    let r = pull(&remote, &v1, &bench.store, &bench.trusted).unwrap();
    assert_eq!(r.library_version, version);
    assert_eq!(
        (r.chunks, r.fetched, r.present),
        (c1.len() as u64, c1.len() as u64, 0)
    );
    assert!(r.signature.is_valid());
    same_bytes(&maint.export(&v1), &bench.export(&v1));

    // v2 after v1: only v2's new chunks move, both ways.
    let p = push(&maint.store, &v2, &remote, &maint.trusted).unwrap();
    assert_eq!((p.uploaded, p.present), (v2_new, c2.len() as u64 - v2_new));
    let r = pull(&remote, &v2, &bench.store, &bench.trusted).unwrap();
    assert_eq!((r.fetched, r.present), (v2_new, c2.len() as u64 - v2_new));
    same_bytes(&maint.export(&v2), &bench.export(&v2));
    assert_eq!(bench.chunk_files(), c1.union(&c2).count());

    // Again: nothing moves.
    let p = push(&maint.store, &v2, &remote, &maint.trusted).unwrap();
    assert_eq!((p.uploaded, p.was_remote), (0, true));
    let r = pull(&remote, &v2, &bench.store, &bench.trusted).unwrap();
    assert_eq!((r.fetched, r.was_local), (0, true));

    let names: Vec<String> = list(&remote)
        .unwrap()
        .iter()
        .map(|i: &RemoteImage| i.image.to_string())
        .collect();
    assert_eq!(names, ["win11@1", "win11@2"]);
}

#[test]
fn http_pull_from_nginx_serving_the_pushed_directory() {
    let Some((_, ng_bin)) = binaries() else {
        return;
    };
    let Some(depots) = Depots::new() else {
        return;
    };
    let Depots {
        maint,
        bench,
        server,
        dir,
        ..
    } = &depots;
    let v1 = maint.import("linux@24.04", 11, 1, 6);
    push(&maint.store, &v1, &s3_remote(server, "lib"), &maint.trusted).unwrap();

    // The bucket's directory, served as it is by a plain web server.
    let web = Nginx::start(
        &ng_bin,
        &server.root.join("library"),
        &dir.join("nginx"),
        None,
    );
    let remote = http_remote(&web.url("lib"), &quick());
    let r = pull(&remote, &v1, &bench.store, &bench.trusted).unwrap();
    assert_eq!(r.fetched, r.chunks);
    same_bytes(&maint.export(&v1), &bench.export(&v1));
    let listed = list(&remote).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].image, v1);

    // The chunks came in ranged GETs of the image's pack, several chunks each, plus the four
    // documents (format file, manifest, signature, pack index).
    let got: Vec<_> = web.requests();
    let pack_gets = got
        .iter()
        .filter(|(s, p)| *s == 206 && p.contains("/packs/"))
        .count() as u64;
    assert!(pack_gets > 0 && pack_gets * 4 <= r.chunks, "{got:?}");
    assert_eq!(r.requests, pack_gets + 4, "{got:?}");

    // A web server is read-only.
    let e = push(&maint.store, &v1, &remote, &maint.trusted).unwrap_err();
    assert!(matches!(e, LibraryError::ReadOnly { .. }), "{e}");
    assert!(e.to_string().contains("read-only"), "{e}");
}
