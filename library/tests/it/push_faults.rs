//! Push-side faults against a real `s3s-fs`: the server killed mid-push, two pushes racing from
//! two real processes (different images, the same image), wrong credentials. The remote is
//! never left showing a half image, never loses an image from its index, stays consistent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_library::{LibraryError, RemoteImage, layout, list, pull, push};
use image_store::ImageRef;

use crate::fixture::{
    Depot, Depots, http_remote, quick, s3_remote, s3_remote_as, s3_remote_with, walk,
};
use crate::{binaries, same_bytes};
use tek_testkit::servers::{ACCESS_KEY, Nginx, S3Server, SECRET_KEY};

/// Chunks in the complete packs the server holds under `prefix`: those with their id list
/// (uploaded after the pack; s3s-fs renames a finished upload into place).
fn chunks_in_packs(server: &S3Server, prefix: &str) -> usize {
    walk(&server.object_path(&format!("{prefix}/packs")))
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "ids"))
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| image_library::packs::PackIds::parse(&b, u64::MAX).ok())
        .map(|ids| ids.chunks.len())
        .sum()
}

fn names(images: Vec<RemoteImage>) -> Vec<String> {
    images.into_iter().map(|i| i.image.to_string()).collect()
}

#[test]
fn a_server_killed_mid_push_shows_no_image_and_the_next_push_uploads_only_the_rest() {
    let Some(mut d) = Depots::new() else { return };
    let image = d.maint.import("win11@1", 11, 1, 32);
    let (m, _) = d.maint.store.load_manifest(&image).unwrap();
    let total = crate::fixture::chunk_ids(&m)
        .into_iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    // Small packs, so the kill lands mid-way.
    let opts = image_library::RemoteOptions {
        pack_bytes: 1 << 20,
        ..quick()
    };
    let endpoint = d.server.endpoint();
    let remote = s3_remote_with(&endpoint, "lib", (ACCESS_KEY, SECRET_KEY), opts);
    let failed = std::thread::scope(|s| {
        let (maint, remote, image) = (&d.maint, &remote, &image);
        let pushing =
            s.spawn(move || push(&maint.store, image, remote, &maint.trusted).map_err(Box::new));
        let deadline = Instant::now() + Duration::from_secs(30);
        while chunks_in_packs(&d.server, "lib") < total / 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        d.server.kill();
        pushing.join().expect("push thread")
    });
    let e = failed.expect_err("the push outlived the server");
    assert!(matches!(*e, LibraryError::Request { .. }), "{e}");
    eprintln!("killed mid-push: {e}");
    let kept = chunks_in_packs(&d.server, "lib");
    assert!(kept > 0 && kept < total, "{kept} of {total}");
    assert!(!d.server.object_path("lib/images").exists());

    d.server.restart();
    assert!(list(&remote).unwrap().is_empty(), "a half push is visible");
    let e = pull(&remote, &image, &d.bench.store, &d.bench.trusted).unwrap_err();
    assert!(matches!(*e.error, LibraryError::NoSuchImage { .. }), "{e}");
    let r = push(&d.maint.store, &image, &remote, &d.maint.trusted).unwrap();
    assert_eq!(
        (r.present, r.uploaded, r.was_remote),
        (kept as u64, (total - kept) as u64, false)
    );
    assert_eq!(names(list(&remote).unwrap()), ["win11@1"]);
    pull(&remote, &image, &d.bench.store, &d.bench.trusted).unwrap();
    same_bytes(&d.maint.export(&image), &d.bench.export(&image));
}

/// What a child push process is told (see [`child_push_process`]).
const CHILD_ENV: &str = "TEK_TEST_PUSH_CHILD";

/// Not a test of its own: the body of a second push process. The racing tests run this test
/// binary again with [`CHILD_ENV`] set to `ENDPOINT|PREFIX|STORE|TRUSTED|IMAGE|GO`; it waits
/// for the file GO, pushes, and prints the report's `uploaded was_remote`.
#[test]
fn child_push_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let [endpoint, prefix, store, trusted, image, go] = f[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let store = image_store::Store::open(Path::new(store)).unwrap();
    let remote = s3_remote_with(endpoint, prefix, (ACCESS_KEY, SECRET_KEY), quick());
    let image: ImageRef = image.parse().unwrap();
    while !Path::new(go).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    match push(&store, &image, &remote, Path::new(trusted)) {
        Ok(r) => println!("PUSHED {} {}", r.uploaded, r.was_remote),
        Err(e @ LibraryError::Conflict { .. }) => println!("CONFLICT: {e}"),
        Err(e) => panic!("{e}"),
    }
}

/// Starts one push process per image, released together; returns each one's
/// `(uploaded, was_remote)`.
fn race(d: &Depots, prefix: &str, images: &[&ImageRef]) -> Vec<(u64, bool)> {
    let from: Vec<(&Depot, &ImageRef)> = images.iter().map(|i| (&d.maint, *i)).collect();
    race_from(d, prefix, &from)
        .into_iter()
        .map(|r| r.unwrap_or_else(|| panic!("a push refused as a conflict")))
        .collect()
}

/// [`race`] with each push from its own depot: None for a push refused as a conflict.
fn race_from(d: &Depots, prefix: &str, pushes: &[(&Depot, &ImageRef)]) -> Vec<Option<(u64, bool)>> {
    let go = d.dir.join(format!("go-{prefix}"));
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<Child> = pushes
        .iter()
        .map(|(depot, image)| {
            let spec = [
                d.server.endpoint(),
                prefix.to_string(),
                depot.store.root().display().to_string(),
                depot.trusted.display().to_string(),
                image.to_string(),
                go.display().to_string(),
            ]
            .join("|");
            Command::new(&exe)
                .args(["--exact", "push_faults::child_push_process", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(CHILD_ENV, spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting a push process")
        })
        .collect();
    // Both are up (a test binary starts in milliseconds); release them at once.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&go, b"").unwrap();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("waiting for a push process");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "push process failed: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            if stdout.lines().any(|l| l.contains("CONFLICT: ")) {
                return None;
            }
            let line = stdout
                .lines()
                .find_map(|l| l.split_once("PUSHED ").map(|(_, r)| r))
                .unwrap_or_else(|| panic!("no report in {stdout}"));
            let (n, was) = line.split_once(' ').unwrap();
            Some((n.parse().unwrap(), was == "true"))
        })
        .collect()
}

#[test]
fn of_two_benches_pushing_different_contents_under_one_name_at_once_the_winner_is_pullable() {
    let Some(d) = Depots::new() else { return };
    // Same key, same name, different bytes: two benches that both imported "z@1".
    let other = Depot::new(&d.dir.join("other"), &d.dir.join("keys"));
    let z = d.maint.import("z@1", 31, 1, 2);
    other.import("z@1", 32, 1, 2);
    // The loser used to write its signature before its manifest lost the claim, over the
    // winner's: an image whose signature does not match its manifest, its push told success.
    for round in 0..4 {
        let prefix = format!("claim{round}");
        let got = race_from(&d, &prefix, &[(&d.maint, &z), (&other, &z)]);
        assert_eq!(
            got.iter().filter(|r| r.is_none()).count(),
            1,
            "round {round}: one push wins, the other is refused: {got:?}"
        );
        let puller = Depot::new(&d.dir.join(format!("pull{round}")), &d.dir.join("keys"));
        let s3 = s3_remote(&d.server, &prefix);
        let r = image_library::pull(&s3, &z, &puller.store, &puller.trusted)
            .unwrap_or_else(|e| panic!("round {round}: the winner's image cannot be pulled: {e}"));
        let winner = if got[0].is_some() { &d.maint } else { &other };
        assert_eq!(
            std::fs::read(puller.export(&r.image)).unwrap(),
            std::fs::read(winner.export(&z)).unwrap(),
            "round {round}: the library holds the winner's image"
        );
    }
}

/// nginx serving the bucket, and an HTTP remote for `prefix` (which lists through index.json).
fn http_of(d: &Depots, prefix: &str) -> (Nginx, image_library::Remote) {
    let (_, ng) = binaries().expect("binaries checked by Depots::new");
    let nginx = Nginx::start(
        &ng,
        &d.server.root.join(tek_testkit::servers::BUCKET),
        &d.dir.join(format!("nginx-{prefix}")),
        None,
    );
    let remote = http_remote(&nginx.url(prefix), &quick());
    (nginx, remote)
}

#[test]
fn two_processes_pushing_different_images_at_once_both_land_in_the_index() {
    let Some(d) = Depots::new() else { return };
    let a = d.maint.import("alpha@1", 21, 1, 2);
    let b = d.maint.import("beta@1", 22, 1, 2);
    // The lost update needs the two index writes to interleave; a few rounds make it likely
    // for an index written without checking.
    for round in 0..6 {
        let prefix = format!("race{round}");
        race(&d, &prefix, &[&a, &b]);
        let s3 = s3_remote(&d.server, &prefix);
        assert_eq!(names(list(&s3).unwrap()), ["alpha@1", "beta@1"]);
        let (_nginx, http) = http_of(&d, &prefix);
        assert_eq!(
            names(list(&http).unwrap()),
            ["alpha@1", "beta@1"],
            "round {round}: index.json lost an image"
        );
    }
}

#[test]
fn two_processes_pushing_the_same_image_at_once_both_succeed_and_the_remote_is_whole() {
    let Some(d) = Depots::new() else { return };
    let image = d.maint.import("win11@1", 31, 1, 8);
    let reports = race(&d, "same", &[&image, &image]);
    eprintln!("same image twice: {reports:?}");
    let (m, _) = d.maint.store.load_manifest(&image).unwrap();
    let distinct = crate::fixture::chunk_ids(&m)
        .into_iter()
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    // Each chunk went up at least once (both may upload one; the content is the same).
    assert!(reports.iter().map(|r| r.0).sum::<u64>() >= distinct);
    let s3 = s3_remote(&d.server, "same");
    assert_eq!(names(list(&s3).unwrap()), ["win11@1"]);
    let (_nginx, http) = http_of(&d, "same");
    assert_eq!(names(list(&http).unwrap()), ["win11@1"]);
    let r = pull(&http, &image, &d.bench.store, &d.bench.trusted).unwrap();
    assert!(r.signature.is_valid());
    same_bytes(&d.maint.export(&image), &d.bench.export(&image));
    // A third push finds it whole.
    let p = push(&d.maint.store, &image, &s3, &d.maint.trusted).unwrap();
    assert_eq!((p.uploaded, p.was_remote), (0, true));
}

#[test]
fn a_push_with_wrong_credentials_is_refused_clearly_and_writes_nothing() {
    let Some(d) = Depots::new() else { return };
    let image = d.maint.import("win11@1", 41, 1, 2);
    let wrong = "wrong-secret-Lp27";
    for (id, secret) in [
        (ACCESS_KEY, wrong),
        ("no-such-key", wrong),
        (ACCESS_KEY, ""),
    ] {
        let remote = s3_remote_as(&d.server, "fresh", id, secret);
        let e = push(&d.maint.store, &image, &remote, &d.maint.trusted).unwrap_err();
        let (msg, debug) = (e.to_string(), format!("{e:?}"));
        eprintln!("push as {id}: {msg}");
        assert!(matches!(e, LibraryError::Denied { .. }), "{msg}");
        assert!(msg.contains("refused the credentials"), "{msg}");
        assert!(msg.contains("s3://library/fresh/"), "{msg}");
        for s in [&msg, &debug] {
            assert!(!s.contains(wrong) && !s.contains(SECRET_KEY), "{s}");
        }
    }
    let written: Vec<PathBuf> = walk(&d.server.object_path("fresh"));
    assert!(written.is_empty(), "{written:?}");
    assert!(!d.server.object_path(layout::INFO_KEY).exists());
}

/// A TCP proxy to `upstream` that holds back, by `delay`, every piece of a request stream
/// that uploads `index.json`: a push slowed between its listing of `images/` and its index
/// write, the window in which a racing push's image could be lost.
struct SlowIndexProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowIndexProxy {
    fn start(upstream: u16, delay: Duration) -> SlowIndexProxy {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = client.read(&mut buf) {
                        let piece = &buf[..n];
                        let has = |w: &[u8]| piece.windows(w.len()).any(|x| x == w);
                        if has(b"PUT ") && has(b"index.json") {
                            std::thread::sleep(delay);
                        }
                        if server.write_all(piece).is_err() {
                            break;
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowIndexProxy { port, stop }
    }
}

impl Drop for SlowIndexProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_push_whose_index_write_lands_after_a_racing_push_still_leaves_both_images_listed() {
    let Some(d) = Depots::new() else { return };
    let a = d.maint.import("alpha@1", 51, 1, 2);
    let b = d.maint.import("beta@1", 52, 1, 2);
    let proxy = SlowIndexProxy::start(d.server.port, Duration::from_secs(2));
    let slow = s3_remote_with(
        &format!("http://127.0.0.1:{}", proxy.port),
        "lib",
        (ACCESS_KEY, SECRET_KEY),
        image_library::RemoteOptions {
            timeout: Duration::from_secs(10),
            ..quick()
        },
    );
    let fast = s3_remote(&d.server, "lib");
    let alpha = d
        .server
        .object_path(&format!("lib/{}", layout::Layout::Packs.manifest_key(&a)));
    std::thread::scope(|s| {
        let pushing =
            s.spawn(|| push(&d.maint.store, &a, &slow, &d.maint.trusted).map_err(Box::new));
        // alpha is committed and its push is listing `images/` or held at its index write:
        // beta's whole push (index included) happens inside that window.
        while !alpha.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        push(&d.maint.store, &b, &fast, &d.maint.trusted).unwrap();
        pushing.join().unwrap().unwrap();
    });
    let (_nginx, http) = http_of(&d, "lib");
    assert_eq!(names(list(&http).unwrap()), ["alpha@1", "beta@1"]);
}
