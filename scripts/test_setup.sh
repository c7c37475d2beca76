#!/usr/bin/env bash
# What the tests need, installed where it can be: the first half of README.md's test command
#   scripts/test_setup.sh && cargo test --release --workspace --features autotune
# (which .ci/run runs as it is written there).
#   - Mesa's software Vulkan driver (lavapipe), so that the WGPU tests run without a GPU
#     (installed with apt-get when missing and this user may; otherwise those tests skip with a
#     note, or this script fails if EMULSION_CI is set, as in CI, where the tests also fail
#     instead of skipping when a prerequisite is missing);
#   - the Inception weights of the FID tests (scripts/fetch_inception.sh: one 81 MB download).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    if command -v apt-get >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1; then
        :
    elif [ -n "${EMULSION_CI:-}" ]; then
        echo "error: mesa-vulkan-drivers could not be installed and EMULSION_CI is set" >&2
        exit 1
    else
        echo "note: could not install mesa-vulkan-drivers (no apt-get, or not root): the WGPU tests will skip" >&2
    fi
fi
if ! scripts/fetch_inception.sh; then
    [ -z "${EMULSION_CI:-}" ] || exit 1
    echo "note: the Inception weights could not be fetched: the FID tests are skipped (each says so)" >&2
fi
