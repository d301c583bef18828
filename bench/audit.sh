#!/usr/bin/env bash
# audit.sh: `tek image audit` (the privacy audit, nothing mounted) against the kernel's and
# ntfs-3g's readers: `mount -o ro` of each filesystem + `find` over it, and `--deep` against
# `grep -rEI` for the same patterns over the mounted tree.
#
#   bench/audit.sh [V1.img [WIN.img]]
#
# Defaults: $BENCH_CACHE/v1.img and win.img (BENCH_CACHE defaults to ../bench-cache; built with
# ../shared/bench/make-image.sh when missing: 4 GiB GPT disks, ~1.5 GiB of files in ext4 (v1) or
# NTFS (win)). The tek binary is $TEK, else $CARGO_TARGET_DIR/release/tek, built when missing.
# Needs root (loop devices, mount), ntfs-3g. The kernel here has no vfat: the ESP is left out of
# the mount side (it is empty in both images), so that side does slightly less work.
#
# Every run starts with a warm page cache (the image read once), as a maintainer auditing an
# image just imported would have. Goal: tek <= 1.0x the mount side, for both.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${BENCH_CACHE:-$here/../bench-cache}
v1=${1:-$cache/v1.img}
win=${2:-$cache/win.img}
mk=${MAKE_IMAGE:-$here/../shared/bench/make-image.sh}
for pair in "v1:$v1" "win:$win"; do
  variant=${pair%%:*} path=${pair#*:}
  if [ ! -f "$path" ]; then
    echo "building $path with $mk --variant $variant" >&2
    mkdir -p "$(dirname "$path")"
    bash "$mk" --variant "$variant" "$path" >&2
  fi
done
tek=${TEK:-${CARGO_TARGET_DIR:-$here/target}/release/tek}
if [ ! -x "$tek" ]; then
  (cd "$here" && cargo build --release -p agent >&2)
fi
[ "$(id -u)" = 0 ] || { echo "audit.sh: needs root (loop devices, mount)" >&2; exit 2; }
command -v ntfs-3g >/dev/null || { echo "audit.sh: needs ntfs-3g" >&2; exit 2; }

state=$(mktemp -d)
mnt=$state/mnt
mkdir -p "$mnt"
loops=()
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT
now() { date +%s.%N; }
# The same patterns as the audit's --deep (deep.rs), as extended regular expressions.
patterns=(
  -e '[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}'
  -e '(\+[0-9]{1,3}[ .-]?)?(\([0-9]{2,5}\)[ .-]?|[0-9]{2,5}[ .-])[0-9]{3,4}[ .-][0-9]{3,4}'
  -e '[A-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]'
  -e '[0-9]{3}-[0-9]{2}-[0-9]{4}'
  -e '([0-9][ -]?){12,18}[0-9]'
)

# mount_side IMAGE MODE: mounts every ext4/NTFS partition read-only through a loop device with
# offset, runs find (MODE=meta) or grep (MODE=deep) over it, unmounts; prints seconds.
mount_side() {
  local img=$1 mode=$2 t0 t1
  t0=$(now)
  while read -r start size type; do
    local fs
    fs=$(blkid -p -o value -s TYPE -O $((start * 512)) "$img" 2>/dev/null || true)
    case "$fs" in ext4 | ntfs) ;; *) continue ;; esac
    local l
    l=$(losetup --find --show -r -o $((start * 512)) --sizelimit $((size * 512)) "$img")
    loops+=("$l")
    if [ "$fs" = ntfs ]; then ntfs-3g -o ro "$l" "$mnt"; else mount -o ro "$l" "$mnt"; fi
    if [ "$mode" = meta ]; then
      find "$mnt" -printf '%p %s\n' >/dev/null
    else
      grep -rEIc "${patterns[@]}" "$mnt" >/dev/null || true
    fi
    umount "$mnt"
    losetup -d "$l"
  done < <(sfdisk -d "$img" | awk -F'[=,]' '/start=/ {gsub(/ /,""); print $2, $4, $6}')
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

tek_side() {
  local img=$1 t0 t1
  shift
  t0=$(now)
  "$tek" --state "$state/tek" image audit "$img" "$@" >/dev/null || true
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

printf '%-8s %-7s %10s %10s %7s\n' image audit "tek s" "mount s" ratio
for img in "$v1" "$win"; do
  cat "$img" >/dev/null
  name=$(basename "$img" .img)
  for mode in meta deep; do
    if [ "$mode" = meta ]; then a=$(tek_side "$img"); else a=$(tek_side "$img" --deep); fi
    b=$(mount_side "$img" "$mode")
    printf '%-8s %-7s %10.2f %10.2f %6.2fx\n' "$name" "$mode" "$a" "$b" "$(echo "$a / $b" | bc -l)"
  done
done
