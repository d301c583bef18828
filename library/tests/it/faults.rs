//! A hostile or failing remote: corrupt, missing and tampered objects, a stalled server, a
//! server killed mid-pull, wrong credentials. Each fails clearly, stores nothing bad, and leaves
//! what was verified for the next pull.

use std::time::{Duration, Instant};

use image_library::{LibraryError, RemoteOptions, layout, list, pull, push};
use image_store::{ChunkId, ImageRef, StoreError};

use crate::binaries;
use crate::fixture::{Depots, chunk_ids, http_remote, quick, s3_remote, s3_remote_as};
use tek_testkit::servers::{Nginx, SECRET_KEY, Stall};

/// A maintainers' depot that pushed `win11@1` to an S3 server, and an empty bench.
struct Setup {
    depots: Depots,
    image: ImageRef,
}

impl std::ops::Deref for Setup {
    type Target = Depots;
    fn deref(&self) -> &Depots {
        &self.depots
    }
}

fn setup(mib: usize) -> Option<Setup> {
    let depots = Depots::new()?;
    let image = depots.maint.import("win11@1", 3, 1, mib);
    let remote = s3_remote(&depots.server, "lib");
    push(&depots.maint.store, &image, &remote, &depots.maint.trusted).unwrap();
    Some(Setup { depots, image })
}

impl Setup {
    /// The `n`th chunk of the image (image order) and its object file on the server.
    fn chunk(&self, n: usize) -> (ChunkId, std::path::PathBuf) {
        let (m, _) = self.maint.store.load_manifest(&self.image).unwrap();
        let id = chunk_ids(&m)[n];
        let key = format!("lib/{}", layout::chunk_key(id));
        (id, self.server.object_path(&key))
    }

    fn manifest_file(&self) -> std::path::PathBuf {
        self.server
            .object_path(&format!("lib/{}", layout::manifest_key(&self.image)))
    }
}

#[test]
fn a_corrupted_object_is_refused_named_and_nothing_of_it_is_cached() {
    let Some(s) = setup(4) else { return };
    let (id, file) = s.chunk(3);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(&file, &bad).unwrap();

    let remote = s3_remote(&s.server, "lib");
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(
        matches!(&*e.error, LibraryError::CorruptChunk { chunk, .. } if *chunk == id),
        "{e}"
    );
    let msg = e.to_string();
    eprintln!("corrupt object: {msg}");
    assert!(msg.contains(&id.to_hex()), "{msg}");
    assert!(
        msg.contains(&format!("s3://library/lib/{}", layout::chunk_key(id))),
        "{msg}"
    );
    // Nothing of the bad chunk, under any name; no image; the good chunks kept.
    let path = s.bench.store.chunk_path(id);
    assert!(!path.exists() && !path.with_extension("zst.bad").exists());
    assert!(!s.bench.store.exists(&s.image));
    assert_eq!(s.bench.chunk_files() as u64, e.kept);
    assert!(e.kept > 0, "in-flight fetches finish and are kept: {e}");

    // The server repaired: the next pull fetches only what is still missing.
    std::fs::write(&file, &good).unwrap();
    let r = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap();
    assert_eq!(r.fetched + e.kept, r.chunks);
    crate::same_bytes(&s.maint.export(&s.image), &s.bench.export(&s.image));
}

#[test]
fn a_404_chunk_fails_the_pull_with_the_chunk_and_its_url() {
    let Some(s) = setup(4) else { return };
    let (_, ng) = binaries().unwrap();
    let (id, file) = s.chunk(5);
    std::fs::remove_file(&file).unwrap();
    let web = Nginx::start(
        &ng,
        &s.server.root.join("library"),
        &s.dir.join("nginx"),
        None,
    );
    let remote = http_remote(&web.url("lib"), &quick());
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(
        matches!(&*e.error, LibraryError::MissingChunk { chunk, .. } if *chunk == id),
        "{e}"
    );
    let msg = e.to_string();
    eprintln!("404: {msg}");
    assert!(
        msg.contains(&web.url(&format!("lib/{}", layout::chunk_key(id)))),
        "{msg}"
    );
    assert!(msg.contains("not found"), "{msg}");
    assert!(!s.bench.store.exists(&s.image));
}

#[test]
fn a_tampered_manifest_unsigned_or_untrusted_image_is_refused_before_any_chunk() {
    let Some(s) = setup(2) else { return };
    let remote = s3_remote(&s.server, "lib");
    let file = s.manifest_file();
    let good = std::fs::read(&file).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let tampered = text.replacen("\"randomize_guids\": false", "\"randomize_guids\": true", 1);
    assert_ne!(tampered, text);
    std::fs::write(&file, tampered).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    let msg = e.to_string();
    eprintln!("tampered: {msg}");
    assert!(
        matches!(&*e.error, LibraryError::BadManifest { source, .. }
            if matches!(**source, StoreError::NotTrusted { .. })),
        "{msg}"
    );
    assert!(msg.contains("does not match the manifest"), "{msg}");
    assert_eq!(
        s.bench.chunk_files(),
        0,
        "no chunk fetched for a refused manifest"
    );
    std::fs::write(&file, &good).unwrap();

    // Unsigned on the remote.
    let sig = file.with_extension("sig");
    let sig_bytes = std::fs::read(&sig).unwrap();
    std::fs::remove_file(&sig).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(e.to_string().contains("signature unsigned"), "{e}");
    std::fs::write(&sig, sig_bytes).unwrap();

    // Signed, but by a key this bench does not trust.
    std::fs::remove_file(s.bench.trusted.join("maint.pub")).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(
        e.to_string().contains("signed by untrusted key maint"),
        "{e}"
    );
    assert_eq!(s.bench.chunk_files(), 0);
    assert!(!s.bench.store.exists(&s.image));
}

#[test]
fn a_server_that_never_answers_times_out_with_a_clear_error() {
    let Some(s) = setup(2) else { return };
    let stall = Stall::start();
    let opts = RemoteOptions {
        timeout: Duration::from_secs(1),
        retries: 1,
        ..quick()
    };
    let remote = http_remote(&format!("http://127.0.0.1:{}/lib", stall.port), &opts);
    let t = Instant::now();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    let took = t.elapsed();
    let msg = e.to_string();
    eprintln!("stalled ({took:?}): {msg}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {msg}");
    assert!(matches!(*e.error, LibraryError::Request { .. }), "{msg}");
    assert!(
        msg.contains(&format!("http://127.0.0.1:{}/lib/", stall.port)),
        "{msg}"
    );
    assert!(
        msg.to_lowercase().contains("timed out") || msg.contains("timeout"),
        "{msg}"
    );
}

#[test]
fn wrong_credentials_give_a_clear_error_without_the_secret() {
    let Some(s) = setup(2) else { return };
    let wrong_secret = "not-the-secret-Qw93";
    let remote = s3_remote_as(&s.server, "lib", "tek-test-access", wrong_secret);
    let e = push(&s.maint.store, &s.image, &remote, &s.maint.trusted).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LibraryError::Denied { .. }), "{msg}");
    assert!(msg.contains("refused the credentials"), "{msg}");
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    let msg2 = e.to_string();
    assert!(matches!(*e.error, LibraryError::Denied { .. }), "{msg2}");
    let unknown = s3_remote_as(&s.server, "lib", "nobody", wrong_secret);
    let msg3 = list(&unknown).unwrap_err().to_string();
    for m in [&msg, &msg2, &msg3] {
        eprintln!("credentials: {m}");
        assert!(!m.contains(wrong_secret) && !m.contains(SECRET_KEY), "{m}");
        assert!(!format!("{e:?}").contains(wrong_secret));
    }
}

#[test]
fn a_server_killed_mid_pull_and_restarted_resumes_without_refetching() {
    let Some(s) = setup(8) else { return };
    let (_, ng) = binaries().unwrap();
    // 16 responses at 256 KiB/s each: the 8 MiB image takes about two seconds.
    let mut web = Nginx::start(
        &ng,
        &s.server.root.join("library"),
        &s.dir.join("nginx"),
        Some("256k"),
    );
    let remote = http_remote(&web.url("lib"), &quick());
    let first = std::thread::scope(|sc| {
        let h = sc.spawn(|| pull(&remote, &s.image, &s.bench.store, &s.bench.trusted));
        std::thread::sleep(Duration::from_millis(900));
        web.kill();
        h.join().unwrap()
    });
    let e = first.expect_err("the pull outlived the server");
    eprintln!("killed: {e}");
    assert!(matches!(*e.error, LibraryError::Request { .. }), "{e}");
    let chunks = s.bench.chunk_files() as u64;
    assert_eq!(chunks, e.kept);
    assert!(e.kept > 0, "nothing fetched before the kill: {e}");
    web.restart();
    let r = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap();
    assert_eq!(r.fetched + e.kept, r.chunks, "{r:?}");
    assert!(r.fetched > 0);
    crate::same_bytes(&s.maint.export(&s.image), &s.bench.export(&s.image));
    // The server's own log: no chunk was sent whole twice.
    let mut seen = std::collections::HashSet::new();
    for (status, path) in web.requests() {
        if status == 200 && path.contains("/chunks/") {
            assert!(seen.insert(path.clone()), "{path} fetched twice");
        }
    }
}

#[test]
fn a_push_that_fails_midway_publishes_no_image_and_no_bad_chunk() {
    let Some(s) = setup(2) else { return };
    let remote = s3_remote(&s.server, "lib");
    let v2 = s.maint.import("win11@2", 3, 2, 4);
    // A chunk only v2 has, gone bad in the maintainers' store.
    let (m1, _) = s.maint.store.load_manifest(&s.image).unwrap();
    let (m2, _) = s.maint.store.load_manifest(&v2).unwrap();
    let old = chunk_ids(&m1);
    let bad = *chunk_ids(&m2).iter().find(|id| !old.contains(id)).unwrap();
    let path = s.maint.store.chunk_path(bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = push(&s.maint.store, &v2, &remote, &s.maint.trusted).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LibraryError::NotPushable { .. }), "{msg}");
    assert!(
        msg.contains(&bad.to_hex()) && msg.contains("tek image verify"),
        "{msg}"
    );
    let bad_object = s
        .server
        .object_path(&format!("lib/{}", layout::chunk_key(bad)));
    assert!(!bad_object.exists(), "a bad chunk was published");
    let images: Vec<_> = list(&remote)
        .unwrap()
        .into_iter()
        .map(|i| i.image)
        .collect();
    assert_eq!(images, std::slice::from_ref(&s.image));
    let e = pull(&remote, &v2, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(matches!(*e.error, LibraryError::NoSuchImage { .. }), "{e}");
}
