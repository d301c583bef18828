#!/usr/bin/env bash
# library.sh: the image library benchmark of issue 14, over loopback, side by side, one run:
#
#   bench/library.sh [WORKDIR]      (default /var/tmp/tek-library; needs ~24 GiB free)
#
# Builds v1 and v2 (4 GiB, ../shared/bench/make-image.sh), imports and signs both in a
# maintainers' depot, starts s3s-fs and one nginx (serving the bucket directory, v1.img.zst and
# a casync store of v1), then measures:
#   1. tek image push of v1, then v2, to s3s-fs, into a format-2 library (packs, what a new
#      remote gets) and a format-1 one (one object per chunk: its tek-library.json is written
#      first, and a remote keeps its format): seconds, requests.
#   2. tek image pull of v1 into an empty store: format 2 from s3s-fs and from nginx, format 1
#      from nginx, against curl of v1.img.zst (zstd -3 of the raw image) from the same nginx
#      into a file, and casync extract of v1 from an HTTP casync store (zstd chunks) on the same
#      nginx. Every contestant's output is synced (sync -f) inside its time (tek's pull syncs
#      its store itself). Throughput = stored bytes moved / seconds; goal: tek >= 0.8x curl,
#      and ahead of casync.
#   3. tek image pull of v2 from nginx with v1 cached, both formats: bytes nginx sent (its
#      access log's $body_bytes_sent, documents included) against v2's new stored bytes (the
#      compressed chunks v2 has and v1 has not); goal <= 1.1x.
#   4. Pull-and-write of v1 (library/examples/pull_write.rs) onto a loop device throttled to
#      250 MB/s write, 400 MB/s read (../shared/bench/throttle.sh, direct I/O), from an empty
#      cache over nginx (format 2), against writing it from the full local cache; goal <= 1.1x.
#   5. The same v1 pull and curl over a link of LINK (default 1gbit; env LINK=...): a network
#      namespace of its own whose loopback has a tbf qdisc of that rate, with its own nginx, so
#      both contestants meet the link a depot's benches have instead of memory-speed loopback.
# Needs: cargo build --release -p agent -p image-library --examples --bins (tek and
# pull_write); s3s-fs, nginx, curl, zstd, casync, losetup. Figures and the command go in
# bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/var/tmp/tek-library}
tek=$PWD/target/release/tek
pull_write=$PWD/target/release/examples/pull_write
for b in "$tek" "$pull_write"; do
  [ -x "$b" ] || { echo "library.sh: missing $b (see the header for the build command)" >&2; exit 2; }
done
s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
for t in "$s3s" /usr/sbin/nginx curl zstd casync python3 losetup; do
  command -v "$t" >/dev/null || { echo "library.sh: needs $t" >&2; exit 2; }
done
mkdir -p "$work"
shared=../shared/bench
[ -d "$shared" ] || shared=/work/shared/bench
for v in v1 v2; do
  [ -f "$work/$v.img" ] || "$shared/make-image.sh" --variant "$v" "$work/$v.img" >/dev/null 2>&1
done

maint=$work/maint bench=$work/bench www=$work/www
rm -rf "$bench" "$work/s3" "$work/nginx" "$work/out"
mkdir -p "$work/s3/library/v1" "$work/nginx" "$work/out" "$www"
# The format-1 library: created with its format file (a push keeps a remote's format).
echo '{"format":"tek-library","version":1,"layout":"chunk-objects"}' >"$work/s3/library/v1/tek-library.json"
if [ ! -f "$maint/store/images/bench/2.json" ]; then
  rm -rf "$maint"
  "$tek" --state "$maint" image keygen maint --dir "$maint/keys" >/dev/null
  mkdir -p "$maint/trusted-keys"
  cp "$maint/keys/maint.pub" "$maint/trusted-keys/"
  for v in 1 2; do
    "$tek" --state "$maint" --trusted-keys "$maint/trusted-keys" image import "bench@$v" \
      "$work/v$v.img" --no-audit --sign-key "$maint/keys/maint.key" >/dev/null
  done
fi
mkdir -p "$bench/trusted-keys"
cp "$maint/keys/maint.pub" "$bench/trusted-keys/"
ln -sfn "$work/s3/library" "$www/lib"
[ -f "$www/v1.img.zst" ] || zstd -q -3 -T2 "$work/v1.img" -o "$www/v1.img.zst"
if [ ! -f "$www/v1.caibx" ]; then
  rm -rf "$www/v1.castr"
  casync make --compression=zstd --store="$www/v1.castr" "$www/v1.caibx" "$work/v1.img" >/dev/null
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3port=$(free_port) ngport=$(free_port)
"$s3s" --host 127.0.0.1 --port "$s3port" --access-key bench-ak --secret-key bench-sk "$work/s3" >/dev/null 2>&1 &
s3pid=$!
cat >"$work/nginx/nginx.conf" <<EOF
user root;
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  log_format tek '\$status \$body_bytes_sent \$request_uri';
  access_log $work/nginx/access.log tek;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx/body;
  server { listen 127.0.0.1:$ngport; root $www; }
}
EOF
/usr/sbin/nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
ngpid=$!
loop='' ns=''
cleanup() {
  kill $s3pid $ngpid 2>/dev/null || true
  [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
  if [ -n "$ns" ]; then
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  fi
  umount "$work/fresh" 2>/dev/null || true
  rm -f "$work/fresh.img"
}
trap cleanup EXIT
for p in "$s3port" "$ngport"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done

export AWS_ENDPOINT_URL=http://127.0.0.1:$s3port AWS_ACCESS_KEY_ID=bench-ak AWS_SECRET_ACCESS_KEY=bench-sk
ng=http://127.0.0.1:$ngport
results=$work/results.txt
: >"$results"
# rec NAME VALUE: one figure for the summary.
rec() { echo "$1 $2" >>"$results"; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.2f", e - s }'; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
nginx_bytes() { awk '{ n += $2 } END { print n + 0 }' "$work/nginx/access.log"; }
nginx_requests() { wc -l <"$work/nginx/access.log"; }
keys=(--trusted-keys "$maint/trusted-keys")
bkeys=(--trusted-keys "$bench/trusted-keys")

# Stored bytes: v1's chunks, and v2's chunks that v1 lacks.
read -r v1_stored v2_new < <(python3 - "$maint/store" <<'EOF'
import json, os, sys
store = sys.argv[1]
def ids(v):
    m = json.load(open(f"{store}/images/bench/{v}.json"))
    return {e["id"] for e in m["extents"] if e["kind"] == "chunk"}
size = lambda i: os.path.getsize(f"{store}/chunks/{i[:2]}/{i}.zst")
a, b = ids(1), ids(2)
print(sum(map(size, a)), sum(map(size, b - a)))
EOF
)
echo "v1: $v1_stored stored bytes; v2 new: $v2_new stored bytes"
echo "v1.img.zst: $(stat -c %s "$www/v1.img.zst") bytes; casync store: $(du -sb "$www/v1.castr" | cut -f1) bytes"

echo "== 1. tek push to s3s-fs"
for fmt in 2 1; do
  prefix=$([ $fmt = 2 ] && echo p || echo v1)
  for v in 1 2; do
    s=$(now)
    out=$("$tek" --state "$maint" "${keys[@]}" image push "bench@$v" --to "s3://library/$prefix" --json)
    t=$(since "$s")
    echo "  format $fmt bench@$v: $t s, $(field requests <<<"$out") requests, $(field uploaded_bytes <<<"$out") bytes"
    rec "push${fmt}_v${v}_s" "$t"; rec "push${fmt}_v${v}_requests" "$(field requests <<<"$out")"
  done
done

# The pulls' stores and the baselines' outputs live on a journaled ext4 of their own
# (mkfs.ext4's defaults, as a bench's /var/lib/tek has). This machine's root filesystem has no
# journal, and there ext4 scans past recently freed inodes on every create (perf: 40% of a
# pull's CPU in recently_deleted/find_inode_bit after an earlier run's store was deleted), a
# cost no bench's disk has. Each empty-cache pull still gets a new state directory.
umount "$work/fresh" 2>/dev/null || true
rm -rf "$work/fresh" "$work/fresh.img"
truncate -s 16G "$work/fresh.img"
mkfs.ext4 -q -F "$work/fresh.img"
mkdir -p "$work/fresh"
mount -o loop "$work/fresh.img" "$work/fresh"
odir=$work/fresh/out
mkdir -p "$odir"
runs=0
fresh() { runs=$((runs + 1)); state=$work/fresh/$runs; mkdir -p "$state"; }

echo "== 2. v1 from an empty cache"
pull_tek() { # URL LABEL
  fresh
  local s out t
  s=$(now)
  out=$("$tek" --state "$state" "${bkeys[@]}" image pull bench@1 --from "$1" --json)
  t=$(since "$s")
  echo "  tek pull from $2: $t s, $(field requests <<<"$out") requests, $(field fetched_bytes <<<"$out") bytes"
  rec "pull_$2_s" "$t"; rec "pull_$2_requests" "$(field requests <<<"$out")"
}
pull_tek "$ng/lib/v1" f1_nginx
pull_tek s3://library/p f2_s3s
pull_tek "$ng/lib/p" f2_nginx
s=$(now)
curl -sf -o "$odir/v1.img.zst" "$ng/v1.img.zst"
sync -f "$odir/v1.img.zst"
t=$(since "$s")
echo "  curl v1.img.zst from nginx: $t s"
rec curl_s "$t"
rm -f "$odir/v1.img.zst"
s=$(now)
casync extract --store="$ng/v1.castr" "$ng/v1.caibx" "$odir/v1.img" >/dev/null
sync -f "$odir/v1.img"
t=$(since "$s")
cmp "$work/v1.img" "$odir/v1.img" || { echo "casync extracted other bytes" >&2; exit 1; }
echo "  casync extract from nginx: $t s"
rec casync_s "$t"
rm -f "$odir/v1.img"

echo "== 3. v2 with v1 cached, from nginx"
for fmt in 2 1; do
  prefix=$([ $fmt = 2 ] && echo p || echo v1)
  fresh
  "$tek" --state "$state" "${bkeys[@]}" image pull bench@1 --from "$ng/lib/$prefix" --json >/dev/null
  : >"$work/nginx/access.log"
  s=$(now)
  out=$("$tek" --state "$state" "${bkeys[@]}" image pull bench@2 --from "$ng/lib/$prefix" --json)
  t=$(since "$s")
  sent=$(nginx_bytes)
  echo "  format $fmt: $t s, $(nginx_requests) requests, nginx sent $sent bytes for $v2_new new stored bytes"
  rec "v2_f${fmt}_sent" "$sent"
done

echo "== 4. pull-and-write of v1 onto a throttled disk (250 MB/s write, 400 MB/s read)"
truncate -s 4G "$work/out/disk.img"
loop=$(losetup -f --show "$work/out/disk.img")
write_v1() { # LABEL
  local out
  out=$("$shared/throttle.sh" "$loop:250:400" -- "$pull_write" "$state/store" "$bench/trusted-keys" bench@1 "$ng/lib/p" "$loop")
  echo "  $1: $out"
  rec "write_$1_s" "$(field seconds <<<"$out")"
}
fresh
write_v1 empty_cache
write_v1 full_cache
cmp -n "$(stat -c %s "$work/v1.img")" "$work/v1.img" "$loop" || { echo "the disk does not hold v1" >&2; exit 1; }
losetup -d "$loop"
loop=''
rm -f "$work/out/disk.img"
rm -rf "$work/fresh"/[0-9]*

echo "== 5. v1 from an empty cache over a ${LINK:=1gbit} link (netns, tbf on its loopback)"
ns=tek-bench-$$
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" tc qdisc add dev lo root tbf rate "$LINK" burst 1mb latency 50ms
sed -e "s|nginx.pid|nginx-link.pid|" -e "s|access.log tek|access-link.log tek|" "$work/nginx/nginx.conf" >"$work/nginx/link.conf"
ip netns exec "$ns" /usr/sbin/nginx -c "$work/nginx/link.conf" -e "$work/nginx/error.log" &
for _ in $(seq 100); do ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/127.0.0.1/$ngport" 2>/dev/null && break; sleep 0.1; done
s=$(now)
ip netns exec "$ns" curl -sf -o "$odir/v1.img.zst" "$ng/v1.img.zst"
sync -f "$odir/v1.img.zst"
t=$(since "$s")
echo "  curl v1.img.zst over $LINK: $t s"
rec link_curl_s "$t"
rm -f "$odir/v1.img.zst"
fresh
s=$(now)
out=$(ip netns exec "$ns" "$tek" --state "$state" "${bkeys[@]}" image pull bench@1 --from "$ng/lib/p" --json)
t=$(since "$s")
echo "  tek pull (format 2, nginx) over $LINK: $t s, $(field requests <<<"$out") requests"
rec link_tek_s "$t"
ip netns pids "$ns" | xargs -r kill
ip netns del "$ns"
ns=''

echo "== summary (ratios)"
python3 - "$results" "$v1_stored" "$v2_new" "$(stat -c %s "$www/v1.img.zst")" "$(du -sb "$www/v1.castr" | cut -f1)" <<'EOF'
import sys
r = {k: float(v) for k, v in (l.split() for l in open(sys.argv[1]))}
v1, v2new, zst, ca = map(float, sys.argv[2:6])
mbs = lambda b, s: b / s / 1e6
curl = mbs(zst, r["curl_s"])
for src in ("f2_nginx", "f2_s3s", "f1_nginx"):
    t = mbs(v1, r[f"pull_{src}_s"])
    print(f"tek pull v1 ({src}): {r[f'pull_{src}_s']:.1f} s, {r[f'pull_{src}_requests']:.0f} requests, "
          f"{t:.0f} MB/s stored = {t / curl:.2f}x curl ({r['curl_s']:.1f} s, {curl:.0f} MB/s; goal >= 0.8x), "
          f"{r['casync_s'] / r[f'pull_{src}_s']:.1f}x casync's speed ({r['casync_s']:.1f} s, {mbs(ca, r['casync_s']):.0f} MB/s stored)")
for fmt in (2, 1):
    print(f"v2 after v1, format {fmt}: {r[f'v2_f{fmt}_sent'] / v2new:.3f}x its new stored bytes (goal <= 1.1x)")
    for v in (1, 2):
        print(f"push v{v}, format {fmt}: {r[f'push{fmt}_v{v}_s']:.1f} s, {r[f'push{fmt}_v{v}_requests']:.0f} requests")
print(f"pull-and-write from an empty cache: {r['write_empty_cache_s']:.1f} s = "
      f"{r['write_empty_cache_s'] / r['write_full_cache_s']:.2f}x writing from the full cache "
      f"({r['write_full_cache_s']:.1f} s; goal <= 1.1x)")
lt, lc = mbs(v1, r["link_tek_s"]), mbs(zst, r["link_curl_s"])
print(f"over the link: tek pull {r['link_tek_s']:.1f} s, {lt:.0f} MB/s stored = {lt / lc:.2f}x curl "
      f"({r['link_curl_s']:.1f} s, {lc:.0f} MB/s; goal >= 0.8x)")
EOF
