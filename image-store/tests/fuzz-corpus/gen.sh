#!/bin/sh
# Regenerates the generated seeds (gen-*) of image-store's fuzz harnesses (tests/fuzz.rs). Seeds found
# by fuzzing (crash-*, kept as regression seeds) and hand-written ones are left alone.
set -eu
cd "$(dirname "$0")/../../.."
TEK_FUZZ_GEN=1 cargo test -p image-store --test fuzz
