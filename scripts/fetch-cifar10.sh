#!/usr/bin/env bash
# Downloads the binary version of CIFAR-10, checks it, and extracts it where
# configs/cifar.toml looks for it (datasets/cifar-10-batches-bin).
#
#   scripts/fetch-cifar10.sh [DEST_DIR]    (default: datasets)
set -euo pipefail
dest="${1:-$(dirname "$0")/../datasets}"
url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# MD5 published on https://www.cs.toronto.edu/~kriz/cifar.html
md5="c32a1d4ab5d03f1284b67883e8d87530"
archive="$dest/cifar-10-binary.tar.gz"

mkdir -p "$dest"
if [ ! -f "$archive" ]; then
    echo "downloading $url"
    curl -fL --retry 3 -o "$archive.part" "$url"
    mv "$archive.part" "$archive"
fi
echo "$md5  $archive" | md5sum -c -
tar xzf "$archive" -C "$dest"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
    size=$(stat -c %s "$dest/cifar-10-batches-bin/$f.bin")
    [ "$size" -eq 30730000 ] || { echo "$f.bin has $size bytes, expected 30730000" >&2; exit 1; }
done
echo "CIFAR-10 is in $dest/cifar-10-batches-bin"
