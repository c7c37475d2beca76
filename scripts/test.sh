#!/usr/bin/env bash
# The test suite, with its own set-up: what README.md calls the test command and what CI runs.
#   - Mesa's software Vulkan driver (lavapipe), so that the WGPU tests run without a GPU
#     (installed with apt-get when missing and this user may; otherwise those tests are skipped
#     with EMULSION_SKIP_WGPU=1 and a note, or the script fails if EMULSION_CI is set, as
#     in CI, where the tests also fail instead of skipping when a prerequisite is missing);
#   - the Inception weights of the FID tests (scripts/fetch_inception.sh: one 81 MB download);
#   - `--features autotune`, so that the kernel-cache test covers CubeCL's autotune results.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p emulsion-schedule).
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
        echo "note: could not install mesa-vulkan-drivers (no apt-get, or not root): the WGPU tests are skipped" >&2
        export EMULSION_SKIP_WGPU=1
    fi
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# Reuse an earlier build on this machine when there is one; a fresh machine builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/emulsion/target}"

if ! scripts/fetch_inception.sh; then
    [ -z "${EMULSION_CI:-}" ] || exit 1
    echo "note: the Inception weights could not be fetched: the FID tests are skipped (each says so)" >&2
fi

cargo test --release --workspace --features autotune "$@"
