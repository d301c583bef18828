#!/bin/bash
# Benchmark of the bench agent (run as root, once, on a quiet machine):
#   1. detection latency: `losetup` of a disk in a virtual bay -> the job journals `claimed`
#   2. agent RSS idle, and peak RSS with 4 jobs running at once
#   3. throughput: one bay alone vs 4 bays at once (bytes written per second, all targets),
#      unthrottled (CPU-bound: decoding on the loop devices' page cache), then
#   4. the same, disk-bound: the agent runs under ../shared/bench/throttle.sh with every
#      loop device limited to THROTTLE (default 250:400 MB/s write:read, an SSD in a dock).
#      throttle.sh needs the devices to exist before the agent starts, so the loop devices are
#      attached first to spare files OUTSIDE the bays' glob (ignored by the agent); a "plug" is
#      renaming the backing file into the bay directory and asking the kernel for a `change`
#      uevent (the loop's backing_file in sysfs follows the rename).
# The agent runs with the default share_write_window_ms (2 s): the 4 bays share one decode, and
# every single-bay time includes the 2 s window.
# Targets: latency < 1 s, RSS < 50 MiB idle and < 200 MiB busy.
#
# usage: bench/agent.sh [IMAGE] [WORKDIR]
#   IMAGE    raw image to import and write (default ../bench-cache/dense.img, 1 GiB)
#   WORKDIR  scratch directory (default: a new mktemp -d; removed at the end)
#   TEK      tek binary (default: target/release/tek, built if missing)
#   THROTTLE WRITE:READ MB/s per loop device for the disk-bound regime (default 250:400;
#            THROTTLE=none skips that regime)
#
# Only loop devices this script attached are detached (their paths are recorded), and the
# virtual bays match only files under WORKDIR, so other loop devices on the machine are left
# alone.
set -euo pipefail

IMAGE=${1:-${BENCH_CACHE:-$HERE/../bench-cache}/dense.img}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TEK=${TEK:-$HERE/target/release/tek}
if [ ! -x "$TEK" ]; then
    (cd "$HERE" && cargo build --release -p agent)
fi
[ "$(id -u)" = 0 ] || { echo "needs root (loop devices)"; exit 1; }
[ -f "$IMAGE" ] || { echo "no image $IMAGE (see $HERE/../shared/bench/make-image.sh)"; exit 1; }

OWN_WORK=0
if [ -n "${2:-}" ]; then WORK=$2; mkdir -p "$WORK"; else WORK=$(mktemp -d /tmp/tek-bench-agent.XXXXXX); OWN_WORK=1; fi
STATE=$WORK/state
SOCK=$WORK/agent.sock
LOOPS=()
AGENT_PID=
THROTTLE=${THROTTLE:-250:400}
THROTTLE_SH=${THROTTLE_SH:-$HERE/../shared/bench/throttle.sh}
WRAP_PID=
cleanup() {
    [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
    # the throttle wrapper exits (and removes its cgroup) once the agent is gone
    [ -n "$WRAP_PID" ] && wait "$WRAP_PID" 2>/dev/null || true
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    if [ "$OWN_WORK" = 1 ]; then rm -rf "$WORK"; fi
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

# 4. disk-bound regime
D1_S=-; D1_MBS=-; D4_S=-; D4_MBS=-
if [ "$THROTTLE" != none ]; then
    kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=
    for l in "${LOOPS[@]}"; do losetup -d "$l"; done
    LOOPS=()
    rm -f "$WORK"/bays/*.img
    mkdir -p "$WORK/spare"
    SPARE=()  # spare index -> loop device (5: one for the single bay, 4 for the four)
    for i in 1 2 3 4 5; do
        truncate -s "$DISK" "$WORK/spare/s$i.img"
        attach "$WORK/spare/s$i.img"; SPARE+=("${LOOPS[-1]}")
    done
    LIMITS=(); for l in "${SPARE[@]}"; do LIMITS+=("$l:$THROTTLE"); done
    TEK_LOG=info "$THROTTLE_SH" "${LIMITS[@]}" -- \
        "$TEK" --state "$STATE" agent --config "$WORK/agent.toml" 2>>"$WORK/agent.log" &
    WRAP_PID=$!
    for _ in $(seq 200); do
        AGENT_PID=$(pgrep -P "$WRAP_PID" || true)
        [ -n "$AGENT_PID" ] && [ -S "$SOCK" ] && "$TEK" --state "$STATE" status >/dev/null 2>&1 && break
        sleep 0.05
    done
    sleep 1
    plug() { # spare-index bay-file: move the spare's backing file into a bay, announce it
        local l=${SPARE[$(( $1 - 1 ))]}
        mv "$WORK/spare/s$1.img" "$WORK/bays/$2.img"
        echo change > "/sys/block/$(basename "$l")/uevent"
    }
    J=$("$TEK" --state "$STATE" job add --ticket BENCH-T1 --image bench@1 --bay b1)
    T0=$(date +%s.%N)
    plug 1 b1-3
    wait_state "$J" done 900
    T1=$(date +%s.%N)
    D1_S=$(python3 -c "print(f'{$T1-$T0:.2f}')")
    D1_MBS=$(python3 -c "print(f'{$SIZE/1048576/($T1-$T0):.0f}')")
    IDS=()
    for b in b1 b2 b3 b4; do
        IDS+=("$("$TEK" --state "$STATE" job add --ticket "BENCH-T$b" --image bench@1 --bay "$b")")
    done
    T0=$(date +%s.%N)
    i=2; for b in b1 b2 b3 b4; do plug $i "$b-4"; i=$((i + 1)); done
    for j in "${IDS[@]}"; do wait_state "$j" done 900; done
    T1=$(date +%s.%N)
    D4_S=$(python3 -c "print(f'{$T1-$T0:.2f}')")
    D4_MBS=$(python3 -c "print(f'{4*$SIZE/1048576/($T1-$T0):.0f}')")
fi

cat <<EOF
image                         $IMAGE ($((SIZE / 1048576)) MiB)
detection latency             ${LAT} s  (losetup -> job claimed; target < 1 s)
agent RSS idle                $((IDLE_KB / 1024)) MiB  (target < 50 MiB)
agent RSS peak, 4 jobs        $((PEAK_KB / 1024)) MiB  (VmHWM $(( $(hwm) / 1024 )) MiB; target < 200 MiB)
1 bay                         ${ONE_S} s, ${ONE_MBS} MiB/s (write + read-back verify)
4 bays at once                ${FOUR_S} s, ${FOUR_MBS} MiB/s aggregate
disk-bound ($THROTTLE MB/s w:r per disk, throttle.sh)
  1 bay                       ${D1_S} s, ${D1_MBS} MiB/s
  4 bays at once              ${D4_S} s, ${D4_MBS} MiB/s aggregate
EOF
