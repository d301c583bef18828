#!/bin/sh
# Generate the files the .deb ships that the tek binary itself produces (shell completions, man
# pages), into target/assets/, from the release binary. Run it between the build and cargo deb:
#
#   cargo build --release -p agent && packaging/gen-assets.sh && cargo deb -p agent --no-build
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=$target/release/tek
[ -x "$bin" ] || { echo "gen-assets.sh: no $bin (cargo build --release -p agent)" >&2; exit 1; }
out=$target/assets
rm -rf "$out"
mkdir -p "$out/man"
"$bin" completions bash > "$out/tek.bash"
"$bin" completions zsh > "$out/_tek"
"$bin" completions fish > "$out/tek.fish"
"$bin" man --dir "$out/man"
gzip -9n "$out"/man/*.1
echo "gen-assets.sh: completions and man pages in $out"
