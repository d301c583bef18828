//! Decompression bombs against `Store::import`: made at test time (nothing big is committed), each
//! must be refused within seconds with `ExpansionLimit`, leaving no manifest, chunk or temporary
//! behind. Numbers and reasoning: ARCHITECTURE.md, "Decompression bombs".

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use image_store::{
    DecodeLimits, ImageRef, ImportOptions, LimitExceeded, Store, StoreError, source::Source,
};

const MIB: usize = 1 << 20;

/// One zstd frame of `blocks` RLE blocks of 128 KiB of zeros each: 4 bytes of input per 128 KiB
/// of output (32768:1, zstd's limit), so 1 MiB of file decodes to 32 GiB. `declared` puts a
/// Frame_Content_Size in the header.
fn zstd_rle_bomb(blocks: usize, declared: Option<u64>) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    match declared {
        // FHD: FCS field 8 bytes, no single segment, no checksum; window 2^17 (128 KiB).
        Some(size) => {
            f.extend_from_slice(&[0xC0, 7 << 3]);
            f.extend_from_slice(&size.to_le_bytes());
        }
        None => f.extend_from_slice(&[0x00, 7 << 3]),
    }
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = last | (1 << 1) | ((128 << 10) << 3); // Last_Block, RLE, Block_Size
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// Concatenated copies of one compressed stream of `unit` zeros (multi-member gzip,
/// multi-stream xz) until the file reaches 1 MiB.
fn repeated(one: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIB + one.len());
    while out.len() < MIB {
        out.extend_from_slice(&one);
    }
    out
}

fn gzip_bomb() -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 8 * MIB]).unwrap();
    repeated(e.finish().unwrap())
}

fn xz_bomb() -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(&vec![0u8; 8 * MIB]).unwrap();
    repeated(e.finish().unwrap())
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("store")).unwrap();
    (d, s)
}

/// Every file under `dir` (recursively), relative names.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

fn assert_nothing_left(s: &Store) {
    for sub in ["images", "chunks", "tmp"] {
        let left = files(&s.root().join(sub));
        assert!(left.is_empty(), "{sub}/ holds {left:?}");
    }
}

fn import(s: &Store, file: &Path, limits: DecodeLimits) -> (Result<(), StoreError>, Duration) {
    let t = Instant::now();
    let opts = ImportOptions {
        limits,
        ..ImportOptions::default()
    };
    let r = s.import(&ImageRef::new("bomb", "1").unwrap(), file, &opts, None);
    (r.map(|_| ()), t.elapsed())
}

/// Reads a source to its end (or first error) in import-sized buffers.
fn drain(file: &Path, limits: DecodeLimits) -> (Result<u64, StoreError>, Duration) {
    let t = Instant::now();
    let mut src = Source::open_with(file, limits).unwrap();
    let mut buf = vec![0u8; 8 * MIB];
    let mut total = 0u64;
    let r = loop {
        match src.fill(&mut buf) {
            Ok(n) => {
                total += n as u64;
                if n < buf.len() {
                    break Ok(total);
                }
            }
            Err(e) => break Err(e),
        }
    };
    (r, t.elapsed())
}

#[test]
fn zstd_bomb_is_refused_by_the_ratio_within_seconds() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("bomb.img.zst");
    std::fs::write(&file, zstd_rle_bomb(MIB / 4, None)).unwrap();
    assert!(std::fs::metadata(&file).unwrap().len() <= MIB as u64 + 16);
    // It is a valid zstd stream of zeros (32 GiB of them): the first MiB decodes.
    let mut head = vec![1u8; MIB];
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(&file).unwrap()).unwrap();
    std::io::Read::read_exact(&mut dec, &mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));

    // Default limits: refused after 1 GiB of output, by the decoder the import reads through.
    let (r, took) = drain(&file, DecodeLimits::default());
    match r {
        Err(StoreError::ExpansionLimit {
            format: "zstd",
            limit: LimitExceeded::Ratio { decoded, limit, .. },
            ..
        }) => {
            assert_eq!(limit, DecodeLimits::DEFAULT_MAX_RATIO);
            // Stopped at the first read past the point where the ratio counts.
            assert!(
                decoded <= DecodeLimits::DEFAULT_RATIO_AFTER + (8 << 20),
                "{decoded}"
            );
        }
        other => panic!("expected a ratio refusal, got {other:?}"),
    }
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let msg = drain(&file, DecodeLimits::default())
        .0
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("decompression bomb") && msg.contains("8192:1"),
        "{msg}"
    );
}

#[test]
fn import_of_a_zstd_bomb_is_refused_and_leaves_nothing() {
    // The whole import pipeline (segmenter, hashers, workers) on the bomb, with smaller
    // numbers (ratio 1024:1 counted from 64 MiB; the decoder reads its input 128 KiB ahead, so
    // it trips at 128 MiB) so that an unoptimized test build gets there in seconds; the
    // defaults are the test above.
    let (d, s) = store();
    let file = d.path().join("bomb.img.zst");
    std::fs::write(&file, zstd_rle_bomb(MIB / 4, None)).unwrap();
    let limits = DecodeLimits {
        ratio_after: 64 << 20,
        max_ratio: 1024,
        ..DecodeLimits::default()
    };
    let (r, took) = import(&s, &file, limits);
    assert!(
        matches!(
            r,
            Err(StoreError::ExpansionLimit {
                limit: LimitExceeded::Ratio { .. },
                ..
            })
        ),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_nothing_left(&s);
}

#[test]
fn zstd_header_declaring_a_petabyte_is_refused_before_decoding() {
    let (d, s) = store();
    let file = d.path().join("claims-1PiB.zst");
    std::fs::write(&file, zstd_rle_bomb(MIB / 4, Some(1 << 50))).unwrap();
    let (r, took) = import(&s, &file, DecodeLimits::default());
    match r {
        Err(StoreError::ExpansionLimit {
            limit: LimitExceeded::Declared { declared, limit },
            ..
        }) => assert_eq!((declared, limit), (1 << 50, 64 << 40)),
        other => panic!("expected a declared-size refusal, got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_nothing_left(&s);
}

#[test]
fn every_format_stops_at_the_maximum_size() {
    // The default maximum (64 TiB) cannot be reached in a test; the same check with 128 MiB.
    let limits = DecodeLimits {
        max_size: 128 << 20,
        ..DecodeLimits::default()
    };
    for (name, bytes) in [
        ("zstd", zstd_rle_bomb(MIB / 4, None)),
        ("gzip", gzip_bomb()),
        ("xz", xz_bomb()),
    ] {
        let (d, s) = store();
        let file = d.path().join(format!("bomb.{name}"));
        std::fs::write(&file, &bytes).unwrap();
        let (r, took) = import(&s, &file, limits);
        match r {
            Err(StoreError::ExpansionLimit {
                format,
                limit: LimitExceeded::Size { decoded, limit },
                ..
            }) => {
                assert_eq!(format, name);
                assert_eq!(limit, 128 << 20);
                assert!(
                    decoded > limit && decoded <= limit + (8 << 20),
                    "{name}: {decoded}"
                );
            }
            other => panic!("{name}: expected a size refusal, got {other:?}"),
        }
        assert!(took < Duration::from_secs(30), "{name} took {took:?}");
        assert_nothing_left(&s);
    }
}

#[test]
fn a_sparse_raw_file_larger_than_the_maximum_is_refused_up_front() {
    let (d, s) = store();
    let file = d.path().join("huge.img");
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(1 << 40).unwrap(); // 1 TiB, sparse
    let limits = DecodeLimits {
        max_size: 1 << 30,
        ..DecodeLimits::default()
    };
    let (r, took) = import(&s, &file, limits);
    assert!(
        matches!(
            r,
            Err(StoreError::ExpansionLimit {
                limit: LimitExceeded::Declared { .. },
                ..
            })
        ),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(2));
    assert_nothing_left(&s);
}

#[test]
fn the_ratio_guard_lets_real_looking_images_through() {
    // Mostly zeros with some data every few MiB, about 50:1 overall, 1.5 GiB decoded (past the
    // point where the ratio counts): accepted, decoded to the end.
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let data: Vec<u8> = (0..64 << 10)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let zeros = vec![0u8; 4 * MIB];
    for _ in 0..384 {
        e.write_all(&data).unwrap();
        e.write_all(&zeros[..4 * MIB - data.len()]).unwrap();
    }
    let bytes = e.finish().unwrap();
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("sparse.zst");
    std::fs::write(&file, &bytes).unwrap();
    let total = drain(&file, DecodeLimits::default()).0.unwrap();
    assert_eq!(total, 384 * 4 * MIB as u64);
}
