#!/usr/bin/env bash
# bench/grow.sh: what fitting the layout to a larger disk costs. The v1 sample (DATA last: its
# ext4 grows) and the win sample (Recovery after C:: Recovery moves to the disk's end, C:'s NTFS
# grows) are each written by `tek write` onto a fresh disk 4x the image's size, once imported
# without a grow hint (the plain write: GPT fix-ups only) and once with it (layout map + filesystem
# grow + its checks). Prints both times side by side, the extra time and its ratio to the plain
# write (goal: the extra <= 10% of the write), and the imager's own phase times.
#
#   bench/grow.sh [RUNS]     (as root; images built with ../shared/bench/make-image.sh, cached)
#
# Env: TEK (default target/release/tek), CACHE (default ../bench-cache/grow), SIZE (image size,
# default 1G), FILL (default 256M), MAKE_IMAGE (default ../shared/bench/make-image.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
TEK=${TEK:-${CARGO_TARGET_DIR:-$here/target}/release/tek}
CACHE=${CACHE:-${BENCH_CACHE:-$here/../bench-cache}/grow}
SIZE=${SIZE:-1G} FILL=${FILL:-256M}
MAKE_IMAGE=${MAKE_IMAGE:-$here/../shared/bench/make-image.sh}
[ -x "$MAKE_IMAGE" ] || MAKE_IMAGE=/work/shared/bench/make-image.sh
[ "$(id -u)" = 0 ] || { echo "grow.sh: needs root (loop devices)" >&2; exit 2; }
[ -x "$TEK" ] || { echo "grow.sh: missing $TEK (cargo build --release -p agent)" >&2; exit 2; }
mkdir -p "$CACHE"
export TEK_STATE=$CACHE/state

declare -A GROW=([v1]=DATA [win]=type:basic-data)
for v in v1 win; do
  img=$CACHE/$v-$SIZE-$FILL.img
  [ -s "$img" ] || "$MAKE_IMAGE" --variant "$v" --size "$SIZE" --fill "$FILL" "$img" >/dev/null
  "$TEK" image show "$v-plain@1" >/dev/null 2>&1 || "$TEK" image import "$v-plain@1" "$img" >/dev/null
  "$TEK" image show "$v-grow@1" >/dev/null 2>&1 ||
    "$TEK" image import "$v-grow@1" "$img" --grow-partition "${GROW[$v]}" >/dev/null
done

W=$(mktemp -d /tmp/tek-bench-grow.XXXXXX)
img_bytes=$(numfmt --from=iec "$SIZE")
mount -t tmpfs -o "size=$(( img_bytes * 5 / 1048576 ))m" tmpfs "$W"
LOOP=
cleanup() {
  [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null || true
  rm -f "$W"/t "$W"/r.json
  umount "$W" 2>/dev/null || true
  rmdir "$W" 2>/dev/null || true
}
trap cleanup EXIT
fresh() {
  [ -z "$LOOP" ] || losetup -d "$LOOP"
  rm -f "$W/t"; truncate -s $(( img_bytes * 4 )) "$W/t"
  LOOP=$(losetup --find --show "$W/t")
  find "$CACHE/state/store/chunks" -type f -exec cat {} + >/dev/null # a warm store for both
}
now() { date +%s%N; }
# one NAME: seconds of one `tek write NAME LOOP`, its report in $W/r.json
one() {
  fresh
  local s e; s=$(now)
  "$TEK" write "$1@1" "$LOOP" --yes --json >"$W/r.json"
  e=$(now)
  echo "scale=2; ($e - $s) / 1000000000" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
phase() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r=r[0] if isinstance(r,list) else r; d=r['durations']; f=r.get('filesystem') or {}; print('write %.2f verify %.2f finish %.2f; %s %s -> %s bytes' % (d['write_secs'], d['verify_secs'], d['finish_secs'], f.get('filesystem','-'), f.get('old_bytes','-'), f.get('new_bytes','-')))" "$W/r.json"; }

printf '%-5s %10s %10s %10s %8s\n' image plain_s grow_s extra_s extra
for v in v1 win; do
  p=() g=()
  for _ in $(seq 1 "$RUNS"); do
    p+=("$(one "$v-plain")"); pl=$(phase)
    g+=("$(one "$v-grow")"); gl=$(phase)
  done
  ps=$(printf '%s\n' "${p[@]}" | median) gs=$(printf '%s\n' "${g[@]}" | median)
  extra=$(echo "scale=2; $gs - $ps" | bc)
  pct=$(echo "scale=1; 100 * ($gs - $ps) / $ps" | bc)
  printf '%-5s %10s %10s %10s %7s%%\n' "$v" "$ps" "$gs" "$extra" "$pct"
  echo "      plain: $pl"
  echo "      grow:  $gl"
done
