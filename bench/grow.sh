#!/usr/bin/env bash
# bench/grow.sh: what fitting the layout to a larger disk costs. The v1 sample (DATA last: its
# ext4 grows) and the win sample (Recovery after C:: Recovery moves to the disk's end, C:'s NTFS
# grows) are each written by `tek write` onto a fresh disk 4x the image's size, once imported
# without a grow hint (the plain write: GPT fix-ups only) and once with it (layout map + filesystem
# grow + its checks). Prints both times side by side, the extra time and its ratio to the plain
# write (goal: the extra <= 10% of the write), and the imager's own phase times. Then the same
# job done by hand, as a technician would without tek: `dd conv=sparse` of the image file,
# `sgdisk -e` (backup GPT to the disk's end), Recovery's bytes moved with `dd` and its entry
# recreated there (type, GUID, name, attributes kept), the grown partition's entry recreated up
# to it, and `e2fsck -fn` + `resize2fs` or `ntfsresize --info` + `ntfsresize` (each tool's
# required check, none after, no read-back); printed with tek's grow write as a ratio to it.
#
#   bench/grow.sh [RUNS]     (as root; images built with ../shared/bench/make-image.sh, cached)
#
# Env: TEK (default target/release/tek), CACHE (default ../bench-cache/grow), SIZE (image size,
# default 1G), FILL (default 256M), MAKE_IMAGE (default ../shared/bench/make-image.sh), THROTTLE
# (WRITE_MBPS:READ_MBPS: tek's writes run under ../shared/bench/throttle.sh, a real disk's speed). The disks
# are sparse files 4x SIZE on a tmpfs (only written bytes take memory); delete CACHE after.
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
LOOP= PART=
cleanup() {
  [ -z "$PART" ] || losetup -d "$PART" 2>/dev/null || true
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
# one NAME: SECS = seconds of one `tek write NAME LOOP`, its report in $W/r.json. Not run in a
# subshell: `fresh` keeps the loop device in LOOP, which the next call and `cleanup` detach.
SECS=
one() {
  fresh
  local s e; s=$(now)
  if [ -n "${THROTTLE:-}" ]; then # WRITE_MBPS:READ_MBPS, a real disk's bandwidth (throttle.sh)
    "$(dirname "$MAKE_IMAGE")/throttle.sh" "$LOOP:$THROTTLE" -- \
      "$TEK" write "$1@1" "$LOOP" --yes --allow-unsigned --json >"$W/r.json"
  else
    "$TEK" write "$1@1" "$LOOP" --yes --allow-unsigned --json >"$W/r.json"
  fi
  e=$(now)
  SECS=$(echo "scale=2; ($e - $s) / 1000000000" | bc)
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
phase() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r=r[0] if isinstance(r,list) else r; d=r['durations']; f=r.get('filesystem') or {}; print('write %.2f verify %.2f finish %.2f; %s %s -> %s bytes' % (d['write_secs'], d['verify_secs'], d['finish_secs'], f.get('filesystem','-'), f.get('old_bytes','-'), f.get('new_bytes','-')))" "$W/r.json"; }

# field NUM KEY: the value after "KEY: " in `sgdisk -i NUM` of the loop disk (first word).
field() { sgdisk -i "$1" "$LOOP" | sed -n "s/^$2: \([^ ]*\).*/\1/p"; }
# recreate NUM FIRST LAST: partition NUM's entry moved to FIRST..LAST, type, GUID, name and
# attribute bits kept.
recreate() {
  local n=$1 type guid name attrs bits=() b
  type=$(field "$n" "Partition GUID code") guid=$(field "$n" "Partition unique GUID")
  name=$(sgdisk -i "$n" "$LOOP" | sed -n "s/^Partition name: '\(.*\)'$/\1/p")
  attrs=$(field "$n" "Attribute flags")
  for b in $(seq 0 63); do
    (( (16#$attrs >> b) & 1 )) && bits+=(-A "$n:set:$b")
  done
  sgdisk -d "$n" -n "$n:$2:$3" -t "$n:$type" -u "$n:$guid" -c "$n:$name" "${bits[@]}" "$LOOP" >/dev/null
}
# part FIRST LAST: PART = a loop device over sectors FIRST..LAST of the disk.
part() {
  [ -z "$PART" ] || losetup -d "$PART"
  PART=$(losetup --find --show -o $(( $1 * 512 )) --sizelimit $(( ($2 - $1 + 1) * 512 )) "$LOOP")
}
# hand V: HAND = seconds of the by-hand job for image V, FIX = of its part after dd.
HAND= FIX=
hand() {
  local v=$1 img=$CACHE/$1-$SIZE-$FILL.img s m e moveby first last
  fresh
  s=$(now)
  dd if="$img" of="$LOOP" bs=4M conv=sparse,fsync status=none
  m=$(now)
  sgdisk -e "$LOOP" >/dev/null
  moveby=$(( (img_bytes * 4 - img_bytes) / 512 ))
  if [ "$v" = win ]; then
    first=$(field 4 "First sector") last=$(field 4 "Last sector")
    dd if="$img" of="$LOOP" bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc,fsync \
      skip=$(( first * 512 )) seek=$(( (first + moveby) * 512 )) count=$(( (last - first + 1) * 512 )) status=none
    recreate 4 $(( first + moveby )) $(( last + moveby ))
    last=$(( first + moveby - 1 )) first=$(field 3 "First sector")
    recreate 3 "$first" "$last"
    part "$first" "$last"
    ntfsresize --info -P "$PART" >/dev/null
    echo y | ntfsresize -P "$PART" >/dev/null
  else
    first=$(field 3 "First sector")
    recreate 3 "$first" 0
    part "$first" "$(field 3 "Last sector")"
    e2fsck -fn "$PART" >/dev/null
    resize2fs "$PART" >/dev/null 2>&1
  fi
  sync "$PART" "$LOOP" # fsync of these two, not the whole machine's page cache
  e=$(now)
  losetup -d "$PART"; PART=
  HAND=$(echo "scale=2; ($e - $s) / 1000000000" | bc)
  FIX=$(echo "scale=2; ($e - $m) / 1000000000" | bc)
}

printf '%-5s %10s %10s %10s %8s\n' image plain_s grow_s extra_s extra
for v in v1 win; do
  p=() g=()
  for _ in $(seq 1 "$RUNS"); do
    one "$v-plain"; p+=("$SECS"); pl=$(phase)
    one "$v-grow"; g+=("$SECS"); gl=$(phase)
  done
  ps=$(printf '%s\n' "${p[@]}" | median) gs=$(printf '%s\n' "${g[@]}" | median)
  extra=$(echo "scale=2; $gs - $ps" | bc)
  pct=$(echo "scale=1; 100 * ($gs - $ps) / $ps" | bc)
  printf '%-5s %10s %10s %10s %7s%%\n' "$v" "$ps" "$gs" "$extra" "$pct"
  echo "      plain: $pl"
  echo "      grow:  $gl"
done

echo
echo "by hand (dd conv=sparse + sgdisk + dd move + resize2fs/ntfsresize) against tek's grow write:"
printf '%-5s %10s %10s %10s %10s %8s %8s\n' image hand_s fixup_s tek_s tek_fix_s total fixup
for v in v1 win; do
  h=() f=() t=() tf=()
  for _ in $(seq 1 "$RUNS"); do
    hand "$v"; h+=("$HAND"); f+=("$FIX")
    one "$v-grow"; t+=("$SECS")
    tf+=("$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r=r[0] if isinstance(r,list) else r; print(r['durations']['finish_secs'])" "$W/r.json")")
  done
  hs=$(printf '%s\n' "${h[@]}" | median) fs=$(printf '%s\n' "${f[@]}" | median)
  ts=$(printf '%s\n' "${t[@]}" | median) tfs=$(printf '%s\n' "${tf[@]}" | median)
  printf '%-5s %10s %10s %10s %10s %7sx %7sx\n' "$v" "$hs" "$fs" "$ts" "$tfs" \
    "$(echo "scale=2; $ts / $hs" | bc)" "$(echo "scale=2; $tfs / $fs" | bc)"
done
