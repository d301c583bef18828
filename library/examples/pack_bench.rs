//! The pack-file half of issue 14's layout measurement (`bench/library.sh` runs it): the same
//! stored bytes as the one-object-per-chunk layout, but many chunks per object, fetched with
//! ranged GETs through a per-image index, as bita does. A bench program, not a product format:
//!
//! ```text
//! pack_bench push STORE NAME@VERSION s3://BUCKET/PREFIX PACK_MIB
//!     chunks of the image not yet in a pack (per the indexes already under packs/) are
//!     concatenated in image order into packs of at most PACK_MIB, uploaded 16 in flight;
//!     then packs/NAME/VERSION.idx (chunk id -> pack, offset, length) for every chunk.
//! pack_bench pull STORE MAINT_STORE TRUSTED NAME@VERSION URL
//!     reads the image's index from URL (s3:// or http://), fetches what STORE lacks with
//!     ranged GETs (adjacent chunks of a pack merged, gaps up to 256 KiB read through, at most
//!     16 MiB a request, 8 in flight), checks and stores every chunk like `tek image pull`
//!     (`Incoming::add_chunk`), and commits the manifest and signature taken from MAINT_STORE.
//! ```
//!
//! Prints one line of JSON: seconds, requests, bytes transferred. S3 settings from `AWS_*`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use image_store::{ChunkId, CompressedChunk, Extent, ImageRef, Store};
use object_store::path::Path as OPath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MERGE_GAP: u64 = 256 << 10;
const MAX_RANGE: u64 = 16 << 20;

/// Where a chunk lives: pack key, offset, compressed length.
type Loc = (String, u64, u64);

struct Client {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Client {
    fn open(url: &str) -> Res<Client> {
        let opts = ClientOptions::new()
            .with_allow_http(true)
            .with_pool_max_idle_per_host(16);
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let env = |k: &str| std::env::var(k).unwrap_or_default();
            let s3 = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_endpoint(env("AWS_ENDPOINT_URL"))
                .with_access_key_id(env("AWS_ACCESS_KEY_ID"))
                .with_secret_access_key(env("AWS_SECRET_ACCESS_KEY"))
                .with_virtual_hosted_style_request(false)
                .with_client_options(opts)
                .build()?;
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", prefix.trim_end_matches('/'))
            };
            return Ok(Client::new(Arc::new(s3), prefix));
        }
        let http = object_store::http::HttpBuilder::new()
            .with_url(url)
            .with_client_options(opts)
            .build()?;
        Ok(Client::new(Arc::new(http), String::new()))
    }

    fn new(store: Arc<dyn ObjectStore>, prefix: String) -> Client {
        Client {
            store,
            prefix,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn path(&self, key: &str) -> OPath {
        OPath::from(format!("{}{key}", self.prefix))
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Res<()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.store
            .put(&self.path(key), PutPayload::from(data))
            .await?;
        Ok(())
    }

    async fn get(&self, key: &str, range: Option<std::ops::Range<u64>>) -> Res<bytes::Bytes> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let b = self
            .store
            .get_opts(&self.path(key), opts)
            .await?
            .bytes()
            .await?;
        self.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    fn report(&self, started: Instant, extra: &str) {
        println!(
            "{{\"seconds\": {:.2}, \"requests\": {}, \"bytes\": {}{extra}}}",
            started.elapsed().as_secs_f64(),
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed)
        );
    }
}

fn index_key(image: &ImageRef) -> String {
    format!("packs/{}/{}.idx", image.name, image.version)
}

/// An index: one line per chunk, `ID PACK OFFSET LEN`.
fn parse_index(text: &str) -> Res<HashMap<ChunkId, Loc>> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [id, pack, off, len] = f[..] else {
            return Err(format!("bad index line {line:?}").into());
        };
        out.insert(
            ChunkId::from_hex(id)?,
            (pack.to_string(), off.parse()?, len.parse()?),
        );
    }
    Ok(out)
}

fn distinct(store: &Store, image: &ImageRef) -> Res<Vec<(ChunkId, u64, u64)>> {
    let (m, _) = store.load_manifest(image)?;
    let mut seen = HashSet::new();
    Ok(m.extents
        .iter()
        .filter_map(|e| match *e {
            Extent::Chunk { id, offset, len } if seen.insert(id) => Some((id, offset, len)),
            _ => None,
        })
        .collect())
}

async fn push(store: &Store, image: &ImageRef, c: &Client, pack_mib: u64) -> Res<()> {
    let started = Instant::now();
    let mut known: HashMap<ChunkId, Loc> = HashMap::new();
    c.requests.fetch_add(1, Ordering::Relaxed);
    let idx: Vec<_> = c.store.list(Some(&c.path("packs"))).try_collect().await?;
    for meta in idx.iter().filter(|m| m.location.as_ref().ends_with(".idx")) {
        let key = meta.location.as_ref().strip_prefix(&c.prefix).unwrap_or("");
        let text = c.get(key, None).await?;
        known.extend(parse_index(std::str::from_utf8(&text)?)?);
    }
    let chunks = distinct(store, image)?;
    // Build packs in image order from the chunks no pack holds yet.
    let mut packs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut members: Vec<(ChunkId, u64, u64)> = Vec::new();
    let mut flush = |current: &mut Vec<u8>,
                     members: &mut Vec<(ChunkId, u64, u64)>,
                     known: &mut HashMap<ChunkId, Loc>| {
        if current.is_empty() {
            return;
        }
        let key = format!("packs/{}.pack", ChunkId::of(current).to_hex());
        for (id, off, len) in members.drain(..) {
            known.insert(id, (key.clone(), off, len));
        }
        packs.push((key, std::mem::take(current)));
    };
    for &(id, offset, len) in &chunks {
        if known.contains_key(&id) {
            continue;
        }
        let data = store.read_compressed(id, offset, len)?.data;
        if current.len() as u64 + data.len() as u64 > pack_mib << 20 {
            flush(&mut current, &mut members, &mut known);
        }
        members.push((id, current.len() as u64, data.len() as u64));
        current.extend_from_slice(&data);
    }
    flush(&mut current, &mut members, &mut known);
    let uploaded = packs.len();
    futures::stream::iter(packs)
        .map(|(key, data)| async move { c.put(&key, data).await })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let mut index = String::new();
    for (id, _, _) in &chunks {
        let (pack, off, len) = &known[id];
        index.push_str(&format!("{} {pack} {off} {len}\n", id.to_hex()));
    }
    c.put(&index_key(image), index.into_bytes()).await?;
    c.report(started, &format!(", \"packs\": {uploaded}"));
    Ok(())
}

/// One ranged GET: a pack, a byte range, and the chunks in it (id, offset in pack, compressed
/// length, uncompressed length).
struct Span {
    pack: String,
    start: u64,
    end: u64,
    chunks: Vec<(ChunkId, u64, u64, u64)>,
}

fn plan(wanted: &[image_store::WantedChunk], index: &HashMap<ChunkId, Loc>) -> Res<Vec<Span>> {
    let mut by_pack: BTreeMap<&str, Vec<(ChunkId, u64, u64, u64)>> = BTreeMap::new();
    for w in wanted {
        let (pack, off, clen) = index
            .get(&w.id)
            .ok_or_else(|| format!("chunk {} in no pack", w.id))?;
        by_pack
            .entry(pack)
            .or_default()
            .push((w.id, *off, *clen, w.len));
    }
    let mut spans = Vec::new();
    for (pack, mut cs) in by_pack {
        cs.sort_by_key(|c| c.1);
        let mut cur: Option<Span> = None;
        for c in cs {
            let (off, end) = (c.1, c.1 + c.2);
            match &mut cur {
                Some(s) if off <= s.end + MERGE_GAP && end - s.start <= MAX_RANGE => {
                    s.end = end;
                    s.chunks.push(c);
                }
                _ => {
                    spans.extend(cur.take());
                    cur = Some(Span {
                        pack: pack.to_string(),
                        start: off,
                        end,
                        chunks: vec![c],
                    });
                }
            }
        }
        spans.extend(cur);
    }
    Ok(spans)
}

async fn pull(
    store: &Store,
    maint: &Store,
    trusted: &std::path::Path,
    image: &ImageRef,
    c: &Client,
) -> Res<()> {
    let started = Instant::now();
    let (manifest, manifest_bytes) = maint.load_manifest(image)?;
    let sig = std::fs::read(maint.signature_path(image))?;
    let index = parse_index(std::str::from_utf8(&c.get(&index_key(image), None).await?)?)?;
    let incoming = Arc::new(store.receive()?);
    let wanted = incoming.wanted(&manifest)?;
    let spans = plan(&wanted, &index)?;
    let nspans = spans.len();
    futures::stream::iter(spans)
        .map(|s| {
            let incoming = Arc::clone(&incoming);
            async move {
                let data = c.get(&s.pack, Some(s.start..s.end)).await?;
                tokio::task::spawn_blocking(move || -> Res<()> {
                    for (id, off, clen, len) in s.chunks {
                        let at = (off - s.start) as usize;
                        let chunk = CompressedChunk {
                            id,
                            offset: 0,
                            len,
                            data: data[at..at + clen as usize].to_vec(),
                        };
                        incoming.add_chunk(chunk)?;
                    }
                    Ok(())
                })
                .await?
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let incoming = Arc::into_inner(incoming).expect("all fetches ended");
    incoming.commit(image, &manifest_bytes, &sig, trusted)?;
    c.report(
        started,
        &format!(", \"chunks\": {}, \"ranges\": {nspans}", wanted.len()),
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["push", store, image, url, mib] => {
            let store = Store::open(std::path::Path::new(store))?;
            let c = Client::open(url)?;
            rt.block_on(push(&store, &image.parse()?, &c, mib.parse()?))
        }
        ["pull", store, maint, trusted, image, url] => {
            let store = Store::open(std::path::Path::new(store))?;
            let maint = Store::open(std::path::Path::new(maint))?;
            let c = Client::open(url)?;
            let trusted = std::path::Path::new(trusted);
            rt.block_on(pull(&store, &maint, trusted, &image.parse()?, &c))
        }
        _ => Err("usage: see the doc comment of library/examples/pack_bench.rs".into()),
    }
}
