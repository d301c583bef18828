//! GPT image builders for tests: a sparse file partitioned by sgdisk, partition ranges read back
//! from sgdisk, ext4 made at a partition's offset (no partition nodes or loop devices needed).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run::{run_ok, text};

/// A GPT image to build: size and partitions, in sgdisk's `-n`/`-c` terms.
#[derive(Debug, Clone)]
pub struct GptImage {
    size: u64,
    parts: Vec<(String, String)>,
}

impl GptImage {
    /// An image of `size` bytes (a sparse file) with no partitions yet.
    pub fn new(size: u64) -> GptImage {
        GptImage {
            size,
            parts: Vec::new(),
        }
    }

    /// Adds partition `name` with sgdisk's start and end (`"2048"`, `"0"` for the next free
    /// sector or the end, `"+6M"`).
    pub fn part(mut self, name: &str, start: &str, end: &str) -> GptImage {
        self.parts
            .push((format!("{start}:{end}"), name.to_string()));
        self
    }

    /// Writes the image to `path` (replacing it) and returns `path`.
    pub fn build(&self, path: &Path) -> PathBuf {
        let f = std::fs::File::create(path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        f.set_len(self.size)
            .unwrap_or_else(|e| panic!("sizing {}: {e}", path.display()));
        let mut cmd = Command::new("sgdisk");
        for (i, (range, name)) in self.parts.iter().enumerate() {
            let n = i + 1;
            cmd.arg(format!("-n{n}:{range}"))
                .arg(format!("-c{n}:{name}"));
        }
        run_ok(cmd.arg(path), path.parent());
        path.to_path_buf()
    }
}

/// Partition `n`'s (first byte, length in bytes), as sgdisk reports it.
pub fn partition_range(img: &Path, n: u32) -> (u64, u64) {
    let out = run_ok(
        Command::new("sgdisk").arg("-i").arg(n.to_string()).arg(img),
        None,
    );
    let info = text(&out);
    let sector = |key: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} for partition {n} in sgdisk -i: {info}"))
    };
    let (first, last) = (sector("First sector"), sector("Last sector"));
    (first * 512, (last - first + 1) * 512)
}

/// Makes an ext4 filesystem (4 KiB blocks) over partition `n` of `img`, at its offset, optionally
/// populated from `root` (`mkfs.ext4 -d`).
pub fn mkfs_ext4(img: &Path, n: u32, root: Option<&Path>) {
    let (off, len) = partition_range(img, n);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-b", "4096", "-E"])
        .arg(format!("offset={off}"));
    if let Some(r) = root {
        cmd.arg("-d").arg(r);
    }
    run_ok(cmd.arg(img).arg((len / 4096).to_string()), img.parent());
}
