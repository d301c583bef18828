#!/usr/bin/env bash
# pull_write.sh: bench/library.sh's section 4 alone, repeated: pull-and-write of v1 onto a loop
# device throttled to 250 MB/s write, 400 MB/s read (../shared/bench/throttle.sh, direct I/O)
# from an empty cache over nginx (library format 2), then the same write from the full cache,
# RUNS times alternating, each pair's ratio printed with the load (`uptime`) before it (issue 14:
# goal <= 1.1x in every run).
#
#   bench/pull_write.sh [WORKDIR] [RUNS]   (default /var/tmp/tek-library, 5; PULL_WRITE=BINARY
#                                           runs another build of the example, for a before/after)
#
# Needs a WORKDIR that bench/library.sh set up once (v1.img, maint/, bench/trusted-keys,
# s3/library/p, www/) and `cargo build --release -p image-library --examples`; nginx, losetup,
# mkfs.ext4. PERF=FILE records each empty-cache run with `perf record` (dwarf call graphs) into
# FILE.N (a release build with CARGO_PROFILE_RELEASE_DEBUG=true names the functions). As in library.sh, each empty-cache pull gets a new state directory on a journaled
# ext4 of its own. DISK_DIR=DIR puts the target disk's 4 GiB backing file in DIR (default
# WORKDIR/out; /dev/shm gives the target a device of its own, as a bench bay's disk is, instead
# of sharing the store's virtual disk).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/var/tmp/tek-library}
runs=${2:-5}
pull_write=${PULL_WRITE:-$PWD/target/release/examples/pull_write}
[ -x "$pull_write" ] || { echo "pull_write.sh: missing $pull_write (see the header)" >&2; exit 2; }
for f in "$work/v1.img" "$work/bench/trusted-keys" "$work/s3/library/p/tek-library.json" "$work/www"; do
  [ -e "$f" ] || { echo "pull_write.sh: missing $f: run bench/library.sh $work once" >&2; exit 2; }
done
shared=../shared/bench
[ -d "$shared" ] || shared=/work/shared/bench
ln -sfn "$work/s3/library" "$work/www/lib"

disk_dir=${DISK_DIR:-$work/out}
mkdir -p "$work/nginx" "$disk_dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/nginx/pw.conf" <<EOF
user root;
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/pw.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx/body;
  server { listen 127.0.0.1:$port; root $work/www; }
}
EOF
/usr/sbin/nginx -c "$work/nginx/pw.conf" -e "$work/nginx/error.log" &
ngpid=$!
loop='' fresh=$work/pw-fresh
cleanup() {
  kill $ngpid 2>/dev/null || true
  [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
  umount "$fresh" 2>/dev/null || true
  rm -f "$fresh.img" "$disk_dir/pw-disk.img"
}
trap cleanup EXIT
# The packs in the page cache, as after library.sh's earlier sections: nginx serves memory.
cat "$work"/s3/library/p/packs/* >/dev/null
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

umount "$fresh" 2>/dev/null || true
rm -rf "$fresh" "$fresh.img"
truncate -s 16G "$fresh.img"
# Inode tables and journal initialised now: with mkfs's lazy defaults the kernel's ext4lazyinit
# thread writes them during the first run (measured: 36 s instead of 13 s for run 1).
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$fresh.img"
mkdir -p "$fresh"
mount -o loop "$fresh.img" "$fresh"
truncate -s 4G "$disk_dir/pw-disk.img"
loop=$(losetup -f --show "$disk_dir/pw-disk.img")
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
write_v1() { # STATE [PERF_OUTPUT]
  local perf=()
  [ -z "${2:-}" ] || perf=(perf record -q -F 499 ${PERF_GRAPH:---call-graph dwarf,16384} -o "$2" --)
  "$shared/throttle.sh" "$loop:250:400" -- "${perf[@]}" "$pull_write" "$1/store" \
    "$work/bench/trusted-keys" bench@1 "http://127.0.0.1:$port/lib/p" "$loop"
}
for i in $(seq "$runs"); do
  state=$fresh/$i
  mkdir -p "$state"
  load=$(uptime | sed 's/.*load average: //')
  empty=$(write_v1 "$state" ${PERF:+"$PERF.$i"})
  full=$(write_v1 "$state")
  e=$(field seconds <<<"$empty") f=$(field seconds <<<"$full")
  p=$(field pull_seconds <<<"$empty")
  echo "run $i (load $load): empty cache $e s (pull done at $p s), full cache $f s: $(awk -v e="$e" -v f="$f" 'BEGIN { printf "%.3f", e / f }')x"
  echo "  durations empty: $(field durations <<<"$empty")"
  echo "  durations full:  $(field durations <<<"$full")"
  rm -rf "$state"
done
cmp -n "$(stat -c %s "$work/v1.img")" "$work/v1.img" "$loop" || { echo "the disk does not hold v1" >&2; exit 1; }
echo "the disk holds v1 (cmp)"
