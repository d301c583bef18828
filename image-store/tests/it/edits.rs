//! Editing and checking stored images: `set_hints` and its signature rules, concurrent edits
//! (threads, each with its own `Store` like separate processes), and what `verify` says about
//! chunks shared between images of one run.

use image_store::{
    CheckedChunks, ImageRef, ImportOptions, Resign, SetHints, SigningKey, Store, StoreError,
    generate_keypair,
};

fn pseudo(n: usize, seed: u64) -> Vec<u8> {
    tek_testkit::bytes(seed, n)
}

fn r(s: &str) -> ImageRef {
    s.parse().unwrap()
}

/// A `--all` run reads a shared chunk once, and the later image's report says where its
/// chunks were checked instead of "0 chunks checked".
#[test]
fn verify_names_the_image_a_shared_chunk_was_checked_under() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let one = d.path().join("one.img");
    let mut data = pseudo(1 << 20, 5);
    std::fs::write(&one, &data).unwrap();
    data.extend(pseudo(1 << 20, 6));
    let two = d.path().join("two.img");
    std::fs::write(&two, &data).unwrap();
    let opts = ImportOptions::default();
    store.import(&r("a@1"), &one, &opts, None).unwrap();
    store.import(&r("b@1"), &one, &opts, None).unwrap();
    store.import(&r("c@1"), &two, &opts, None).unwrap();
    let mut checked = CheckedChunks::new();
    let a = store.verify(&r("a@1"), false, &mut checked).unwrap();
    assert!(
        a.ok() && a.chunks > 0 && a.chunks_checked == a.chunks,
        "{a:?}"
    );
    assert!(a.already_checked.is_empty());
    assert_eq!(a.checked_summary(), format!("{} chunks checked", a.chunks));
    let b = store.verify(&r("b@1"), false, &mut checked).unwrap();
    assert_eq!((b.chunks, b.chunks_checked), (a.chunks, 0));
    assert_eq!(
        b.checked_summary(),
        format!("{} chunks, all already checked for a@1", a.chunks)
    );
    let c = store.verify(&r("c@1"), false, &mut checked).unwrap();
    assert!(c.chunks_checked > 0 && c.chunks > c.chunks_checked, "{c:?}");
    assert_eq!(c.already_checked[0].image, "a@1");
    assert!(
        c.checked_summary().contains("already checked for a@1"),
        "{}",
        c.checked_summary()
    );
    // deep reads everything again.
    let deep = store.verify(&r("b@1"), true, &mut checked).unwrap();
    assert_eq!(deep.chunks_checked, deep.chunks);
    assert!(
        deep.checked_summary()
            .ends_with("whole-image SHA-256 and BLAKE3 match")
    );
}

/// `set_hints` keeps a signature unless told: unchanged hints write nothing, a change under
/// `Resign::Keep` is the typed `WouldUnsign`, `Resign::With` re-signs validly.
#[test]
fn set_hints_never_drops_a_signature_silently() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let trusted = d.path().join("trusted");
    let (sk, pk) = generate_keypair(&d.path().join("keys"), "maint").unwrap();
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(&pk, trusted.join("maint.pub")).unwrap();
    let key = SigningKey::load(&sk).unwrap();
    let src = d.path().join("a.img");
    std::fs::write(&src, pseudo(1 << 20, 5)).unwrap();
    store
        .import(&r("a@1"), &src, &ImportOptions::default(), Some(&key))
        .unwrap();
    let sig = store.signature_path(&r("a@1"));
    let before = std::fs::read(&sig).unwrap();
    let (m, _) = store.load_manifest(&r("a@1")).unwrap();
    let same = store
        .set_hints(&r("a@1"), |h| h.clone(), Resign::Keep)
        .unwrap();
    assert_eq!(same, SetHints::Unchanged);
    let mut changed = m.hints.clone();
    changed.randomize_guids = !changed.randomize_guids;
    let e = store
        .set_hints(&r("a@1"), |_| changed.clone(), Resign::Keep)
        .unwrap_err();
    assert!(matches!(e, StoreError::WouldUnsign { .. }), "{e}");
    assert_eq!(std::fs::read(&sig).unwrap(), before);
    assert!(
        store
            .load(&r("a@1"), &trusted)
            .unwrap()
            .signature
            .is_valid()
    );
    let done = store
        .set_hints(&r("a@1"), |_| changed, Resign::With(&key))
        .unwrap();
    assert!(matches!(
        done,
        SetHints::Updated {
            signed_by: Some(_),
            ..
        }
    ));
    assert!(
        store
            .load(&r("a@1"), &trusted)
            .unwrap()
            .signature
            .is_valid()
    );
}

/// Two maintainers change different hints of one image at once (threads, each with its own
/// `Store` like two processes): both changes survive, every round.
#[test]
fn concurrent_set_hints_lose_no_change() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("store");
    let store = Store::open(&root).unwrap();
    let src = d.path().join("a.img");
    std::fs::write(&src, pseudo(256 << 10, 9)).unwrap();
    store
        .import(&r("a@1"), &src, &ImportOptions::default(), None)
        .unwrap();
    for round in 0..20 {
        store
            .set_hints(&r("a@1"), |_| Default::default(), Resign::Keep)
            .unwrap();
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let (root, barrier) = (&root, &barrier);
            let path = s.spawn(move || {
                let st = Store::open(root).unwrap();
                barrier.wait();
                st.set_hints(
                    &r("a@1"),
                    |h| {
                        let mut h = h.clone();
                        h.data_path = Some(format!("/round{round}"));
                        h
                    },
                    Resign::Keep,
                )
                .unwrap()
            });
            let guids = s.spawn(move || {
                let st = Store::open(root).unwrap();
                barrier.wait();
                st.set_hints(
                    &r("a@1"),
                    |h| {
                        let mut h = h.clone();
                        h.randomize_guids = true;
                        h
                    },
                    Resign::Keep,
                )
                .unwrap()
            });
            path.join().unwrap();
            guids.join().unwrap();
        });
        let (m, _) = store.load_manifest(&r("a@1")).unwrap();
        assert_eq!(
            m.hints.data_path,
            Some(format!("/round{round}")),
            "round {round}"
        );
        assert!(m.hints.randomize_guids, "round {round}: a change was lost");
    }
}
