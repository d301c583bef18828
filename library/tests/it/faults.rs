//! A hostile or failing remote: corrupt, missing and tampered objects, a stalled server, a
//! server killed mid-pull, wrong credentials. Each fails clearly, stores nothing bad, and leaves
//! what was verified for the next pull.

use std::time::{Duration, Instant};

use image_library::{LibraryError, RemoteOptions, layout, list, pull, push};
use image_store::{ChunkId, ImageRef, StoreError};

use crate::binaries;
use crate::fixture::{
    Depots, chunk_ids, chunk_in_pack, http_remote, quick, s3_remote, s3_remote_as,
};
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
    /// The `n`th chunk of the image (image order), its pack's file on the server, the pack's
    /// key and the chunk's offset and compressed length in it.
    fn chunk(&self, n: usize) -> (ChunkId, std::path::PathBuf, String, u64, u64) {
        let (m, _) = self.maint.store.load_manifest(&self.image).unwrap();
        let id = chunk_ids(&m)[n];
        let (file, key, off, len) =
            chunk_in_pack(&self.server, "lib", &self.maint.store, &self.image, id);
        (id, file, key, off, len)
    }

    /// The manifest as the remote stores it (compressed) and its signature's file.
    fn manifest_file(&self) -> std::path::PathBuf {
        self.server.object_path(&format!(
            "lib/{}",
            layout::Layout::Packs.manifest_key(&self.image)
        ))
    }

    fn signature_file(&self) -> std::path::PathBuf {
        self.server
            .object_path(&format!("lib/{}", layout::signature_key(&self.image)))
    }
}

#[test]
fn a_corrupted_chunk_in_a_pack_is_refused_named_with_its_range_and_nothing_of_it_is_cached() {
    let Some(s) = setup(4) else { return };
    let (id, file, key, off, len) = s.chunk(3);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    bad[(off + len / 2) as usize] ^= 0x40;
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
    let range = format!("s3://library/lib/{key} bytes {off}-{}", off + len - 1);
    assert!(msg.contains(&range), "{msg}");
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
fn a_404_pack_fails_the_pull_with_a_chunk_and_the_pack_url() {
    let Some(s) = setup(4) else { return };
    let (_, ng) = binaries().unwrap();
    let (_, file, key, _, _) = s.chunk(5);
    std::fs::remove_file(&file).unwrap();
    let web = Nginx::start(
        &ng,
        &s.server.root.join("library"),
        &s.dir.join("nginx"),
        None,
    );
    let remote = http_remote(&web.url("lib"), &quick());
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    let (m, _) = s.maint.store.load_manifest(&s.image).unwrap();
    assert!(
        matches!(&*e.error, LibraryError::MissingChunk { chunk, .. } if chunk_ids(&m).contains(chunk)),
        "{e}"
    );
    let msg = e.to_string();
    eprintln!("404: {msg}");
    assert!(msg.contains(&web.url(&format!("lib/{key}"))), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
    assert!(!s.bench.store.exists(&s.image));
}

#[test]
fn a_lying_pack_index_fails_the_pull_and_caches_nothing_unchecked() {
    let Some(s) = setup(4) else { return };
    let remote = s3_remote(&s.server, "lib");
    let index_file = s
        .server
        .object_path(&format!("lib/{}", layout::pack_index_key(&s.image)));
    let good = std::fs::read(&index_file).unwrap();
    let raw = layout::decompress_document(&good, 1 << 30).unwrap();
    let mut index: image_library::packs::PackIndex = serde_json::from_slice(&raw).unwrap();
    // Chunk 1 placed one byte off: its range holds other bytes.
    index.chunks[1].1 += 1;
    std::fs::write(&index_file, index.to_bytes()).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    let msg = e.to_string();
    eprintln!("lying index: {msg}");
    assert!(
        matches!(*e.error, LibraryError::CorruptChunk { .. }),
        "{msg}"
    );
    assert!(msg.contains("/packs/") && msg.contains(" bytes "), "{msg}");
    assert!(!s.bench.store.exists(&s.image));
    // An index of another manifest is refused before any chunk moves.
    index.chunks[1].1 -= 1;
    index.manifest_blake3 = "0".repeat(64);
    std::fs::write(&index_file, index.to_bytes()).unwrap();
    let before = s.bench.chunk_files();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    let msg = e.to_string();
    eprintln!("index of another manifest: {msg}");
    assert!(
        msg.contains("pack index refused") && msg.contains("another manifest"),
        "{msg}"
    );
    assert_eq!(s.bench.chunk_files(), before);
    // Missing: named, with what to do.
    std::fs::remove_file(&index_file).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(e.to_string().contains("pack index is missing"), "{e}");
    // Repaired: the pull completes, fetching only what the failed one did not keep.
    std::fs::write(&index_file, &good).unwrap();
    let r = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap();
    assert_eq!(r.fetched as usize + before, r.chunks as usize);
    crate::same_bytes(&s.maint.export(&s.image), &s.bench.export(&s.image));
}

#[test]
fn a_manifest_that_inflates_beyond_the_limit_or_is_not_zstd_is_refused() {
    let Some(s) = setup(2) else { return };
    let remote = s3_remote(&s.server, "lib");
    let file = s.manifest_file();
    // 300 MiB of spaces in a few KiB: refused at 256 MiB, never inflated whole.
    let bomb = zstd_bomb(300 << 20);
    std::fs::write(&file, &bomb).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    let msg = e.to_string();
    eprintln!("manifest bomb ({} bytes): {msg}", bomb.len());
    assert!(msg.contains("decompresses to more than"), "{msg}");
    assert!(msg.contains(".json.zst"), "{msg}");
    std::fs::write(&file, b"{\"format\": 2}").unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(e.to_string().contains("not zstd-compressed"), "{e}");
    assert_eq!(s.bench.chunk_files(), 0);
}

/// A zstd frame of `n` spaces, compressed in pieces (never `n` bytes in memory).
fn zstd_bomb(n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let block = vec![b' '; 1 << 20];
    for _ in 0..n >> 20 {
        enc.write_all(&block).unwrap();
    }
    enc.finish().unwrap()
}

#[test]
fn a_tampered_manifest_unsigned_or_untrusted_image_is_refused_before_any_chunk() {
    let Some(s) = setup(2) else { return };
    let remote = s3_remote(&s.server, "lib");
    let file = s.manifest_file();
    let good = std::fs::read(&file).unwrap();
    let raw = layout::decompress_document(&good, 1 << 30).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let tampered = text.replacen("\"randomize_guids\": false", "\"randomize_guids\": true", 1);
    assert_ne!(tampered, text);
    std::fs::write(&file, layout::compress_document(tampered.as_bytes())).unwrap();
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

    // Unsigned on the remote (what a push cut off after its manifest leaves).
    let sig = s.signature_file();
    let sig_bytes = std::fs::read(&sig).unwrap();
    std::fs::remove_file(&sig).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(
        matches!(*e.error, LibraryError::Unfinished { .. })
            && e.to_string()
                .contains("has a manifest but no signature yet"),
        "{e}"
    );
    assert!(
        list(&remote).unwrap().is_empty() || remote.url().is_read_only(),
        "an image without its signature is listed"
    );
    std::fs::write(&sig, sig_bytes).unwrap();

    // Signed, but by a key this bench does not trust (it trusts another).
    std::fs::remove_file(s.bench.trusted.join("maint.pub")).unwrap();
    image_store::generate_keypair(&s.bench.dir.join("other-keys"), "other").unwrap();
    std::fs::copy(
        s.bench.dir.join("other-keys/other.pub"),
        s.bench.trusted.join("other.pub"),
    )
    .unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(
        e.to_string().contains("signed by untrusted key maint"),
        "{e}"
    );
    // A bench that trusts no key at all is told so, not that the signer is untrusted.
    std::fs::remove_file(s.bench.trusted.join("other.pub")).unwrap();
    let e = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(
        matches!(*e.error, LibraryError::NoTrustedKeys { .. })
            && e.to_string().contains("no trusted keys in"),
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
    let kept_bytes: u64 = crate::fixture::walk(&s.bench.store.root().join("chunks"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(e.kept > 0, "nothing fetched before the kill: {e}");
    web.restart();
    let r = pull(&remote, &s.image, &s.bench.store, &s.bench.trusted).unwrap();
    assert_eq!(r.fetched + e.kept, r.chunks, "{r:?}");
    assert!(r.fetched > 0);
    crate::same_bytes(&s.maint.export(&s.image), &s.bench.export(&s.image));
    // Nothing fetched twice: the second pull stored exactly the bytes the first did not keep,
    // and its ranges hold only wanted chunks (no gaps read through), so it moved no more.
    let (m, _) = s.maint.store.load_manifest(&s.image).unwrap();
    let size = |store: &image_store::Store, id| {
        std::fs::metadata(store.chunk_path(id)).map_or(0, |m| m.len())
    };
    let ids: std::collections::HashSet<_> = chunk_ids(&m).into_iter().collect();
    let total: u64 = ids.iter().map(|id| size(&s.maint.store, *id)).sum();
    assert_eq!(r.fetched_bytes, total - kept_bytes, "{r:?}");
    assert!(
        r.requests < r.fetched,
        "ranged GETs, not one per chunk: {r:?}"
    );
    for (status, path) in web.requests() {
        assert!(!path.contains("/chunks/"), "{path}");
        if path.contains("/packs/") {
            assert_eq!(status, 206, "{path}: a ranged GET");
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
    // No pack on the remote holds the bad chunk (its pack was never uploaded).
    for p in crate::fixture::walk(&s.server.object_path("lib/packs")) {
        if p.extension().is_some_and(|x| x == "ids") {
            let ids = image_library::packs::PackIds::parse(&std::fs::read(&p).unwrap(), u64::MAX)
                .unwrap();
            assert!(
                ids.chunks.iter().all(|c| c.0 != bad),
                "a bad chunk was published"
            );
        }
    }
    let images: Vec<_> = list(&remote)
        .unwrap()
        .into_iter()
        .map(|i| i.image)
        .collect();
    assert_eq!(images, std::slice::from_ref(&s.image));
    let e = pull(&remote, &v2, &s.bench.store, &s.bench.trusted).unwrap_err();
    assert!(matches!(*e.error, LibraryError::NoSuchImage { .. }), "{e}");
}
