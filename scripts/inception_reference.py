#!/usr/bin/env python3
"""Independent NumPy (float64) reference of the FID Inception-v3 feature extractor.

    scripts/inception_reference.py WEIGHTS.safetensors OUT_DIR
        writes the test fixtures of crates/emulsion-fid (inputs and features)
    scripts/inception_reference.py --self-test [WEIGHTS.safetensors]
        checks the building blocks against hand-computed values and naive
        loops, and (given weights) the network's shapes and invariances

WEIGHTS is the file written by scripts/inception_to_safetensors.py.  The
pipeline is that of the TF inception-2015-12-05 FID graph: uint8 pixels,
TF1 bilinear resize to 299x299 (align_corners=False, half_pixel_centers=False),
(pixel - 128) / 128, then the network, giving 2048 features per image.
Internally activations are NHWC float64; weights are OIHW as stored.
"""

import hashlib
import json
import os
import struct
import sys
import time

# One BLAS thread unless told otherwise: the machine is shared with builds.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings)
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

SIZE = 299
BN_EPS = 1e-3
FEATURES = 2048
SEED = 20261126

# (block, output H, W, C) of the TF graph for a 299x299 input.
EXPECTED_SHAPES = [
    ("conv", 149, 149, 32), ("conv_1", 147, 147, 32), ("conv_2", 147, 147, 64),
    ("pool0", 73, 73, 64), ("conv_3", 73, 73, 80), ("conv_4", 71, 71, 192),
    ("pool1", 35, 35, 192), ("mixed", 35, 35, 256), ("mixed_1", 35, 35, 288),
    ("mixed_2", 35, 35, 288), ("mixed_3", 17, 17, 768), ("mixed_4", 17, 17, 768),
    ("mixed_5", 17, 17, 768), ("mixed_6", 17, 17, 768), ("mixed_7", 17, 17, 768),
    ("mixed_8", 8, 8, 1280), ("mixed_9", 8, 8, 2048), ("mixed_10", 8, 8, 2048),
    ("pool2", 1, 1, 2048),
]


# ----------------------------------------------------------------- weights

def read_safetensors(path):
    """Parse a safetensors file by hand: (name -> float64 array, metadata)."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    metadata = header.pop("__metadata__", {})
    data = blob[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = arr.astype(np.float64)
    return tensors, metadata


class Weights:
    """Conv layers looked up by path; records which tensors were used."""

    def __init__(self, path):
        """Load the safetensors file at `path`."""
        self.tensors, self.metadata = read_safetensors(path)
        self.used = set()

    def conv(self, x, path):
        """Apply the conv + batch norm + relu layer stored under `path`."""
        names = [f"layers.{path}.{p}" for p in ("weight", "mean", "var", "beta")]
        self.used.update(names)
        w, mean, var, beta = (self.tensors[n] for n in names)
        stride = int(self.metadata[f"layers.{path}.stride"])
        pad = tuple(int(v) for v in self.metadata[f"layers.{path}.padding"].split(","))
        return bn_relu(conv2d(x, w, stride, pad), mean, var, beta)

    def chain(self, x, prefix, count):
        """Apply the convs prefix.conv, prefix.conv_1, ... in sequence."""
        for i in range(count):
            x = self.conv(x, f"{prefix}.conv" + (f"_{i}" if i else ""))
        return x

    def unused(self):
        """Names of tensors that no layer has read."""
        return sorted(set(self.tensors) - self.used)


# -------------------------------------------------------------- primitives

def conv2d(x, w, stride, pad):
    """Convolution without bias: x NHWC, w OIHW, pad (ph, pw); im2col + matmul."""
    o, c, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    win = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    n, ho, wo = win.shape[:3]
    cols = win.reshape(n * ho * wo, c * kh * kw)
    return (cols @ w.reshape(o, c * kh * kw).T).reshape(n, ho, wo, o)


def bn_relu(x, mean, var, beta):
    """Inference batch norm without scale (eps 1e-3), then ReLU."""
    return np.maximum((x - mean) / np.sqrt(var + BN_EPS) + beta, 0.0)


def max_pool(x, k, stride, pad):
    """Max pool over NHWC; padding never wins (it is -inf)."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    win = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return win.max(axis=(-2, -1))


def avg_pool(x, k, stride, pad):
    """Average pool over NHWC, counting only real (unpadded) positions."""
    spec = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    sums = sliding_window_view(np.pad(x, spec), (k, k), axis=(1, 2))
    ones = np.pad(np.ones((1,) + x.shape[1:3] + (1,)), spec)
    counts = sliding_window_view(ones, (k, k), axis=(1, 2))
    s = sums[:, ::stride, ::stride].sum(axis=(-2, -1))
    return s / counts[:, ::stride, ::stride].sum(axis=(-2, -1))


# ------------------------------------------------------------ preprocessing

def tf1_axis(in_size, out_size):
    """Source indices (lo, hi) and weights of TF1 legacy bilinear along one axis."""
    src = np.arange(out_size) * (in_size / out_size)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo


def tf1_resize(x, out_h, out_w):
    """TF1 ResizeBilinear (align_corners=False, no half-pixel centers) of NHWC floats."""
    lo, hi, f = tf1_axis(x.shape[1], out_h)
    x = x[:, lo] + (x[:, hi] - x[:, lo]) * f[None, :, None, None]
    lo, hi, f = tf1_axis(x.shape[2], out_w)
    return x[:, :, lo] + (x[:, :, hi] - x[:, :, lo]) * f[None, None, :, None]


def network_input(images):
    """uint8 NHW or NHWC images -> normalised float64 NHWC 299x299x3."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (SIZE, SIZE):
        x = tf1_resize(x, SIZE, SIZE)
    return (x - 128.0) / 128.0


# ------------------------------------------------------------------ network

def inception_ac(net, x, p, tower, tower_1):
    """A (35x35: 5x5 tower of 2, double 3x3 tower of 3) and C (17x17: 1x7/7x1 towers of 3 and 5)
    blocks: 1x1, two conv towers, avg-pool tower."""
    return np.concatenate([
        net.conv(x, f"{p}.conv"),
        net.chain(x, f"{p}.tower", tower),
        net.chain(x, f"{p}.tower_1", tower_1),
        net.conv(avg_pool(x, 3, 1, 1), f"{p}.tower_2.conv"),
    ], axis=-1)


def inception_b(net, x, p):
    """35->17 reduction: stride-2 3x3, double 3x3 tower, max pool."""
    return np.concatenate([
        net.conv(x, f"{p}.conv"),
        net.chain(x, f"{p}.tower", 3),
        max_pool(x, 3, 2, 0),
    ], axis=-1)


def inception_d(net, x, p):
    """17->8 reduction: 1x1+3x3/2 tower, 1x7/7x1/3x3/2 tower, max pool."""
    return np.concatenate([
        net.chain(x, f"{p}.tower", 2),
        net.chain(x, f"{p}.tower_1", 4),
        max_pool(x, 3, 2, 0),
    ], axis=-1)


def inception_e(net, x, p, pool):
    """8x8 block with split 1x3/3x1 branches; `pool` is avg_pool or max_pool."""
    a = net.conv(x, f"{p}.tower_conv")
    b = net.conv(net.conv(x, f"{p}.tower_1_conv"), f"{p}.tower_1_conv_1")
    return np.concatenate([
        net.conv(x, f"{p}.conv"),
        net.conv(a, f"{p}.tower_mixed_conv"),
        net.conv(a, f"{p}.tower_mixed_conv_1"),
        net.conv(b, f"{p}.tower_1_mixed_conv"),
        net.conv(b, f"{p}.tower_1_mixed_conv_1"),
        net.conv(pool(x, 3, 1, 1), f"{p}.tower_2_conv"),
    ], axis=-1)


def stages(net):
    """The 19 stages of `layers`, as (name, function of x)."""
    out = [(n, lambda x, n=n: net.conv(x, n)) for n in ("conv", "conv_1", "conv_2")]
    out.append(("pool0", lambda x: max_pool(x, 3, 2, 0)))
    out += [(n, lambda x, n=n: net.conv(x, n)) for n in ("conv_3", "conv_4")]
    out.append(("pool1", lambda x: max_pool(x, 3, 2, 0)))
    out += [(n, lambda x, n=n: inception_ac(net, x, n, 2, 3)) for n in ("mixed", "mixed_1", "mixed_2")]
    out.append(("mixed_3", lambda x: inception_b(net, x, "mixed_3")))
    out += [(f"mixed_{i}", lambda x, i=i: inception_ac(net, x, f"mixed_{i}", 3, 5)) for i in range(4, 8)]
    out.append(("mixed_8", lambda x: inception_d(net, x, "mixed_8")))
    out.append(("mixed_9", lambda x: inception_e(net, x, "mixed_9", avg_pool)))
    out.append(("mixed_10", lambda x: inception_e(net, x, "mixed_10", max_pool)))
    out.append(("pool2", lambda x: avg_pool(x, 8, 8, 0)))
    return out


def forward(net, x, trace=None):
    """Normalised NHWC 299x299x3 input -> [N, 2048] features (float64)."""
    for name, stage in stages(net):
        x = stage(x)
        if trace is not None:
            trace.append((name,) + x.shape[1:])
    return x.reshape(-1, FEATURES)


def features(net, images):
    """uint8 images -> [N, 2048] float64 features."""
    return forward(net, network_input(images))


# ----------------------------------------------------------------- fixtures

def smooth_pattern(h, w, channels):
    """A deterministic smooth uint8 image: gradients, a sinusoid, a bright square."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([max(h - 1, 1), max(w - 1, 1)])[:, None, None]
    planes = [255 * (0.2 + 0.6 * xx), 255 * (0.9 - 0.7 * yy),
              128 + 100 * np.sin(2 * np.pi * (xx + 0.5 * yy))]
    img = np.stack(planes[:channels], axis=-1)
    img[h // 4: h // 2, w // 3: 2 * w // 3] = 245
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def fixture_inputs():
    """The fixture images, drawn from np.random.default_rng(SEED) in this order."""
    rng = np.random.default_rng(SEED)
    gray_noise = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    rgb_noise = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return {
        "gray28": np.stack([gray_noise, smooth_pattern(28, 28, 1)[..., 0]]),
        "rgb32": np.stack([rgb_noise, smooth_pattern(32, 32, 3)]),
        "rgb299": smooth_pattern(SIZE, SIZE, 3)[None],
    }


def file_sha256(path):
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_readme(out_dir, weights_path, metadata, summary):
    """Describe how the fixtures were made."""
    text = f"""# Inception-v3 FID reference fixtures

Made by `scripts/inception_reference.py` (an independent NumPy float64 forward
pass) with

    OMP_NUM_THREADS=1 python3 scripts/inception_reference.py \\
        datasets/inception/inception-2015-12-05.safetensors \\
        crates/emulsion-fid/tests/fixtures

from weights written by `scripts/fetch_inception.sh`
(`scripts/inception_to_safetensors.py`):

- weights file sha256: `{file_sha256(weights_path)}`
- source: {metadata.get('source')} (sha256 `{metadata.get('source_sha256')}`)

Inputs come from `np.random.default_rng({SEED})` and a smooth pattern
(`fixture_inputs()` in the script). Pipeline: uint8 -> (gray repeated to 3
channels) -> TF1 bilinear resize to 299x299 (align_corners=False,
half_pixel_centers=False; skipped at 299x299) -> (p - 128) / 128 -> network.

| file | dtype, shape | content |
|---|---|---|
| gray28.npy | uint8 [2, 28, 28] | noise, smooth pattern |
| rgb32.npy | uint8 [2, 32, 32, 3] | noise, smooth pattern |
| rgb299.npy | uint8 [1, 299, 299, 3] | smooth pattern (no resize) |
| *_features.npy | float32 [N, 2048] | pool_3 features (float64 forward, rounded) |
| resized_rgb32.npy | float32 [2, 3, 299, 299] | normalised network input of rgb32 (NCHW) |

Feature summary:

{summary}
"""
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)


def fmt(values):
    """Format numbers with 6 decimals, as a bracketed list."""
    return "[" + ", ".join(f"{v:.6f}" for v in values) + "]"


def make_fixtures(weights_path, out_dir):
    """Compute and save the fixture inputs, features and resized input."""
    net = Weights(weights_path)
    os.makedirs(out_dir, exist_ok=True)
    lines = []
    for name, images in fixture_inputs().items():
        t0 = time.time()
        feats = features(net, images).astype(np.float32)
        np.save(os.path.join(out_dir, f"{name}.npy"), images)
        np.save(os.path.join(out_dir, f"{name}_features.npy"), feats)
        lines.append(f"- {name}: per-image mean {fmt(feats.mean(axis=1))}, "
                     f"max {fmt(feats.max(axis=1))}, min {feats.min():.6f}")
        print(lines[-1], f"({time.time() - t0:.1f} s)")
    if net.unused():
        raise RuntimeError(f"tensors never used: {net.unused()}")
    resized = network_input(fixture_inputs()["rgb32"]).transpose(0, 3, 1, 2)
    np.save(os.path.join(out_dir, "resized_rgb32.npy"), resized.astype(np.float32))
    write_readme(out_dir, weights_path, net.metadata, "\n".join(lines))


# ---------------------------------------------------------------- self-test

def naive_conv(x, w, stride, pad):
    """Direct-loop convolution used to check conv2d."""
    o, c, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,ochw->no", patch, w)
    return out


def naive_pool(x, k, stride, pad, op):
    """Direct-loop pool (op = max or mean over in-bounds positions)."""
    n, h, w, c = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * stride - pad, j * stride - pad
            patch = x[:, max(r0, 0):r0 + k, max(c0, 0):c0 + k, :]
            out[:, i, j, :] = op(patch, axis=(1, 2))
    return out


def check(cond, what):
    """Fail loudly if a self-test condition does not hold."""
    if not cond:
        raise AssertionError(f"self-test failed: {what}")
    print(f"ok  {what}")


def test_resize():
    """TF1 resize against hand-computed values."""
    img = np.array([[0.0, 100.0], [200.0, 40.0]])[None, :, :, None]
    want = np.array([[0, 50, 100, 100], [100, 85, 70, 70],
                     [200, 120, 40, 40], [200, 120, 40, 40]], dtype=float)
    check(np.array_equal(tf1_resize(img, 4, 4)[0, :, :, 0], want), "resize 2x2 -> 4x4")
    row = np.array([10.0, 20.0, 40.0])[None, None, :, None]
    got = tf1_resize(row, 1, 5)[0, 0, :, 0]
    check(np.allclose(got, [10, 16, 24, 36, 40]), "resize 3 -> 5 (coords 0, .6, 1.2, 1.8, 2.4)")
    x = np.random.default_rng(1).random((1, 7, 5, 2))
    check(np.array_equal(tf1_resize(x, 7, 5), x), "resize to the same size is the identity")
    img = np.zeros((1, SIZE, SIZE), dtype=np.uint8)
    img[0, 0, :3] = [0, 128, 255]
    px = network_input(img)
    check(px.shape == (1, SIZE, SIZE, 3) and px[0, 0, :3, 0].tolist() == [-1.0, 0.0, 0.9921875],
          "299x299 input is not resized; (p - 128) / 128 maps 0, 128, 255 to -1, 0, 0.9921875")
    tiny = network_input(np.array([[[0, 128], [255, 64]]], dtype=np.uint8))
    check(tiny.shape == (1, SIZE, SIZE, 3) and tiny[0, 0, 0, 0] == -1.0
          and tiny[0, -1, -1, 2] == (64 - 128) / 128, "gray 2x2 -> normalised 299x299x3")


def test_primitives():
    """conv2d and pools against direct loops."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 11, 5))
    for shape, stride, pad in [((4, 5, 3, 3), 2, (0, 0)), ((3, 5, 1, 7), 1, (0, 3)),
                               ((3, 5, 7, 1), 1, (3, 0)), ((6, 5, 5, 5), 1, (2, 2)),
                               ((2, 5, 1, 1), 1, (0, 0))]:
        w = rng.standard_normal(shape)
        check(np.allclose(conv2d(x, w, stride, pad), naive_conv(x, w, stride, pad)),
              f"conv2d {shape[2]}x{shape[3]} stride {stride} pad {pad}")
    check(np.allclose(max_pool(x, 3, 2, 0), naive_pool(x, 3, 2, 0, np.max)), "max pool 3x3/2")
    check(np.allclose(max_pool(x, 3, 1, 1), naive_pool(x, 3, 1, 1, np.max)), "max pool 3x3/1 pad 1")
    check(np.allclose(avg_pool(x, 3, 1, 1), naive_pool(x, 3, 1, 1, np.mean)),
          "avg pool 3x3/1 pad 1 excludes padding")
    corner = avg_pool(np.arange(9.0).reshape(1, 3, 3, 1), 3, 1, 1)[0, 0, 0, 0]
    check(corner == (0 + 1 + 3 + 4) / 4, "avg pool corner divides by 4")
    bn = bn_relu(np.array([1.0, -5.0]), np.array([0.5, 0.0]), np.array([0.25 - BN_EPS, 1.0]),
                 np.array([0.1, 0.0]))
    check(np.allclose(bn, [0.5 / 0.5 + 0.1, 0.0]), "batch norm (eps 1e-3, no scale) + relu")


def test_network(weights_path):
    """Shapes, finiteness, sign and batch/gray invariances of the full network."""
    net = Weights(weights_path)
    trace = []
    const = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    f_const = forward(net, network_input(const), trace)
    check([t for t in trace] == EXPECTED_SHAPES, "stage shapes match the TF graph")
    check(not net.unused(), "every stored tensor is used exactly by name")
    check(f_const.shape == (1, FEATURES) and np.isfinite(f_const).all(), "constant image: finite")
    check((f_const >= 0).all() and f_const.max() > 0, "features are non-negative and not all zero")
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(1, 20, 24), dtype=np.uint8)
    f_gray = features(net, gray)
    f_rgb = features(net, np.repeat(gray[..., None], 3, axis=-1))
    check(np.array_equal(f_gray, f_rgb), "gray image == its 3-channel copy")
    f_pair = features(net, np.concatenate([np.repeat(gray[..., None], 3, -1)[:, :, :20],
                                           np.full((1, 20, 20, 3), 128, np.uint8)]))
    f_a = features(net, np.repeat(gray[..., None], 3, -1)[:, :, :20])
    f_b = features(net, np.full((1, 20, 20, 3), 128, np.uint8))
    check(np.allclose(f_pair, np.concatenate([f_a, f_b]), rtol=1e-12, atol=1e-12),
          "batch results equal single-image results")
    print(f"constant-128 image: mean {f_const.mean():.6f}, max {f_const.max():.6f}")


def self_test(weights_path=None):
    """Run the self-tests (the network ones only when weights are given)."""
    test_resize()
    test_primitives()
    if weights_path:
        test_network(weights_path)
    else:
        print("(no weights given: network checks skipped)")
    print("self-test passed")


def main(argv):
    """Command-line entry point."""
    if len(argv) in (2, 3) and argv[1] == "--self-test":
        self_test(argv[2] if len(argv) == 3 else None)
    elif len(argv) == 3 and not argv[1].startswith("-"):
        make_fixtures(argv[1], argv[2])
    else:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
