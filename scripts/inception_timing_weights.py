#!/usr/bin/env python3
"""Timing-only Inception weights, for `emulsion bench fid` where the real file cannot travel.

    inception_timing_weights.py layout REAL.safetensors LAYOUT.json   # names, shapes, metadata
    inception_timing_weights.py make LAYOUT.json OUT.safetensors       # random values, same layout

The made file has the real network's every layer, shape, stride and padding, so the network runs
exactly the same kernels; its values are random (batch-norm variances 1), so its features mean
nothing: use it for speed, never for an FID. Needs numpy for `make`.
"""
import json
import struct
import sys


def layout(real, out):
    with open(real, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    tensors = {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items() if k != "__metadata__"}
    with open(out, "w") as f:
        json.dump({"metadata": header.get("__metadata__", {}), "tensors": tensors}, f)
    print(f"{out}: {len(tensors)} tensors")


def make(layout_file, out):
    with open(layout_file) as f:
        spec = json.load(f)
    import numpy as np

    rng = np.random.default_rng(0)
    header, blobs, offset = {"__metadata__": spec["metadata"]}, [], 0
    for name in sorted(spec["tensors"]):
        shape = spec["tensors"][name]["shape"]
        count = int(np.prod(shape))
        if name.endswith(".var"):
            values = np.ones(count, "<f4")
        elif name.endswith(".weight"):
            values = (rng.standard_normal(count) * (2.0 * shape[0] / count) ** 0.5).astype("<f4")
        else:
            values = np.zeros(count, "<f4")
        blob = values.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    print(f"{out}: {len(blobs)} tensors, {offset} bytes of random values (timing only)")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("layout", "make"):
        sys.exit(__doc__)
    (layout if sys.argv[1] == "layout" else make)(sys.argv[2], sys.argv[3])
