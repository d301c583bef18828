#!/usr/bin/env bash
# detect.sh: disk detection latency of the hotplug watcher (agent/src/hotplug.rs).
#
#   bench/detect.sh [N] [SIZE_MIB]      (root; defaults: 8 loop devices of 64 MiB, sparse)
#
# Attaches N loop devices one after another and reports, per device and as min/median/max:
#   - losetup -> Present: from starting losetup until the watcher emits Present for that device
#     (the kernel's `change` uevent, then the sysfs read);
#   - losetup run time: how long losetup itself took (Present usually arrives before it exits);
#   - detach -> Gone: from starting `losetup -d` until the watcher emits Gone.
# Target: under 1 s. The machine is shared, so run it once on a quiet machine for real figures.
# Only events for the devices this run attached are counted (others may attach loops meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-8} size=${2:-64}
[ "$(id -u)" -eq 0 ] || { echo "detect.sh: needs root to attach loop devices" >&2; exit 2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --quiet --release -p agent --example detect_latency
exec "$CARGO_TARGET_DIR/release/examples/detect_latency" "$n" "$size"
