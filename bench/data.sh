#!/usr/bin/env bash
# bench/data.sh: tek client-data ingest + restore (onto ext4 on a loop device) + verify, against
# `cp -a` + checking the copy with b3sum, `tar | zstd` for the ingest alone, and
# `tek audit breach-report` on a 100k-entry audit log.
#
#   bench/data.sh [SOURCE_DIR] [WORK_DIR] [RUNS]
#
# SOURCE_DIR defaults to ../bench-cache/client-data (built with
# ../shared/bench/make-client-data.sh when missing: 20k files, ~1 GiB). WORK_DIR (default a
# temp dir under /var/tmp) holds the state, a 4 GiB sparse ext4 image and the tar.zst. RUNS
# (default 3): tek and the baseline run back to back that many times, alternating which goes
# first, and the table shows medians (each run's figures are printed as they come). Needs root
# (losetup, mount). Builds tek and the audit-log generator with `cargo build --release`
# (CARGO_TARGET_DIR, default target/ in the repository).
#
# What is timed:
#   tek      `tek data ingest` (source -> encrypted staging, fsync'd), then `tek data restore`
#            (authenticate all ciphertext, write, flush, read every file back from the device
#            with the page cache bypassed, compare BLAKE3). Fresh state and target each run.
#   baseline `cp -a SRC/. DST/ && sync -f DST`, then check the copy: the issue says
#            `b3sum --check`, but b3sum --check cannot read back the non-UTF-8 names this data
#            set has, so the same work is done name-independently: b3sum every file of the copy
#            (sorted, NUL-separated, through xargs) and `cmp` with the list made from the source
#            beforehand (untimed). Like b3sum --check right after cp, it reads the copy from the
#            page cache (cp leaves it there); tek's read-back goes to the device.
# Both write to the same ext4 filesystem (default mount options, made without lazy init) on the
# same loop device, after one untimed round of each; the source is read once beforehand so every
# contender reads it from the page cache.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-${BENCH_CACHE:-$here/../bench-cache}/client-data}
work=${2:-$(mktemp -d /var/tmp/tek-bench-data.XXXXXX)}
runs=${3:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
[ "$(id -u)" = 0 ] || { echo "bench/data.sh: needs root (loop devices, mount)" >&2; exit 2; }
if [ ! -d "$src" ]; then
  bash $here/../shared/bench/make-client-data.sh "$src"
fi
(cd "$here" && cargo build --release -p agent >/dev/null \
  && cargo build --release -p client-data --example audit_log >/dev/null)
tek=$CARGO_TARGET_DIR/release/tek
gen_audit=$CARGO_TARGET_DIR/release/examples/audit_log
mkdir -p "$work"
img=$work/fs.img mnt=$work/mnt lo=""
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt" || true
  [ -n "$lo" ] && losetup -d "$lo" || true
  rm -rf "$work/state" "$work/audit-state" "$work/src.tar.zst" "$img" "$work/list.src" \
    "$work/list.copy" "$work/id" "$work/restore.json" "$work/ingest.log"
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
truncate -s 4G "$img"
# No lazy init: otherwise ext4lazyinit zeroes inode tables in the background after mounting and
# whoever runs first pays for it.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img"
lo=$(losetup --find --show "$img")
mkdir -p "$mnt"
mount "$lo" "$mnt"

files=$(find "$src" -type f | wc -l)
bytes=$(du -sb "$src" | cut -f1)
# Warm the page cache so every contender reads the source at the same speed.
find "$src" -type f -print0 | xargs -0 cat > /dev/null
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 b3sum) > "$work/list.src"

now() { date +%s.%N; }
t() { local s; s=$(now); "$@"; echo "$(now) - $s" | bc; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR%2) print a[m]; else print (a[m]+a[m+1])/2}'; }

run_tek() {
  rm -rf "$work/state" "$mnt/tek"
  mkdir "$mnt/tek"
  sync -f "$mnt"
  export TEK_STATE=$work/state
  t_ingest=$(t bash -c "'$tek' data ingest --client BENCH --ticket B-1 '$src' > '$work/id' 2> '$work/ingest.log'")
  local id; id=$(cat "$work/id")
  t_restore=$(t bash -c "'$tek' data restore '$id' '$mnt/tek' --json > '$work/restore.json'")
  # Captured first: `tek ... | grep -q` would close the pipe early under pipefail.
  local shown; shown=$("$tek" data show "$id")
  grep -q '"state": "migrated"' <<< "$shown" || { echo "restore did not verify" >&2; exit 1; }
  rm -rf "$mnt/tek"
}
run_base() {
  rm -rf "$mnt/cp"
  mkdir "$mnt/cp"
  sync -f "$mnt"
  t_cp=$(t bash -c "cp -a '$src/.' '$mnt/cp/' && sync -f '$mnt/cp'")
  t_b3=$(t bash -c "cd '$mnt/cp' && find . -type f -print0 | sort -z | xargs -0 b3sum > '$work/list.copy' && cmp '$work/list.src' '$work/list.copy'")
  rm -rf "$mnt/cp"
}

# One untimed round first: the image is a sparse file, and the first writes into each region of
# it make the host filesystem allocate blocks (seen: the first restore's write phase 3.2-3.3 s,
# later ones 1.9 s), which a real disk does not do. After this round both contenders mostly
# write into regions that already exist.
run_tek; run_base

declare -a I R T C B S Q
for ((i = 0; i < runs; i++)); do
  if ((i % 2 == 0)); then run_tek; run_base; else run_base; run_tek; fi
  I+=("$t_ingest") R+=("$t_restore") C+=("$t_cp") B+=("$t_b3")
  T+=("$(echo "$t_ingest + $t_restore" | bc)") S+=("$(echo "$t_cp + $t_b3" | bc)")
  Q+=("$(echo "($t_ingest + $t_restore) / ($t_cp + $t_b3)" | bc -l)")
  printf 'run %d: tek %.2f + %.2f = %.2f s, baseline %.2f + %.2f = %.2f s, ratio %.2fx\n' \
    $((i + 1)) "$t_ingest" "$t_restore" "${T[-1]}" "$t_cp" "$t_b3" "${S[-1]}" "${Q[-1]}"
done
t_tarzst=$(t bash -c "tar -cf - -C '$src' . | zstd -q -T0 -3 -o '$work/src.tar.zst'")

# Breach report on a generated 100k-entry audit log (ingest/migrate/verify/wipe of 25k datasets
# of 1000 clients), the whole log in the window.
"$gen_audit" "$work/audit-state/audit" 100000 > /dev/null
declare -a BR
for ((i = 0; i < runs; i++)); do
  BR+=("$(t bash -c "TEK_STATE='$work/audit-state' '$tek' audit breach-report --from 2000-01-01 --to 2100-12-31 --json > /dev/null")")
done

m_i=$(median "${I[@]}") m_r=$(median "${R[@]}") m_t=$(median "${T[@]}")
m_c=$(median "${C[@]}") m_b=$(median "${B[@]}") m_s=$(median "${S[@]}") m_q=$(median "${Q[@]}")
printf '\nsource: %s (%s files, %s bytes); medians of %d runs\n\n' "$src" "$files" "$bytes" "$runs"
printf '%-46s %9s\n' "step" "seconds"
printf '%-46s %9.2f\n' "tek data ingest" "$m_i"
printf '%-46s %9.2f\n' "tek data restore (write + flush + read-back)" "$m_r"
printf '%-46s %9.2f\n' "tek total" "$m_t"
printf '%-46s %9.2f\n' "cp -a + sync" "$m_c"
printf '%-46s %9.2f\n' "b3sum of the copy + cmp (b3sum --check)" "$m_b"
printf '%-46s %9.2f\n' "baseline total (cp -a + b3sum check)" "$m_s"
printf '%-46s %9.2f\n' "tar | zstd -T0 -3 (ingest reference, 1 run)" "$t_tarzst"
printf '%-46s %9.2f\n' "tek audit breach-report, 100k entries" "$(median "${BR[@]}")"
printf '\n%-46s %9.2fx  (target <= 1.30x; median of per-run ratios)\n' "tek total / baseline total" "$m_q"
printf '%-46s %9.2fx\n' "tek ingest / tar|zstd" "$(echo "$m_i / $t_tarzst" | bc -l)"
printf '%-46s %9.2fx\n' "tek restore+verify / baseline" "$(echo "$m_r / $m_s" | bc -l)"
