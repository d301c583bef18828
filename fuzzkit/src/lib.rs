//! A small fuzz driver for tek's parser harnesses, on stable Rust (no nightly, no `cargo fuzz`).
//!
//! Each harness is an integration test (`<crate>/tests/fuzz.rs`) that hands [`Harness::run`] a
//! target: a function over input bytes that parses them and asserts properties (round trips,
//! "an error leaves nothing behind"). The driver first replays every file of the harness's seed
//! corpus (`<crate>/tests/fuzz-corpus/<name>/`, committed; crashes found earlier are kept there as
//! regression seeds), then mutates seeds until the time budget is spent: bit flips, interesting
//! bytes and numbers, the harness's dictionary tokens, inserted/deleted/duplicated ranges,
//! splices of two seeds, truncation. Targets that want structure build values from the same bytes
//! with [`arbitrary::Unstructured`] (see [`structured`]).
//!
//! Every input is checked for:
//! - **no panic**: a panic is caught, the input saved under `target/fuzz-crashes/<name>/`, and
//!   the harness fails at the end naming the files;
//! - **no hang**: a watchdog thread ends the process when one input runs longer than
//!   [`Harness::hang_secs`] (saving it first);
//! - **bounded memory**: with [`CountingAlloc`] installed as the test binary's global allocator,
//!   the peak bytes allocated while one input runs must stay under [`Harness::mem_limit`] plus
//!   [`Harness::mem_per_input_byte`] times the input length (a parser that allocates from a
//!   length field without a bound fails this).
//!
//! Settings (environment): `TEK_FUZZ_SECS` (seconds of mutation per harness after the seeds,
//! default 3), `TEK_FUZZ_SEED` (mutation seed, default 1; `random` for a fresh one, printed),
//! `TEK_FUZZ_GEN=1` (harnesses rewrite their generated seeds, `gen-*` files, and exit),
//! `TEK_FUZZ_REPLAY=FILE` (run one input, uncaught, e.g. a saved crash; filter the harness).
//! Results are written to the real stderr (not captured by the test harness), one line each:
//! `fuzz NAME: N iterations (S seeds) in T s, C crashes`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tek_testkit::Rng;

pub use arbitrary;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Harnesses in one binary run one at a time, so memory accounting sees one input at once.
static SERIAL: Mutex<()> = Mutex::new(());

/// A global allocator that counts live bytes and their peak. Install it in a fuzz test binary:
/// `#[global_allocator] static A: tek_fuzzkit::CountingAlloc = tek_fuzzkit::CountingAlloc;`
pub struct CountingAlloc;

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
            grow(new);
        }
        q
    }
}

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Runs `f` and returns its result with the peak heap bytes it allocated beyond what was live
/// before (0 unless [`CountingAlloc`] is the global allocator; other threads count too).
pub fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// True when [`CountingAlloc`] is this binary's allocator. Probed a few times: another test
/// thread freeing memory at the same moment can hide one probe's allocation.
fn counting() -> bool {
    (0..8).any(|_| {
        let before = CURRENT.load(Ordering::Relaxed);
        let v = std::hint::black_box(vec![0u8; 1 << 16]);
        let during = CURRENT.load(Ordering::Relaxed);
        drop(v);
        during >= before + (1 << 16)
    })
}

/// One parser's harness.
pub struct Harness {
    name: String,
    corpus: PathBuf,
    /// Bytes of heap one input may use beyond its own length times `mem_per_input_byte`.
    pub mem_limit: usize,
    /// Heap bytes allowed per input byte (parsers that keep a parsed copy need a few).
    pub mem_per_input_byte: usize,
    /// Longest time one input may take before it counts as a hang.
    pub hang_secs: u64,
    /// Largest input the mutator produces.
    pub max_len: usize,
    /// Tokens the mutator inserts (field names, keywords, separators of the format).
    pub dictionary: Vec<Vec<u8>>,
}

/// Reads `TEK_FUZZ_SECS` (default 3).
pub fn budget() -> Duration {
    let s = std::env::var("TEK_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s.max(0.0))
}

/// True when the harnesses should rewrite their generated seeds (`TEK_FUZZ_GEN=1`).
pub fn generating() -> bool {
    std::env::var("TEK_FUZZ_GEN").is_ok_and(|v| v == "1")
}

fn seed() -> u64 {
    match std::env::var("TEK_FUZZ_SEED").as_deref() {
        Ok("random") => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        }
        Ok(v) => v.parse().unwrap_or(1),
        Err(_) => 1,
    }
}

/// Writes one line to the process's real stderr, past the test harness's capture.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Builds a structured value from fuzz bytes: `None` when the bytes run out before it is built
/// (the input is then simply not interesting for this property).
pub fn structured<T>(
    data: &[u8],
    f: impl FnOnce(&mut arbitrary::Unstructured<'_>) -> arbitrary::Result<T>,
) -> Option<T> {
    f(&mut arbitrary::Unstructured::new(data)).ok()
}

impl Harness {
    /// A harness named `name` whose seeds live in `<crate_dir>/tests/fuzz-corpus/<name>/`.
    pub fn new(crate_dir: &str, name: &str) -> Harness {
        Harness {
            name: name.to_string(),
            corpus: Path::new(crate_dir).join("tests/fuzz-corpus").join(name),
            mem_limit: 64 << 20,
            mem_per_input_byte: 64,
            hang_secs: 10,
            max_len: 64 << 10,
            dictionary: Vec::new(),
        }
    }

    /// Adds dictionary tokens.
    pub fn dictionary(mut self, tokens: &[&[u8]]) -> Harness {
        self.dictionary.extend(tokens.iter().map(|t| t.to_vec()));
        self
    }

    /// The seed corpus directory.
    pub fn corpus_dir(&self) -> &Path {
        &self.corpus
    }

    /// Writes generated seeds (`gen-<name>`), replacing earlier generated ones; crash
    /// regression seeds (`crash-*`) and hand-written ones are kept.
    pub fn write_seeds(&self, seeds: &[(&str, Vec<u8>)]) {
        std::fs::create_dir_all(&self.corpus).expect("creating corpus directory");
        for e in std::fs::read_dir(&self.corpus).expect("listing corpus") {
            let p = e.expect("listing corpus").path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gen-"))
            {
                std::fs::remove_file(&p).expect("removing old seed");
            }
        }
        for (name, bytes) in seeds {
            std::fs::write(self.corpus.join(format!("gen-{name}")), bytes).expect("writing seed");
        }
        report(&format!(
            "fuzz {}: wrote {} seeds to {}",
            self.name,
            seeds.len(),
            self.corpus.display()
        ));
    }

    fn seeds(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = match std::fs::read_dir(&self.corpus) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| {
                    let p = e.path();
                    let bytes = std::fs::read(&p).expect("reading seed");
                    (e.file_name().to_string_lossy().into_owned(), bytes)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }

    /// Replays the seeds, then mutates them for [`budget`]; panics at the end if any input
    /// panicked or used too much memory (a hang ends the process from the watchdog).
    pub fn run(self, target: impl Fn(&[u8])) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(file) = std::env::var("TEK_FUZZ_REPLAY") {
            // One input, no catching: the panic and its backtrace show as usual.
            let input = std::fs::read(&file).expect("reading TEK_FUZZ_REPLAY input");
            target(&input);
            return report(&format!("fuzz {}: replayed {file}", self.name));
        }
        let seeds = self.seeds();
        assert!(
            !seeds.is_empty(),
            "fuzz {}: no seeds in {} (run the corpus generator: TEK_FUZZ_GEN=1)",
            self.name,
            self.corpus.display()
        );
        let seed = seed();
        let counting = counting();
        let crash_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/fuzz-crashes")
            .join(&self.name);
        let started = Instant::now();
        let deadline = started + budget();
        let mut rng = Rng::new(seed | 1);
        let mut crashes: Vec<String> = Vec::new();
        let mut iterations = 0u64;
        let current: Mutex<Vec<u8>> = Mutex::new(Vec::new());
        let input_started = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        // Panics are expected findings: keep the default hook from printing each one.
        let hook = std::panic::take_hook();
        let last_panic: &'static Mutex<String> = Box::leak(Box::new(Mutex::new(String::new())));
        std::panic::set_hook(Box::new(move |info| {
            *last_panic.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string();
        }));
        std::thread::scope(|s| {
            s.spawn(|| self.watchdog(&done, &input_started, started, &current, &crash_dir));
            let one = |input: &[u8], iterations: &mut u64| -> Option<String> {
                *current.lock().unwrap_or_else(|e| e.into_inner()) = input.to_vec();
                let base = CURRENT.load(Ordering::Relaxed);
                PEAK.store(base, Ordering::Relaxed);
                input_started.store(started.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
                let r = catch_unwind(AssertUnwindSafe(|| target(input)));
                input_started.store(0, Ordering::SeqCst);
                *iterations += 1;
                let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
                let limit = self.mem_limit + self.mem_per_input_byte * input.len();
                let problem = match r {
                    Err(_) => Some(format!(
                        "panicked: {}",
                        last_panic.lock().unwrap_or_else(|e| e.into_inner())
                    )),
                    Ok(()) if counting && peak > limit => Some(format!(
                        "allocated {peak} bytes at peak for a {}-byte input (limit {limit})",
                        input.len()
                    )),
                    Ok(()) => None,
                };
                problem.map(|why| {
                    let file = save(&crash_dir, "crash", input);
                    format!("{}: {why}", file.display())
                })
            };
            for (_, bytes) in &seeds {
                crashes.extend(one(bytes, &mut iterations));
            }
            let mut buf = Vec::new();
            while Instant::now() < deadline && crashes.len() < 20 {
                self.mutate(&mut rng, &seeds, &mut buf);
                if let Some(c) = one(&buf, &mut iterations)
                    && !crashes.contains(&c)
                {
                    crashes.push(c);
                }
            }
            done.store(true, Ordering::SeqCst);
        });
        std::panic::set_hook(hook);
        report(&format!(
            "fuzz {}: {iterations} iterations ({} seeds) in {:.1} s, {} crashes (seed {seed}{})",
            self.name,
            seeds.len(),
            started.elapsed().as_secs_f64(),
            crashes.len(),
            if counting { "" } else { ", memory not counted" }
        ));
        assert!(
            crashes.is_empty(),
            "fuzz {}: {} failing inputs (add each to {} once fixed):\n{}",
            self.name,
            crashes.len(),
            self.corpus.display(),
            crashes.join("\n")
        );
    }

    fn watchdog(
        &self,
        done: &AtomicBool,
        input_started: &AtomicU64,
        started: Instant,
        current: &Mutex<Vec<u8>>,
        crash_dir: &Path,
    ) {
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            let at = input_started.load(Ordering::SeqCst);
            if at == 0 {
                continue;
            }
            let now = started.elapsed().as_millis() as u64 + 1;
            if now.saturating_sub(at) > self.hang_secs * 1000 {
                let input = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let file = save(crash_dir, "hang", &input);
                report(&format!(
                    "fuzz {}: an input ran longer than {} s (hang), saved as {}",
                    self.name,
                    self.hang_secs,
                    file.display()
                ));
                std::process::exit(101);
            }
        }
    }

    fn mutate(&self, rng: &mut Rng, seeds: &[(String, Vec<u8>)], out: &mut Vec<u8>) {
        out.clear();
        if rng.below(64) == 0 {
            // Now and then pure noise, for parsers that see raw bytes.
            let n = rng.below(512).min(self.max_len);
            out.extend((0..n).map(|_| rng.next_u64() as u8));
            return;
        }
        out.extend_from_slice(&seeds[rng.below(seeds.len())].1);
        let k = rng.below(16);
        for _ in 0..1 + rng.below(1 + k) {
            self.mutate_once(rng, seeds, out);
        }
        out.truncate(self.max_len);
    }

    fn mutate_once(&self, rng: &mut Rng, seeds: &[(String, Vec<u8>)], out: &mut Vec<u8>) {
        const BYTES: &[u8] = b"\0\x01\x7f\x80\xff\"\\{}[],:=@/.\n\t 0-9eE";
        const NUMBERS: &[&[u8]] = &[
            b"0",
            b"-1",
            b"18446744073709551615",
            b"18446744073709551616",
            b"9223372036854775807",
            b"-9223372036854775808",
            b"4294967295",
            b"4294967296",
            b"1e400",
            b"99999999999999999999999999",
            b"0.5",
            b"null",
            b"true",
            b"\"\"",
        ];
        let len = out.len();
        let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len + 1) };
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = BYTES[rng.below(BYTES.len())];
            }
            2 => {
                let i = at(rng);
                let n = NUMBERS[rng.below(NUMBERS.len())];
                out.splice(i..i, n.iter().copied());
            }
            3 if len > 0 => {
                // Replace a run of digits (or any short run) with an extreme number.
                let i = rng.below(len);
                let mut j = i;
                while j < len && j < i + 20 && out[j].is_ascii_digit() {
                    j += 1;
                }
                let n = NUMBERS[rng.below(NUMBERS.len())];
                out.splice(i..j.max(i + 1).min(len), n.iter().copied());
            }
            4 if !self.dictionary.is_empty() => {
                let i = at(rng);
                let t = &self.dictionary[rng.below(self.dictionary.len())];
                out.splice(i..i, t.iter().copied());
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                out.drain(i..i + n);
            }
            6 if len > 0 => {
                // Duplicate a range (repeated records, nested structures).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let copy = out[i..i + n].to_vec();
                let j = at(rng);
                out.splice(j..j, copy);
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())].1;
                if !other.is_empty() {
                    let i = at(rng).min(out.len());
                    let j = rng.below(other.len());
                    out.truncate(i);
                    out.extend_from_slice(&other[j..]);
                }
            }
            8 if len > 0 => out.truncate(rng.below(len)),
            9 => {
                let i = at(rng);
                let n = 1 + rng.below(8);
                let noise: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(i..i, noise);
            }
            10 if len >= 8 => {
                // Overwrite a little-endian u32/u64 with an extreme value (binary formats).
                let i = rng.below(len - 7);
                let v: u64 =
                    [0, 1, u64::MAX, u64::from(u32::MAX), 1 << 31, 1 << 63, 0x80][rng.below(7)];
                let w = if rng.below(2) == 0 { 4 } else { 8 };
                out[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next_u64() as u8;
            }
            _ => out.push(rng.next_u64() as u8),
        }
    }
}

fn save(dir: &Path, kind: &str, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let name = format!("{kind}-{}", &blake3::hash(input).to_hex()[..16]);
    let p = dir.join(name);
    let _ = std::fs::write(&p, input);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_max_len_and_are_reproducible() {
        let mut h = Harness::new(env!("CARGO_MANIFEST_DIR"), "self");
        h.max_len = 100;
        let seeds = vec![("a".to_string(), b"{\"a\":1}".to_vec())];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (mut r1, mut r2) = (Rng::new(7), Rng::new(7));
        for _ in 0..10_000 {
            h.mutate(&mut r1, &seeds, &mut a);
            h.mutate(&mut r2, &seeds, &mut b);
            assert_eq!(a, b);
            assert!(a.len() <= 100);
        }
    }
}
