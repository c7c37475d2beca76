#!/usr/bin/env bash
# The test suite, with its own set-up: what README.md calls the test command and what CI runs.
#   - Mesa's software Vulkan driver (lavapipe), so that the WGPU tests run without a GPU
#     (installed with apt-get when missing and this user may; otherwise those tests are skipped
#     with EMULSION_SKIP_WGPU=1 and a note, or the script fails if EMULSION_REQUIRE_WGPU is set, as
#     in CI);
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
    elif [ -n "${EMULSION_REQUIRE_WGPU:-}" ]; then
        echo "error: mesa-vulkan-drivers could not be installed and EMULSION_REQUIRE_WGPU is set" >&2
        exit 1
    else
        echo "note: could not install mesa-vulkan-drivers (no apt-get, or not root): the WGPU tests are skipped" >&2
        export EMULSION_SKIP_WGPU=1
    fi
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# Reuse an earlier build on this machine when there is one; a fresh machine builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/emulsion/target}"

scripts/fetch_inception.sh

cargo test --release --workspace --features autotune "$@"
