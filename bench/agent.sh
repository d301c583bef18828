#!/bin/bash
# Benchmark of the bench agent (run as root, once, on a quiet machine):
#   1. detection latency: `losetup` of a disk in a virtual bay -> the job journals `claimed`
#   2. agent RSS idle, and peak RSS with 4 jobs running at once
#   3. throughput: one bay alone vs 4 bays at once (bytes written per second, all targets)
# Targets: latency < 1 s, RSS < 50 MiB idle and < 200 MiB busy.
#
# usage: bench/agent.sh [IMAGE] [WORKDIR]
#   IMAGE    raw image to import and write (default /work/bench-cache/dense.img, 1 GiB)
#   WORKDIR  scratch directory (default: a new mktemp -d; removed at the end)
#   TEK      tek binary (default: target/release/tek, built if missing)
#
# Only loop devices this script attached are detached (their paths are recorded), and the
# virtual bays match only files under WORKDIR, so other loop devices on the machine are left
# alone.
set -euo pipefail

IMAGE=${1:-/work/bench-cache/dense.img}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TEK=${TEK:-$HERE/target/release/tek}
if [ ! -x "$TEK" ]; then
    (cd "$HERE" && cargo build --release -p agent)
fi
[ "$(id -u)" = 0 ] || { echo "needs root (loop devices)"; exit 1; }
[ -f "$IMAGE" ] || { echo "no image $IMAGE (see /work/shared/bench/make-image.sh)"; exit 1; }

OWN_WORK=0
if [ -n "${2:-}" ]; then WORK=$2; mkdir -p "$WORK"; else WORK=$(mktemp -d /tmp/tek-bench-agent.XXXXXX); OWN_WORK=1; fi
STATE=$WORK/state
SOCK=$WORK/agent.sock
LOOPS=()
AGENT_PID=
cleanup() {
    [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    [ "$OWN_WORK" = 1 ] && rm -rf "$WORK"
}
trap cleanup EXIT

SIZE=$(stat -c %s "$IMAGE")
DISK=$(( (SIZE / 1048576 + 64) * 1048576 ))
mkdir -p "$WORK/bays"
cat > "$WORK/agent.toml" <<EOF
socket = "$SOCK"
state = "$STATE"
[policy]
allow_unsigned = true
beyond_image = "skip"
[[bay]]
name = "b1"
loop_backing = "$WORK/bays/b1-*.img"
[[bay]]
name = "b2"
loop_backing = "$WORK/bays/b2-*.img"
[[bay]]
name = "b3"
loop_backing = "$WORK/bays/b3-*.img"
[[bay]]
name = "b4"
loop_backing = "$WORK/bays/b4-*.img"
EOF
export TEK_CONFIG=$WORK/agent.toml

echo "importing $IMAGE ($((SIZE / 1048576)) MiB)"
"$TEK" --state "$STATE" image import bench@1 "$IMAGE" >/dev/null

TEK_LOG=info "$TEK" --state "$STATE" agent --config "$WORK/agent.toml" 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
sleep 2
rss() { awk '/^VmRSS/ {print $2}' /proc/"$AGENT_PID"/status; }
hwm() { awk '/^VmHWM/ {print $2}' /proc/"$AGENT_PID"/status; }
IDLE_KB=$(rss)

# time from losetup to the job's `claimed` entry in the journal
claimed_at() { jq -r '.history[] | select(.state=="claimed") | .at' "$STATE/jobs/$1.json" | head -1; }
wait_state() { # job state timeout_s
    for _ in $(seq $(( $3 * 20 ))); do
        s=$(jq -r .state "$STATE/jobs/$1.json" 2>/dev/null || true)
        [ "$s" = "$2" ] && return 0
        case "$s" in failed|cancelled) echo "job $1 $s"; jq . "$STATE/jobs/$1.json"; exit 1;; esac
        sleep 0.05
    done
    echo "job $1 did not reach $2"; exit 1
}
attach() { # file -> records the loop device
    local l; l=$(losetup --find --show "$1"); LOOPS+=("$l")
}
new_disk() { truncate -s "$DISK" "$WORK/bays/$1.img"; }

# 1 + single-bay throughput
J=$("$TEK" --state "$STATE" job add --ticket BENCH-1 --image bench@1 --bay b1)
new_disk b1-1
T0=$(date +%s.%N)
attach "$WORK/bays/b1-1.img"
wait_state "$J" done 600
T1=$(date +%s.%N)
C=$(claimed_at "$J")
LAT=$(python3 -c "import sys,datetime as d; t=d.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00')[:26]+'+00:00').timestamp(); print(f'{t-float(sys.argv[2]):.3f}')" "$C" "$T0")
ONE_S=$(python3 -c "print(f'{$T1-$T0:.2f}')")
ONE_MBS=$(python3 -c "print(f'{$SIZE/1048576/($T1-$T0):.0f}')")

# 4 bays at once (fresh disks)
IDS=()
for b in b1 b2 b3 b4; do
    IDS+=("$("$TEK" --state "$STATE" job add --ticket "BENCH-$b" --image bench@1 --bay "$b")")
done
for l in "${LOOPS[@]}"; do losetup -d "$l"; done
LOOPS=()
sleep 1
for b in b1 b2 b3 b4; do new_disk "$b-2"; done
T0=$(date +%s.%N)
for b in b1 b2 b3 b4; do attach "$WORK/bays/$b-2.img"; done
PEAK_KB=0
for _ in $(seq 12000); do
    r=$(rss); [ "$r" -gt "$PEAK_KB" ] && PEAK_KB=$r
    all=1
    for j in "${IDS[@]}"; do [ "$(jq -r .state "$STATE/jobs/$j.json")" = done ] || all=0; done
    [ $all = 1 ] && break
    sleep 0.05
done
T1=$(date +%s.%N)
for j in "${IDS[@]}"; do wait_state "$j" done 5; done
FOUR_S=$(python3 -c "print(f'{$T1-$T0:.2f}')")
FOUR_MBS=$(python3 -c "print(f'{4*$SIZE/1048576/($T1-$T0):.0f}')")

cat <<EOF
image                         $IMAGE ($((SIZE / 1048576)) MiB)
detection latency             ${LAT} s  (losetup -> job claimed; target < 1 s)
agent RSS idle                $((IDLE_KB / 1024)) MiB  (target < 50 MiB)
agent RSS peak, 4 jobs        $((PEAK_KB / 1024)) MiB  (VmHWM $(( $(hwm) / 1024 )) MiB; target < 200 MiB)
1 bay                         ${ONE_S} s, ${ONE_MBS} MiB/s (write + read-back verify)
4 bays at once                ${FOUR_S} s, ${FOUR_MBS} MiB/s aggregate
EOF
