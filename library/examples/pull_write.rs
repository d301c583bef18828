//! Pull-and-write, for `bench/library.sh` (issue 14: an image written onto a disk while it is
//! pulled, against the same write from a full local cache). A bench program:
//!
//! ```text
//! pull_write STORE TRUSTED NAME@VERSION URL TARGET
//!     the store lacks the image: pulls it from URL into STORE while the imager writes TARGET
//!     from it (Store::with_arrivals, as a bench's job does); the store has it: writes TARGET
//!     from the store alone.
//! ```
//!
//! Prints one line of JSON: seconds (until the write is verified and the pull committed),
//! whether it pulled, when the pull had committed (`pull_seconds`, null without a pull), bytes written, the
//! imager's phase durations, and the write's result. S3 settings from `AWS_*`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image_library::{Pull, Remote, RemoteOptions, RemoteUrl, S3Settings};
use image_store::{Arrivals, ImageRef, Store};
use imager::{ImageSource, WriteOptions};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, trusted, image, url, target] = &args[..] else {
        return Err("usage: see the doc comment of library/examples/pull_write.rs".into());
    };
    let started = Instant::now();
    let store = Store::open(Path::new(store))?;
    let trusted = Path::new(trusted);
    let image: ImageRef = image.parse()?;
    let targets = [PathBuf::from(target)];
    let opts = WriteOptions::default();
    let pulled = !store.exists(&image);
    let mut pull_seconds = None;
    let report = if pulled {
        let opts_remote = RemoteOptions {
            s3: S3Settings::from_env(),
            ..RemoteOptions::default()
        };
        let remote = Remote::open(&RemoteUrl::parse(url)?, &opts_remote)?;
        let arrivals = Arrivals::new([]);
        let reading = store.with_arrivals(arrivals);
        let pull = Pull::start(&remote, &image, &reading, trusted)?;
        let source = ImageSource::Stored {
            store: Arc::new(reading.clone()),
            image: pull.image().clone(),
        };
        let fetch = std::thread::spawn(move || {
            let r = pull.run(&|_| {});
            (r, started.elapsed().as_secs_f64())
        });
        let reports = imager::write_image(&source, &targets, &opts, None);
        let (r, done) = fetch.join().expect("pull thread");
        r?;
        pull_seconds = Some(done);
        reports
    } else {
        let loaded = store.load(&image, trusted)?;
        let source = ImageSource::Stored {
            store: Arc::new(store.clone()),
            image: loaded,
        };
        imager::write_image(&source, &targets, &opts, None)
    };
    let r = &report[0];
    println!(
        "{{\"seconds\": {:.2}, \"pulled\": {pulled}, \"pull_seconds\": {}, \"bytes_written\": {}, \"direct_io\": {}, \"durations\": {}, \"ok\": {}}}",
        started.elapsed().as_secs_f64(),
        pull_seconds.map_or("null".to_string(), |s| format!("{s:.2}")),
        r.bytes_written,
        r.direct_io,
        serde_json::to_string(&r.durations)?,
        r.ok()
    );
    if !r.ok() {
        return Err(format!("the write failed: {}", serde_json::to_string(&r.result)?).into());
    }
    Ok(())
}
