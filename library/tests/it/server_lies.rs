//! A server that lies or stalls at the steps a push and a pull trust least: an upload it
//! says it holds in another size, a signature that is never the one written, and ranged
//! GETs of packs that are never answered. Each refusal is stated, and nothing is listed that
//! is not whole.

use std::time::{Duration, Instant};

use image_library::{LibraryError, RemoteOptions, list, pull, push};
use tek_testkit::servers::{ACCESS_KEY, SECRET_KEY};

use crate::fixture::{Depots, quick, s3_remote, s3_remote_with};
use crate::proxy::{Act, Proxy};

/// The S3 remote `s3://library/lib` through `proxy`.
fn through(proxy: &Proxy, opts: RemoteOptions) -> image_library::Remote {
    s3_remote_with(&proxy.endpoint, "lib", (ACCESS_KEY, SECRET_KEY), opts)
}

/// The server's answer to a HEAD of a pack, with its `Content-Length` made 1.
fn one_byte(resp: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&resp);
    text.split("\r\n")
        .map(
            |l| match l.to_ascii_lowercase().starts_with("content-length:") {
                true => "Content-Length: 1",
                false => l,
            },
        )
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes()
}

#[test]
fn a_pack_the_server_holds_in_another_size_fails_the_push_before_the_manifest() {
    let Some(d) = Depots::new() else { return };
    let v1 = d.maint.import("win11@1", 81, 1, 2);
    let proxy = Proxy::start(&d.server.endpoint(), |first, _| {
        match first.starts_with("HEAD ") && first.contains(".pack ") {
            true => Act::Rewrite(one_byte),
            false => Act::Forward,
        }
    });
    let e = push(
        &d.maint.store,
        &v1,
        &through(&proxy, quick()),
        &d.maint.trusted,
    )
    .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(e, LibraryError::Request { status: None, .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with("uploading s3://library/lib/") && msg.contains(".pack"),
        "{msg}"
    );
    assert!(
        msg.contains("the server acknowledged") && msg.contains("bytes but holds 1"),
        "{msg}"
    );
    assert_eq!(proxy.count("PUT ", "manifest"), 0, "{:?}", proxy.seen);
    assert!(list(&s3_remote(&d.server, "lib")).unwrap().is_empty());
}

#[test]
fn a_signature_that_never_reads_back_as_written_fails_the_push_naming_it() {
    let Some(d) = Depots::new() else { return };
    let v1 = d.maint.import("win11@1", 82, 1, 2);
    let proxy = Proxy::start(&d.server.endpoint(), |first, _| {
        match first.starts_with("GET ") && first.contains(".sig") {
            true => Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot ours!".to_vec()),
            false => Act::Forward,
        }
    });
    let t = Instant::now();
    let e = push(
        &d.maint.store,
        &v1,
        &through(&proxy, quick()),
        &d.maint.trusted,
    )
    .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(
        msg.starts_with("publishing the signature of s3://library/lib/") && msg.contains(".sig"),
        "{msg}"
    );
    assert!(msg.contains("replaced three times"), "{msg}");
    // It was written four times (once, then after each of three read-backs), never more.
    assert_eq!(proxy.count("PUT ", ".sig"), 4, "{:?}", proxy.seen);
}

#[test]
fn stalled_ranged_gets_time_out_without_asking_the_pack_size() {
    let Some(d) = Depots::new() else { return };
    let v1 = d.maint.import("win11@1", 83, 1, 2);
    push(
        &d.maint.store,
        &v1,
        &s3_remote(&d.server, "lib"),
        &d.maint.trusted,
    )
    .unwrap();
    let proxy = Proxy::start(&d.server.endpoint(), |first, head| {
        match first.starts_with("GET ") && first.contains(".pack") && head.contains("\nrange:") {
            true => Act::Stall,
            false => Act::Forward,
        }
    });
    let opts = RemoteOptions {
        timeout: Duration::from_secs(1),
        retries: 1,
        ..quick()
    };
    let t = Instant::now();
    let e = pull(
        &through(&proxy, opts),
        &v1,
        &d.bench.store,
        &d.bench.trusted,
    )
    .unwrap_err();
    let took = t.elapsed();
    let msg = e.to_string();
    eprintln!("stalled ranges ({took:?}): {msg}");
    assert!(
        matches!(*e.error, LibraryError::Request { status: None, .. }),
        "{msg}"
    );
    assert!(msg.contains(".pack bytes "), "{msg}");
    assert!(
        msg.to_lowercase().contains("timed out") || msg.contains("timeout"),
        "{msg}"
    );
    // A HEAD after a timeout would wait out the same retries again.
    assert_eq!(proxy.count("HEAD ", ".pack"), 0, "{:?}", proxy.seen);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!d.bench.store.exists(&v1));
}
