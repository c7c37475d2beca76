#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh carries to a GPU machine (which has no Rust), into .gpu/:
#   emulsion-cuda.xz            CUDA only, no autotune: one kernel per operation, fast first step
#   emulsion-cuda-autotune.xz   CUDA only, with CubeCL autotuning: every candidate kernel timed once
#   inception-layout.json       the Inception weights' layer names, shapes and strides (no values),
#                               from which gpu_check.sh makes timing-only random weights: the real
#                               87 MB file does not fit the 64 MiB a device call can carry
# Both binaries are stripped release builds (8.4 and 9.2 MB after xz). On two cores the two builds
# took 12 minutes from a warm target folder (burn-cubecl is compiled once per feature set).
#
#   scripts/gpu_build.sh            then carry .gpu (it is git-ignored) and run scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/emulsion/target}"
mkdir -p .gpu

build() { # NAME FEATURES
    cargo build --release --no-default-features --features "$2"
    xz -T2 -6 -c "$CARGO_TARGET_DIR/release/emulsion" >".gpu/$1.xz"
    echo "$1: $(du -h ".gpu/$1.xz" | cut -f1) (xz), features $2"
}
build emulsion-cuda cuda
build emulsion-cuda-autotune cuda,autotune

weights=datasets/inception/inception-2015-12-05.safetensors
if [ -f "$weights" ]; then
    python3 scripts/inception_timing_weights.py layout "$weights" .gpu/inception-layout.json
else
    echo "no $weights (scripts/fetch_inception.sh makes it): gpu_check.sh will skip bench fid"
fi
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD || echo " with uncommitted changes")" >.gpu/commit
du -ch .gpu/* | tail -1
