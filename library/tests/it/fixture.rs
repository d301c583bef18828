//! A depot for the tests: a store, a signing key and the trusted-keys directory that trusts it,
//! in a scratch directory; images made from seeded bytes so v2 shares most chunks with v1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use image_library::layout::{self, Layout};
use image_library::packs::{self, PackIndex};
use image_library::{Remote, RemoteOptions, RemoteUrl, S3Settings, Secret};
use image_store::{ChunkId, Extent, ImageRef, ImportOptions, Manifest, SigningKey, Store};

use tek_testkit::servers::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

/// A maintainers' depot and a bench's, trusting the same key, and an S3 server, in one scratch
/// directory.
pub struct Depots {
    /// The maintainers' depot (imports and pushes).
    pub maint: Depot,
    /// A bench's depot (pulls), empty at first.
    pub bench: Depot,
    /// The S3 server.
    pub server: S3Server,
    /// The scratch directory.
    pub dir: PathBuf,
    _d: tempfile::TempDir,
}

impl Depots {
    /// Both depots and a started `s3s-fs`, or None after saying SKIP.
    pub fn new() -> Option<Depots> {
        let (s3_bin, _) = crate::binaries()?;
        let d = tempfile::tempdir().expect("scratch directory");
        let keys = d.path().join("keys");
        Some(Depots {
            maint: Depot::new(&d.path().join("maint"), &keys),
            bench: Depot::new(&d.path().join("bench"), &keys),
            server: S3Server::start(&s3_bin, &d.path().join("s3")),
            dir: d.path().to_path_buf(),
            _d: d,
        })
    }
}

/// The chunk ids of a manifest, in image order (repeats kept).
pub fn chunk_ids(m: &Manifest) -> Vec<ChunkId> {
    m.extents
        .iter()
        .filter_map(|e| match e {
            Extent::Chunk { id, .. } => Some(*id),
            Extent::Hole { .. } => None,
        })
        .collect()
}

/// One bench's (or the maintainers') depot.
pub struct Depot {
    /// Its store.
    pub store: Store,
    /// Trusted public keys.
    pub trusted: PathBuf,
    /// The secret key that signs its imports.
    pub key: SigningKey,
    /// Its scratch directory.
    pub dir: PathBuf,
}

impl Depot {
    /// A depot in `dir` trusting the key pair in `keys` (made there if missing).
    pub fn new(dir: &Path, keys: &Path) -> Depot {
        let store = Store::open(&dir.join("store")).expect("opening the store");
        if !keys.join("maint.key").exists() {
            image_store::generate_keypair(keys, "maint").expect("making a key pair");
        }
        let trusted = dir.join("trusted");
        std::fs::create_dir_all(&trusted).expect("creating trusted keys");
        std::fs::copy(keys.join("maint.pub"), trusted.join("maint.pub")).expect("trusting");
        Depot {
            store,
            trusted,
            key: SigningKey::load(&keys.join("maint.key")).expect("loading the key"),
            dir: dir.to_path_buf(),
        }
    }

    /// Imports and signs `image` made by [`image_bytes`].
    pub fn import(&self, image: &str, seed: u64, version: u32, mib: usize) -> ImageRef {
        let r: ImageRef = image.parse().expect("image ref");
        let raw = self.dir.join(format!("{}-{}.raw", r.name, r.version));
        std::fs::write(&raw, image_bytes(seed, version, mib)).expect("writing the raw image");
        let opts = ImportOptions {
            audit: None,
            ..ImportOptions::default()
        };
        self.store
            .import(&r, &raw, &opts, Some(&self.key))
            .expect("importing");
        std::fs::remove_file(&raw).expect("removing the raw image");
        r
    }

    /// Exports `image` and returns the file.
    pub fn export(&self, image: &ImageRef) -> PathBuf {
        let out = self
            .dir
            .join(format!("{}-{}.out", image.name, image.version));
        let _ = std::fs::remove_file(&out);
        self.store.export(image, &out).expect("exporting");
        out
    }

    /// Chunk files in the store.
    pub fn chunk_files(&self) -> usize {
        walk(&self.store.root().join("chunks"))
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "zst"))
            .count()
    }
}

/// Every file under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `mib` MiB of seeded random bytes with a zero run in the middle; version 2 rewrites 1 MiB
/// at 2 MiB, so it shares every other chunk with version 1.
pub fn image_bytes(seed: u64, version: u32, mib: usize) -> Vec<u8> {
    let mib_b = 1 << 20;
    let mut v = tek_testkit::bytes(seed, mib * mib_b);
    v[mib_b..mib_b + mib_b / 2].fill(0);
    if version >= 2 {
        let new = tek_testkit::bytes(seed + 1000, mib_b);
        v[2 * mib_b..3 * mib_b].copy_from_slice(&new);
    }
    v
}

/// Options for tests: short timeouts and quick retries.
pub fn quick() -> RemoteOptions {
    RemoteOptions {
        timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
        retries: 1,
        backoff: Duration::from_millis(50),
        ..RemoteOptions::default()
    }
}

/// The S3 remote `s3://library/PREFIX` of `server`, with the right keys.
pub fn s3_remote(server: &S3Server, prefix: &str) -> Remote {
    s3_remote_as(server, prefix, ACCESS_KEY, SECRET_KEY)
}

/// The same with the given keys.
pub fn s3_remote_as(server: &S3Server, prefix: &str, id: &str, secret: &str) -> Remote {
    s3_remote_with(&server.endpoint(), prefix, (id, secret), quick())
}

/// `s3://library/PREFIX` at `endpoint` as `(id, secret)`, with `opts` besides.
pub fn s3_remote_with(
    endpoint: &str,
    prefix: &str,
    (id, secret): (&str, &str),
    opts: RemoteOptions,
) -> Remote {
    let url = RemoteUrl::parse(&format!("s3://{BUCKET}/{prefix}")).expect("s3 url");
    let opts = RemoteOptions {
        s3: S3Settings {
            endpoint: Some(endpoint.to_string()),
            region: None,
            credentials: Some((id.to_string(), Secret::new(secret))),
            session_token: None,
        },
        ..opts
    };
    Remote::open(&url, &opts).expect("opening the s3 remote")
}

/// An HTTP remote at `url`.
pub fn http_remote(url: &str, opts: &RemoteOptions) -> Remote {
    Remote::open(&RemoteUrl::parse(url).expect("http url"), opts).expect("opening http remote")
}

/// Makes `s3://library/PREFIX` of `server` a format-1 remote (one object per chunk) before
/// anything is pushed there: a push keeps the format a remote was created with.
pub fn make_format_1(server: &S3Server, prefix: &str) {
    let p = server.object_path(&format!("{prefix}/{}", layout::INFO_KEY));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(
        &p,
        serde_json::to_vec(&Layout::ChunkObjects.info()).unwrap(),
    )
    .unwrap();
}

/// Where chunk `id` of `image` (as `store` has it) is on the format-2 remote at `prefix`: the
/// pack's file on the server, the pack's key, the chunk's offset and compressed length.
pub fn chunk_in_pack(
    server: &S3Server,
    prefix: &str,
    store: &Store,
    image: &ImageRef,
    id: ChunkId,
) -> (PathBuf, String, u64, u64) {
    let (m, bytes) = store.load_manifest(image).unwrap();
    let index_file = server.object_path(&format!("{prefix}/{}", layout::pack_index_key(image)));
    let index = std::fs::read(index_file).expect("the image's pack index");
    let places = PackIndex::locations(&index, &m, &bytes).unwrap();
    let (pack, off, len) = places[&id].clone();
    let key = packs::pack_key(&pack);
    (
        server.object_path(&format!("{prefix}/{key}")),
        key,
        off,
        len,
    )
}
