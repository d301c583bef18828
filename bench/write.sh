#!/usr/bin/env bash
# bench/write.sh: `tek write` (with read-back verification) against bmaptool copy, dd, zstdcat|dd
# and the raw floor, on tmpfs-backed loop devices; 1 vs 4 targets; CPU-bound and disk-bound
# (throttled) regimes; one slow target among three fast ones. Prints times and ratios.
# Every timed command starts from a fresh sparse target and its source already in the page cache.
#
#   bench/write.sh [V1_IMG] [DENSE_IMG]     (as root; defaults: ../bench-cache/{v1,dense}.img)
#
# Env: TEK (binary, default target/release/tek, or $CARGO_TARGET_DIR/release/tek), CACHE (bmap/zstd/store cache dir, default
# ../bench-cache/write), THROTTLE (default ../shared/bench/throttle.sh), FAST=250:400 and
# SLOW=40:80 (MB/s write:read), SKIP_THROTTLED=1 to skip the disk-bound part.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
V1=${1:-${BENCH_CACHE:-$here/../bench-cache}/v1.img}
DENSE=${2:-${BENCH_CACHE:-$here/../bench-cache}/dense.img}
TEK=${TEK:-${CARGO_TARGET_DIR:-$here/target}/release/tek}
CACHE=${CACHE:-${BENCH_CACHE:-$here/../bench-cache}/write}
THROTTLE=${THROTTLE:-$here/../shared/bench/throttle.sh}
FAST=${FAST:-250:400}
SLOW=${SLOW:-40:80}
[ "$(id -u)" = 0 ] || { echo "write.sh: needs root (loop devices)" >&2; exit 2; }
for f in "$V1" "$DENSE" "$TEK"; do [ -e "$f" ] || { echo "write.sh: missing $f" >&2; exit 2; }; done
mkdir -p "$CACHE"

# --- one-time preparation (cached) ---------------------------------------------------------------
for img in "$V1" "$DENSE"; do
  b=$(basename "$img" .img)
  [ -s "$CACHE/$b.bmap" ] || bmaptool create -o "$CACHE/$b.bmap" "$img"
  [ -s "$CACHE/$b.img.zst" ] || zstd -q -T0 -3 -f "$img" -o "$CACHE/$b.img.zst"
done
export TEK_STATE=$CACHE/state
for img in "$V1" "$DENSE"; do
  b=$(basename "$img" .img)
  "$TEK" image show "$b@1" >/dev/null 2>&1 || "$TEK" image import "$b@1" "$img" >/dev/null
done

# --- scratch tmpfs and loop targets ----------------------------------------------------------------
# One tmpfs, size-bounded, holds every target file. Holes are zeroed by discard (the loop
# device punches its backing file), so targets stay sparse: 4 x v1 need ~4 x its data bytes.
TMPFS_GB=${TMPFS_GB:-10}
avail_gb=$(( $(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1048576 ))
if [ "$avail_gb" -lt $((TMPFS_GB + 2)) ]; then
  echo "write.sh: only ${avail_gb} GiB of memory available; need $((TMPFS_GB + 2)) (TMPFS_GB=$TMPFS_GB + 2)" >&2
  exit 2
fi
W=$(mktemp -d /tmp/tek-bench-write.XXXXXX)
mount -t tmpfs -o "size=${TMPFS_GB}g" tmpfs "$W"
LOOPS=()
cleanup() {
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -f "$W"/t* "$W"/out.log
  umount "$W" 2>/dev/null || true
  rmdir "$W" 2>/dev/null || true
}
trap cleanup EXIT
# make_targets N SIZE: N fresh loop devices over sparse tmpfs files (old ones removed first).
make_targets() {
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  LOOPS=(); rm -f "$W"/t*
  for i in $(seq 1 "$1"); do
    truncate -s "$2" "$W/t$i"
    LOOPS+=("$(losetup --find --show "$W/t$i")")
  done
}
# warm PATH...: reads files (or every file under a directory) into the page cache. Every timed
# command gets its source warm and a fresh target (see `fresh`), so that all tools start from the
# same state: round 1 timed tek reading a cold store (1 GiB from the VM disk: 2.8 s) and
# a cold raw image while dd and the floor read warm files or /dev/zero.
warm() { [ $# -gt 0 ] || return 0; find "$@" -type f -exec cat {} + >/dev/null; }
STORE_DIR=$CACHE/state/store
# fresh SIZE SRC...: one new sparse target (tmpfs pages are allocated by whoever writes first:
# every tool pays that alike) and the sources warm.
fresh() { local size=$1; shift; make_targets 1 "$size"; warm "$@"; }
now() { date +%s%N; }
secs() { echo "scale=2; ($2 - $1) / 1000000000" | bc; }
declare -A T
# timed NAME CMD...: runs CMD, records seconds in T[NAME]
timed() {
  local name=$1; shift
  local s; s=$(now)
  "$@" >"$W/out.log" 2>&1 || { echo "FAILED: $name"; tail -5 "$W/out.log"; }
  T[$name]=$(secs "$s" "$(now)")
  printf '  %-34s %8.2f s\n' "$name" "${T[$name]}"
}
ratio() { echo "scale=2; ${T[$1]} / ${T[$2]}" | bc; }
# Reports go to $CACHE, outside the scratch tmpfs.
tekw() { "$TEK" write "$@" --yes --allow-unsigned --report "$CACHE/report.json"; }
data_bytes() { du --block-size=1 "$1" | cut -f1; }
# floor DEV BYTES: dd writing and then reading BYTES with O_DIRECT
floor() {
  local n=$(( ($2 + 4194303) / 4194304 ))
  dd if=/dev/zero of="$1" bs=4M count="$n" oflag=direct status=none
  dd if="$1" of=/dev/null bs=4M count="$n" iflag=direct status=none
}

echo "== CPU-bound (plain tmpfs-backed loops) =="
for img in "$V1" "$DENSE"; do
  b=$(basename "$img" .img); size=$(stat -c %s "$img"); data=$(data_bytes "$img")
  echo "-- $b: $size bytes, $data data bytes"
  fresh "$size" "$STORE_DIR"; d=${LOOPS[0]}
  timed "$b tek write (store)" tekw "$b@1" "$d"
  fresh "$size" "$img"; d=${LOOPS[0]}
  timed "$b tek write (raw file)" tekw "$img" "$d"
  fresh "$size" "$CACHE/$b.img.zst"; d=${LOOPS[0]}
  timed "$b tek write (zstd file)" tekw "$CACHE/$b.img.zst" "$d"
  fresh "$size" "$img"; d=${LOOPS[0]}
  timed "$b bmaptool copy" bmaptool copy --bmap "$CACHE/$b.bmap" "$img" "$d"
  fresh "$size" "$img"; d=${LOOPS[0]}
  timed "$b dd bs=4M oflag=direct" dd if="$img" of="$d" bs=4M oflag=direct status=none
  fresh "$size" "$CACHE/$b.img.zst"; d=${LOOPS[0]}
  timed "$b zstdcat | dd" bash -c "zstdcat '$CACHE/$b.img.zst' | dd of=$d bs=4M iflag=fullblock oflag=direct status=none"
  fresh "$size"; d=${LOOPS[0]}
  timed "$b raw floor (dd w+r data)" floor "$d" "$data"
  make_targets 4 "$size"; warm "$STORE_DIR"
  timed "$b tek write (store) x4" tekw "$b@1" "${LOOPS[@]}"
  echo "   ratios: tek/bmaptool $(ratio "$b tek write (store)" "$b bmaptool copy")" \
       " tek/dd $(ratio "$b tek write (store)" "$b dd bs=4M oflag=direct")" \
       " tek/floor $(ratio "$b tek write (store)" "$b raw floor (dd w+r data)")" \
       " x4/x1 $(ratio "$b tek write (store) x4" "$b tek write (store)")"
  echo "   throughput vs dd write+read (floor/tek): $(ratio "$b raw floor (dd w+r data)" "$b tek write (store)")x"
done

[ "${SKIP_THROTTLED:-0}" = 1 ] && exit 0
echo "== disk-bound (throttle.sh $FAST per disk, O_DIRECT) =="
b=$(basename "$V1" .img); size=$(stat -c %s "$V1"); data=$(data_bytes "$V1")
make_targets 1 "$size"
lim() { local r=$1; shift; for d in "$@"; do printf '%s:%s ' "$d" "$r"; done; }
timed "$b throttled raw floor" "$THROTTLE" $(lim "$FAST" "${LOOPS[0]}") -- bash -c "$(declare -f floor); floor ${LOOPS[0]} $data"
fresh "$size" "$STORE_DIR"
timed "$b throttled tek x1" "$THROTTLE" $(lim "$FAST" "${LOOPS[0]}") -- "$TEK" write "$b@1" "${LOOPS[0]}" --yes --allow-unsigned
echo "   ratios: tek/floor $(ratio "$b throttled tek x1" "$b throttled raw floor")"
make_targets 4 "$size"; warm "$STORE_DIR"
timed "$b throttled tek x4" "$THROTTLE" $(lim "$FAST" "${LOOPS[@]}") -- "$TEK" write "$b@1" "${LOOPS[@]}" --yes --allow-unsigned
echo "   aggregate x4 vs x1: $(echo "scale=2; 4 * ${T[$b throttled tek x1]} / ${T[$b throttled tek x4]}" | bc)x"

echo "-- one slow ($SLOW) among three fast ($FAST), dense image"
b=$(basename "$DENSE" .img); size=$(stat -c %s "$DENSE")
make_targets 4 "$size"; warm "$STORE_DIR"
timed "$b throttled fast x3 alone" "$THROTTLE" $(lim "$FAST" "${LOOPS[@]:0:3}") -- "$TEK" write "$b@1" "${LOOPS[@]:0:3}" --yes --allow-unsigned
make_targets 4 "$size"; warm "$STORE_DIR"
timed "$b throttled 3 fast + 1 slow" "$THROTTLE" $(lim "$FAST" "${LOOPS[@]:0:3}") "${LOOPS[3]}:$SLOW" -- \
  "$TEK" write "$b@1" "${LOOPS[@]}" --yes --allow-unsigned --report "$CACHE/slow.json"
python3 - "$CACHE/slow.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"   {r['path']}: {r['result']['status']} total {r['durations']['total_secs']:.2f}s "
          f"(write {r['durations']['write_secs']:.2f}s) split_off={r['split_off']}")
PY
# the fast targets' own finishing time (their reports), the slow one being the last
FASTMAX=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.2f" % max(x["durations"]["total_secs"] for x in r[:3]))' "$CACHE/slow.json")

echo "== summary =="
v=$(basename "$V1" .img); d=$(basename "$DENSE" .img)
printf '  %-52s %s\n' \
  "CPU-bound $v tek/bmaptool (target <= 0.5)" "$(ratio "$v tek write (store)" "$v bmaptool copy")" \
  "CPU-bound $d throughput vs dd w+r (target >= 0.8)" "$(ratio "$d raw floor (dd w+r data)" "$d tek write (store)")" \
  "disk-bound $v tek/floor (target <= 1.3)" "$(ratio "$v throttled tek x1" "$v throttled raw floor")" \
  "disk-bound $v x4 aggregate vs x1 (target >= 3)" "$(echo "scale=2; 4 * ${T[$v throttled tek x1]} / ${T[$v throttled tek x4]}" | bc)" \
  "disk-bound $d fast targets beside a slow one vs alone (s)" "$FASTMAX vs ${T[$d throttled fast x3 alone]} (whole job ${T[$d throttled 3 fast + 1 slow]})"
