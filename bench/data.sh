#!/usr/bin/env bash
# bench/data.sh: tek client-data ingest + restore (onto ext4 on a loop device) + verify, against
# `cp -a` + hashing the copy with b3sum and comparing, and `tar | zstd` for the ingest alone.
#
#   bench/data.sh [SOURCE_DIR] [WORK_DIR]
#
# SOURCE_DIR defaults to /work/bench-cache/client-data (built with
# /work/shared/bench/make-client-data.sh when missing: 20k files, ~1 GiB). WORK_DIR (default a
# temp dir under /var/tmp) holds the state, a 4 GiB sparse ext4 image and the tar.zst. Needs root
# (losetup, mount). Builds tek with `cargo build --release -p agent` (CARGO_TARGET_DIR, default
# /work/main/target-data).
#
# b3sum --check cannot check non-UTF-8 names (the data set has some), so the baseline's check is
# the same work done name-independently: b3sum every file of the copy (sorted, NUL-separated) and
# cmp with the list made from the source beforehand (untimed).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-/work/bench-cache/client-data}
work=${2:-$(mktemp -d /var/tmp/tek-bench-data.XXXXXX)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target-data}
[ "$(id -u)" = 0 ] || { echo "bench/data.sh: needs root (loop devices, mount)" >&2; exit 2; }
if [ ! -d "$src" ]; then
  /work/shared/bench/make-client-data.sh "$src"
fi
(cd "$here" && cargo build --release -p agent >/dev/null)
tek=$CARGO_TARGET_DIR/release/tek
mkdir -p "$work"
img=$work/fs.img mnt=$work/mnt lo=""
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt" || true
  [ -n "$lo" ] && losetup -d "$lo" || true
  rm -rf "$work/state" "$work/src.tar.zst" "$img" "$work/list.src" "$work/list.copy"
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
truncate -s 4G "$img"
mkfs.ext4 -q -F "$img"
lo=$(losetup --find --show "$img")
mkdir -p "$mnt"
mount "$lo" "$mnt"
mkdir "$mnt/tek" "$mnt/cp"

files=$(find "$src" -type f | wc -l)
bytes=$(du -sb "$src" | cut -f1)
# Warm the page cache so every contender reads the source at the same speed.
find "$src" -type f -print0 | xargs -0 cat > /dev/null
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 b3sum) > "$work/list.src"

now() { date +%s.%N; }
t() { local s; s=$(now); "$@"; echo "$(now) - $s" | bc; }

export TEK_STATE=$work/state
t_ingest=$(t bash -c "'$tek' data ingest --client BENCH --ticket B-1 '$src' > '$work/id'")
id=$(cat "$work/id")
t_restore=$(t bash -c "'$tek' data restore '$id' '$mnt/tek' --json > '$work/restore.json'")
"$tek" data show "$id" | grep -q '"state": "migrated"' || { echo "restore did not verify" >&2; exit 1; }

t_cp=$(t bash -c "cp -a '$src/.' '$mnt/cp/' && sync -f '$mnt/cp'")
t_b3=$(t bash -c "cd '$mnt/cp' && find . -type f -print0 | sort -z | xargs -0 b3sum > '$work/list.copy' && cmp '$work/list.src' '$work/list.copy'")
t_tarzst=$(t bash -c "tar -cf - -C '$src' . | zstd -q -T0 -3 -o '$work/src.tar.zst'")

tek_total=$(echo "$t_ingest + $t_restore" | bc)
base_total=$(echo "$t_cp + $t_b3" | bc)
printf '\nsource: %s (%s files, %s bytes)\n\n' "$src" "$files" "$bytes"
printf '%-44s %9s\n' "step" "seconds"
printf '%-44s %9.2f\n' "tek data ingest" "$t_ingest"
printf '%-44s %9.2f\n' "tek data restore (write + syncfs + verify)" "$t_restore"
printf '%-44s %9.2f\n' "tek total" "$tek_total"
printf '%-44s %9.2f\n' "cp -a + sync" "$t_cp"
printf '%-44s %9.2f\n' "b3sum of the copy + cmp" "$t_b3"
printf '%-44s %9.2f\n' "baseline total (cp -a + b3sum check)" "$base_total"
printf '%-44s %9.2f\n' "tar | zstd -T0 -3 (ingest baseline)" "$t_tarzst"
printf '\n%-44s %9.2fx  (target <= 1.30x)\n' "tek total / baseline total" "$(echo "$tek_total / $base_total" | bc -l)"
printf '%-44s %9.2fx\n' "tek ingest / tar|zstd" "$(echo "$t_ingest / $t_tarzst" | bc -l)"
printf '%-44s %9.2fx\n' "tek restore+verify / baseline" "$(echo "$t_restore / $base_total" | bc -l)"
