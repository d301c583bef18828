#!/usr/bin/env bash
# store.sh: the image store against `zstd -T0 -3` and `casync make`, on two versions of a disk.
#
#   bench/store.sh [V1.img [V2.img [WORKDIR]]]
#
# Defaults: ../bench-cache/v1.img and v2.img (built with ../shared/bench/make-image.sh when
# missing: a 4 GiB sparse GPT disk with ~1.5 GiB of files, and the same with ~5% of files
# changed). WORKDIR (default: a temp dir next to the images) holds the stores and is removed at
# the end. The tek binary is $TEK, else $CARGO_TARGET_DIR/release/tek, built when missing.
#
# Measures for each tool: import time and logical throughput for v1 and v2, bytes stored for v1,
# new bytes stored for v2, and the total store size; prints a table with ratios against tek.
# Targets: tek import >= 0.5 GB/s on 2 cores; v2 adds <= 10% of v1's stored bytes; tek's store
# no larger than casync's for the same two versions. Run once on a quiet machine.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${BENCH_CACHE:-$here/../bench-cache}
v1=${1:-$cache/v1.img}
v2=${2:-$cache/v2.img}
mk=${MAKE_IMAGE:-$here/../shared/bench/make-image.sh}
[ -x "$mk" ] || mk=$here/../shared/bench/make-image.sh
for pair in "v1:$v1" "v2:$v2"; do
  variant=${pair%%:*} path=${pair#*:}
  if [ ! -f "$path" ]; then
    echo "building $path with $mk --variant $variant" >&2
    mkdir -p "$(dirname "$path")"
    "$mk" --variant "$variant" "$path"
  fi
done
work=${3:-$(mktemp -d "$(dirname "$v1")/store-bench.XXXXXX")}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

tek=${TEK:-${CARGO_TARGET_DIR:-$here/target}/release/tek}
if [ ! -x "$tek" ]; then
  (cd "$here" && cargo build --release -p agent >&2)
fi
for t in zstd casync; do
  command -v $t >/dev/null || { echo "store.sh: needs $t" >&2; exit 2; }
done

# Sum of the apparent sizes of all files under a directory (what a copy or an HTTP mirror holds).
bytes_in() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
now() { date +%s.%N; }
logical=$(stat -c %s "$v1")
logical2=$(stat -c %s "$v2")

echo "inputs: $v1 ($logical bytes), $v2 ($logical2 bytes); $(nproc) cores" >&2
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
cat "$v1" "$v2" > /dev/null # same warm page cache for every tool

# tek
S="$work/tek"
t0=$(now); "$tek" --state "$S" image import bench@1 "$v1" >&2; t1=$(now)
tek_v1=$(bytes_in "$S/store/chunks")
t2=$(now); "$tek" --state "$S" image import bench@2 "$v2" >&2; t3=$(now)
tek_all=$(bytes_in "$S/store/chunks")
tek_t1=$(echo "$t1 - $t0" | bc -l); tek_t2=$(echo "$t3 - $t2" | bc -l)
"$tek" --state "$S" image stats >&2
rm -rf "$S"

# zstd -T0 -3 of each whole image (no dedup: v2 costs a whole second file)
t0=$(now); zstd -q -T0 -3 -c "$v1" > "$work/v1.zst"; t1=$(now)
t2=$(now); zstd -q -T0 -3 -c "$v2" > "$work/v2.zst"; t3=$(now)
zs_v1=$(stat -c %s "$work/v1.zst"); zs_v2=$(stat -c %s "$work/v2.zst")
zs_all=$((zs_v1 + zs_v2))
zs_t1=$(echo "$t1 - $t0" | bc -l); zs_t2=$(echo "$t3 - $t2" | bc -l)
rm -f "$work"/v*.zst

# casync make (default: 64 KiB average chunks, zstd)
C="$work/casync"; mkdir -p "$C"
t0=$(now); casync make --store="$C/store.castr" "$C/v1.caibx" "$v1" >&2; t1=$(now)
ca_v1=$(bytes_in "$C/store.castr")
t2=$(now); casync make --store="$C/store.castr" "$C/v2.caibx" "$v2" >&2; t3=$(now)
ca_all=$(bytes_in "$C/store.castr")
ca_t1=$(echo "$t1 - $t0" | bc -l); ca_t2=$(echo "$t3 - $t2" | bc -l)
rm -rf "$C"

python3 - "$logical" "$logical2" \
  tek "$tek_t1" "$tek_t2" "$tek_v1" "$tek_all" \
  "zstd -T0 -3" "$zs_t1" "$zs_t2" "$zs_v1" "$zs_all" \
  "casync make" "$ca_t1" "$ca_t2" "$ca_v1" "$ca_all" <<'PY'
import sys
a = sys.argv[1:]
l1, l2 = int(a[0]), int(a[1])
rows = []
for i in range(2, len(a), 5):
    name, t1, t2, s1, sall = a[i], float(a[i+1]), float(a[i+2]), int(a[i+3]), int(a[i+4])
    rows.append((name, t1, t2, s1, sall - s1, sall))
tek = rows[0]
M = 1 << 20
print(f"{'tool':<12} {'v1 time':>8} {'v1 GB/s':>8} {'v2 time':>8} {'v2 GB/s':>8} "
      f"{'v1 stored':>11} {'v2 new':>10} {'v2/v1':>6} {'total':>11} {'total/tek':>9}")
for name, t1, t2, s1, new2, sall in rows:
    print(f"{name:<12} {t1:7.1f}s {l1/t1/1e9:8.2f} {t2:7.1f}s {l2/t2/1e9:8.2f} "
          f"{s1/M:9.1f}Mi {new2/M:8.1f}Mi {new2/s1*100:5.1f}% {sall/M:9.1f}Mi "
          f"{sall/tek[5]:9.2f}")
name, t1, t2, s1, new2, sall = tek
casync = rows[2]
print()
print(f"targets: tek import >= 0.5 GB/s: v1 {l1/t1/1e9:.2f}, v2 {l2/t2/1e9:.2f} GB/s; "
      f"v2 adds <= 10% of v1: {new2/s1*100:.1f}%; "
      f"store <= casync: {sall/M:.1f} vs {casync[5]/M:.1f} MiB")
PY
