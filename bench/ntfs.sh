#!/usr/bin/env bash
# bench/ntfs.sh: migration of client data onto NTFS (ntfs-3g, FUSE): `tek data restore` (names
# mapped for Windows, descriptors inherited, everything flushed and read back) against
# `cp -a` onto the same mount + `sync` + hashing the copy with b3sum.
#
#   bench/ntfs.sh [SOURCE_DIR] [WORK_DIR] [RUNS]
#
# SOURCE_DIR defaults to ../bench-cache/client-data (built with
# ../shared/bench/make-client-data.sh when missing: 20k files, ~1 GiB). WORK_DIR (default a temp
# dir under /var/tmp) holds the state and an 8 GiB sparse NTFS image (mkntfs) on a loop device,
# mounted with the options tek's agent mounts an NTFS with (`NTFS_3G_OPTIONS` in
# client-data/src/ntfs_mount.rs, read from there: noatime, big_writes, windows_names, ...), for
# tek and for cp alike. 8 GiB, not 4: ntfs-3g honours big_writes only on volumes of 4 GiB and
# more, as a replacement disk is; a 4 GiB image is a little less. RUNS (default 3): both contenders
# run back to back that many times, alternating which goes first; the table shows medians.
# Needs root (losetup, FUSE). Builds tek with `cargo build --release -p agent`.
#
# What is timed (the dataset is ingested once beforehand, untimed: the issue compares the
# migration onto the new disk):
#   tek      `tek data restore ID DIR`: authenticate all ciphertext, map names, write, set
#            descriptors and times, flush (syncfs), read every file back (page cache dropped)
#            and compare BLAKE3 and metadata.
#   baseline `cp -a SRC/. DST/ && sync -f DST`, then b3sum every file of the copy (sorted,
#            NUL-separated, through xargs) and `cmp` with the list made from the source
#            beforehand (untimed). It reads the copy back from the page cache (cp leaves it
#            there); tek's read-back drops the pages first.
# ntfs-3g accepts every POSIX name (it writes them in its POSIX namespace), so cp keeps names
# Windows cannot open; tek renames those (the data set has none of the reserved characters, so
# both write the same names here, apart from its non-UTF-8 ones, which ntfs-3g refuses to cp).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-${BENCH_CACHE:-$here/../bench-cache}/client-data}
work=${2:-$(mktemp -d /var/tmp/tek-bench-ntfs.XXXXXX)}
runs=${3:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
[ "$(id -u)" = 0 ] || { echo "bench/ntfs.sh: needs root (loop devices, FUSE)" >&2; exit 2; }
command -v ntfs-3g >/dev/null || { echo "bench/ntfs.sh: needs ntfs-3g" >&2; exit 2; }
if [ ! -d "$src" ]; then
  bash $here/../shared/bench/make-client-data.sh "$src"
fi
(cd "$here" && cargo build --release -p agent >/dev/null)
tek=${TEK:-$CARGO_TARGET_DIR/release/tek}
mkdir -p "$work"
img=$work/ntfs.img mnt=$work/mnt lo=""
export TEK_STATE=$work/state
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt" || true
  [ -n "$lo" ] && losetup -d "$lo" || true
  rm -rf "$work/state" "$img" "$work/list.src" "$work/list.copy" "$work/id" \
    "$work/restore.json" "$work/cp.err"
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
opts=$(sed -n 's/^pub const NTFS_3G_OPTIONS: &str = "\(.*\)";$/\1/p' "$here/client-data/src/ntfs_mount.rs")
[ -n "$opts" ] || { echo "bench/ntfs.sh: NTFS_3G_OPTIONS not found in client-data/src/ntfs_mount.rs" >&2; exit 2; }
truncate -s 8G "$img"
lo=$(losetup --find --show "$img")
mkntfs -q -f -F -L Windows "$lo" >/dev/null 2>&1
mkdir -p "$mnt"
ntfs-3g -o "$opts" "$lo" "$mnt"

files=$(find "$src" -type f | wc -l)
bytes=$(du -sb "$src" | cut -f1)
find "$src" -type f -print0 | xargs -0 cat > /dev/null
# Only names valid as UTF-8 reach the copy (ntfs-3g refuses the others with EILSEQ), so the
# baseline checks those; tek maps the others and checks all.
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 b3sum 2>/dev/null \
  | LC_ALL=C.UTF-8 grep -a -v -P '[^\x00-\x7f]' || true) > "$work/list.src"
"$tek" data ingest --client BENCH --ticket B-1 "$src" > "$work/id"
id=$(cat "$work/id")

now() { date +%s.%N; }
t() { local s; s=$(now); "$@"; echo "$(now) - $s" | bc; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR%2) print a[m]; else print (a[m]+a[m+1])/2}'; }

run_tek() {
  rm -rf "$mnt/tek"
  mkdir "$mnt/tek"
  sync -f "$mnt"
  t_restore=$(t bash -c "'$tek' data restore '$id' '$mnt/tek' --json > '$work/restore.json'")
  grep -q '"mismatches": \[\]' "$work/restore.json" || { echo "restore did not verify" >&2; exit 1; }
  rm -rf "$mnt/tek"
}
run_base() {
  rm -rf "$mnt/cp"
  mkdir "$mnt/cp"
  sync -f "$mnt"
  t_cp=$(t bash -c "cp -a '$src/.' '$mnt/cp/' 2> '$work/cp.err'; sync -f '$mnt/cp'")
  t_b3=$(t bash -c "cd '$mnt/cp' && find . -type f -print0 | sort -z | xargs -0 b3sum \
    | LC_ALL=C.UTF-8 grep -a -v -P '[^\x00-\x7f]' > '$work/list.copy'; cmp '$work/list.src' '$work/list.copy'")
  rm -rf "$mnt/cp"
}

# One untimed round each first (the sparse image's first writes cost the host allocation).
run_tek; run_base

declare -a R C B S Q
for ((i = 0; i < runs; i++)); do
  if ((i % 2 == 0)); then run_tek; run_base; else run_base; run_tek; fi
  R+=("$t_restore") C+=("$t_cp") B+=("$t_b3")
  S+=("$(echo "$t_cp + $t_b3" | bc)")
  Q+=("$(echo "$t_restore / ($t_cp + $t_b3)" | bc -l)")
  printf 'run %d: tek restore+verify %.2f s, baseline %.2f + %.2f = %.2f s, ratio %.2fx\n' \
    $((i + 1)) "$t_restore" "$t_cp" "$t_b3" "${S[-1]}" "${Q[-1]}"
done
cp_errors=$(grep -c . "$work/cp.err" || true)

printf '\nsource: %s (%s files, %s bytes) onto ntfs-3g -o %s; medians of %d runs\n\n' \
  "$src" "$files" "$bytes" "$opts" "$runs"
printf '%-52s %9s\n' "step" "seconds"
printf '%-52s %9.2f\n' "tek data restore (write + flush + read-back)" "$(median "${R[@]}")"
printf '%-52s %9.2f\n' "cp -a + sync" "$(median "${C[@]}")"
printf '%-52s %9.2f\n' "b3sum of the copy + cmp" "$(median "${B[@]}")"
printf '%-52s %9.2f\n' "baseline total" "$(median "${S[@]}")"
printf '\n%-52s %9.2fx  (goal <= 1.30x; median of per-run ratios)\n' "tek / baseline" "$(median "${Q[@]}")"
printf '%-52s %9s\n' "cp -a errors (names ntfs-3g refused)" "$cp_errors"
printf '%-52s %9s\n' "tek names mapped" "$(grep -o '"entry":' "$work/restore.json" | wc -l)"
