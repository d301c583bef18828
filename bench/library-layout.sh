#!/usr/bin/env bash
# library-layout.sh: the remote layout measurement of issue 14 (one object per chunk vs pack
# files), on the 4 GiB v1 image, over loopback:
#
#   bench/library-layout.sh [WORKDIR]      (default /var/tmp/tek-library-layout; needs ~6 GiB)
#
# 1. tek image push of v1 to s3s-fs (one object per chunk): time, requests.
# 2. tek image pull of v1 from s3s-fs and from nginx serving the bucket directory into an empty
#    store: time, requests (tek's count and nginx's access log).
# 3. The same stored bytes as pack files (the chunk objects concatenated in image order into
#    64 MiB packs, what a pack layout would upload): PUT to s3s-fs with curl --aws-sigv4, GET
#    from nginx with curl, 4 in parallel; time, requests. This is the transfer a pack layout
#    would make; the chunk checks and store writes tek does on top are the same in both.
# Needs: a built tek (target/debug or target/release), s3s-fs, nginx, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/var/tmp/tek-library-layout}
tek=$(ls -t target/release/tek target/debug/tek 2>/dev/null | head -1 || true)
s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
mkdir -p "$work"
img=$work/v1.img
[ -f "$img" ] || ../shared/bench/make-image.sh --variant v1 "$img" >/dev/null 2>&1 ||
  /work/shared/bench/make-image.sh --variant v1 "$img" >/dev/null

maint=$work/maint bench=$work/bench
rm -rf "$bench" "$work/s3" "$work/nginx"
mkdir -p "$work/s3/library" "$work/nginx"
if [ ! -f "$maint/store/images/v1/1.json" ]; then
  rm -rf "$maint"
  "$tek" --state "$maint" image keygen maint --dir "$maint/keys" >/dev/null
  mkdir -p "$maint/trusted-keys"
  cp "$maint/keys/maint.pub" "$maint/trusted-keys/"
  "$tek" --state "$maint" image import v1@1 "$img" --no-audit --sign-key "$maint/keys/maint.key" >/dev/null
fi
mkdir -p "$bench/trusted-keys"
cp "$maint/keys/maint.pub" "$bench/trusted-keys/"

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
events { worker_connections 512; }
http {
  log_format tek '\$status \$request_uri';
  access_log $work/nginx/access.log tek;
  server { listen 127.0.0.1:$ngport; root $work/s3/library; }
}
EOF
/usr/sbin/nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
ngpid=$!
trap 'kill $s3pid $ngpid 2>/dev/null || true' EXIT
sleep 1

export AWS_ENDPOINT_URL=http://127.0.0.1:$s3port AWS_ACCESS_KEY_ID=bench-ak AWS_SECRET_ACCESS_KEY=bench-sk
t() { local s; s=$(date +%s.%N); "$@"; awk -v s="$s" -v e="$(date +%s.%N)" 'BEGIN { printf "  %.1f s\n", e - s }' >&2; }

# tek's --json report, in one line: chunks moved, bytes moved, requests.
summary() {
  python3 -c 'import json, sys
r = json.load(sys.stdin)
print("  %d chunks, %d bytes, %d requests" % (r[sys.argv[1]], r[sys.argv[2]], r["requests"]))' "$@"
}

echo "== chunk objects: push to s3s-fs"
t "$tek" --state "$maint" image push v1@1 --to s3://library/v --json | summary uploaded uploaded_bytes
echo "== chunk objects: pull from s3s-fs"
t "$tek" --state "$bench" --trusted-keys "$bench/trusted-keys" image pull v1@1 --from s3://library/v --json | summary fetched fetched_bytes
rm -rf "$bench/store"
: >"$work/nginx/access.log"
echo "== chunk objects: pull from nginx"
t "$tek" --state "$bench" --trusted-keys "$bench/trusted-keys" image pull v1@1 --from "http://127.0.0.1:$ngport/v" --json | summary fetched fetched_bytes
echo "  nginx logged $(wc -l <"$work/nginx/access.log") requests"

echo "== pack files (64 MiB, image order): build"
packs=$work/s3/library/p
rm -rf "$packs"; mkdir -p "$packs"
python3 - "$maint/store" "$packs" <<'EOF'
import json, os, sys
store, out = sys.argv[1], sys.argv[2]
m = json.load(open(f"{store}/images/v1/1.json"))
seen, packs, size, f = set(), 0, 0, None
for e in m["extents"]:
    if e["kind"] != "chunk" or e["id"] in seen:
        continue
    seen.add(e["id"])
    data = open(f"{store}/chunks/{e['id'][:2]}/{e['id']}.zst", "rb").read()
    if f is None or size + len(data) > 64 << 20:
        if f:
            f.close()
        f, size, packs = open(f"{out}/{packs:04d}.pack", "wb"), 0, packs + 1
    f.write(data)
    size += len(data)
f.close()
EOF
npacks=$(ls "$packs" | wc -l)
echo "  $npacks packs, $(du -sb "$packs" | cut -f1) bytes"
mkdir -p "$work/packs-up"; mv "$packs"/* "$work/packs-up/"
echo "== pack files: PUT to s3s-fs (curl --aws-sigv4, 4 in parallel)"
t bash -c "ls '$work/packs-up' | xargs -P4 -I{} curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user bench-ak:bench-sk -T '$work/packs-up/{}' http://127.0.0.1:$s3port/library/p/{}"
echo "  $npacks requests"
: >"$work/nginx/access.log"
echo "== pack files: GET from nginx (curl, 4 in parallel)"
t bash -c "ls '$work/packs-up' | xargs -P4 -I{} curl -sf -o /dev/null http://127.0.0.1:$ngport/p/{}"
echo "  nginx logged $(wc -l <"$work/nginx/access.log") requests"
rm -rf "$work/packs-up"
