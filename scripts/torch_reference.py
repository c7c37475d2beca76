#!/usr/bin/env python3
"""PyTorch reference for `emulsion bench train`: the same network and training step, timed.

    scripts/torch_reference.py CONFIG [--device cpu|cuda] [--mode eager|compile] [--steps 31]
                               [--warmup 5] [--window 5] [--set KEY=VALUE]... [--json]
    scripts/torch_reference.py CONFIG --count-only

Builds the network an Emulsion config describes -- the DDPM++ UNet in the layout of EDM's
`SongUNet` (Karras et al. 2022, NVlabs/edm `training/networks.py`), written here from the paper
and EDM's description, with EDM's parameter names -- and times Emulsion's training step:
the whole batch's noise drawn first, label dropout to the null label, split into
`train.micro_batch` chunks whose losses are weighted by their share of the batch, one backward
pass each; then global-norm clipping, AdamW with linear warm-up, and the EMA of the weights.
Objectives `vp` (eps, v, x0 targets), `edm` and `flow`; schedules cosine, lognormal, laplace,
cauchy and flow, truncated to the log-SNR range in t as Emulsion does. Other objectives,
schedules and assignment methods are refused rather than timed as something else.

Prints the keys `emulsion bench train --json` prints. `--mode compile` runs the network through
`torch.compile`; its first step then includes compilation. cuDNN benchmarks its algorithms and
TF32 is off, as in EDM's training loop (`--tf32`, `--no-cudnn-benchmark` change that). Needs torch
and numpy only.
"""
import time

PROCESS_START = time.perf_counter()

import argparse
import gzip
import json
import math
import os
import pathlib
import resource
import sys
import tomllib

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# Configuration: Emulsion's defaults for the keys this script reads.

MODEL_DEFAULTS = dict(channels=128, channel_mult=[2, 2, 2], channel_mult_emb=4, num_blocks=4,
                      attn_resolutions=None, dropout=0.1, num_heads=1, embedding="positional",
                      class_conditional=False, label_dropout=0.1)
TRAIN_DEFAULTS = dict(batch_size=128, micro_batch=0, lr=2e-4, warmup_steps=5000, weight_decay=0.0,
                      betas=[0.9, 0.999], adam_eps=1e-8, ema_decay=0.9999, grad_clip=1.0)
SCHEDULE_DEFAULTS = dict(laplace=dict(mu=0.0, b=0.5), cauchy=dict(mu=0.0, gamma=1.0),
                         lognormal=dict(p_mean=-1.2, p_std=1.2))


def apply_override(table, arg):
    """`section.key=value` into `table`, the value read as TOML, else as a bare string."""
    key, _, raw = arg.partition("=")
    if not _:
        sys.exit(f"--set {arg}: expected KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    *sections, last = key.strip().split(".")
    node = table
    for s in sections:
        # A schedule or objective given by name is the table holding only its `type`, as
        # Emulsion reads it.
        if s in ("schedule", "objective") and isinstance(node.get(s), str):
            node[s] = {"type": node[s]}
        node = node.setdefault(s, {})
    node[last] = value


def load_config(path, overrides):
    with open(path, "rb") as f:
        config = tomllib.load(f)
    for arg in overrides:
        apply_override(config, arg)
    return config


# --------------------------------------------------------------------------------------------
# Data: the formats Emulsion reads, as uint8 [N, C, H, W] plus labels.

def read_idx(path):
    raw = gzip.open(path).read() if str(path).endswith(".gz") else open(path, "rb").read()
    magic, count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic == 2051:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        return np.frombuffer(raw, np.uint8, count * rows * cols, 16).reshape(count, 1, rows, cols)
    if magic == 2049:
        return np.frombuffer(raw, np.uint8, count, 8).astype(np.int64)
    sys.exit(f"{path}: not an IDX images or labels file (magic {magic})")


def find(folder, stem):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_data(config, root, count_only=False):
    data = config.get("data", {})
    kind, split = data.get("dataset"), data.get("split", "train")
    if kind == "idx":
        folder = root / data.get("path", "/usr/share/datasets/fashion-mnist")
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(find(folder, f"{prefix}-images-idx3-ubyte"))
        labels_file = find(folder, f"{prefix}-labels-idx1-ubyte")
        labels = read_idx(labels_file) if labels_file else None
    elif kind == "cifar10":
        folder = root / data.get("path", "datasets/cifar-10-batches-bin")
        if (folder / "cifar-10-batches-bin").is_dir():
            folder = folder / "cifar-10-batches-bin"
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
        if not all((folder / n).is_file() for n in names):
            if not count_only:
                sys.exit(f"CIFAR-10 files {', '.join(names)} not found in {folder}: see README.md, CIFAR-10")
            # The parameter count needs only the format: 3x32x32, ten classes.
            return np.zeros((1, 3, 32, 32), np.uint8), np.arange(10), 10, False
        records = np.concatenate([np.fromfile(folder / n, np.uint8).reshape(-1, 3073) for n in names])
        images, labels = records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)
    else:
        # A folder of images: only the shape matters for timing.
        size, channels = data.get("image_size"), data.get("channels", 3)
        if not size:
            sys.exit("a folder dataset needs data.image_size")
        images, labels = np.random.default_rng(0).integers(0, 256, (1024, channels, size, size), np.uint8), None
    num_classes = 10 if kind == "cifar10" else int(labels.max()) + 1 if labels is not None else 0
    if data.get("limit"):
        images = images[: data["limit"]]
        labels = labels[: data["limit"]] if labels is not None else None
    if data.get("image_size") and data["image_size"] != images.shape[-1] and kind != "folder":
        sys.exit("resizing is not mirrored: use the dataset's native size")
    return images, labels, num_classes, bool(data.get("hflip", False))


# --------------------------------------------------------------------------------------------
# The network: DDPM++ in SongUNet's layout and naming.

def xavier_uniform(shape, fan_in, fan_out, gain):
    bound = gain * math.sqrt(6 / (fan_in + fan_out))
    return torch.empty(shape).uniform_(-bound, bound)


class Linear(torch.nn.Module):
    def __init__(self, cin, cout, gain=1.0):
        super().__init__()
        self.weight = torch.nn.Parameter(xavier_uniform([cout, cin], cin, cout, gain))
        self.bias = torch.nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Conv2d(torch.nn.Module):
    """A `kernel`-square convolution (none when 0), after an optional 2x box-filter down-sampling
    or nearest 2x up-sampling, written as EDM does: a fixed depthwise [1, 1] filter buffer."""

    def __init__(self, cin, cout, kernel, gain=1.0, up=False, down=False):
        super().__init__()
        self.up, self.down = up, down
        if kernel:
            fan_in, fan_out = cin * kernel * kernel, cout * kernel * kernel
            self.weight = torch.nn.Parameter(xavier_uniform([cout, cin, kernel, kernel], fan_in, fan_out, gain))
            self.bias = torch.nn.Parameter(torch.zeros(cout))
        else:
            self.weight = self.bias = None
        f = torch.tensor([1.0, 1.0])
        self.register_buffer("resample_filter", (f.ger(f) / f.sum().square()).unsqueeze(0).unsqueeze(0) if up or down else None)

    def forward(self, x):
        c = x.shape[1]
        if self.up:
            x = F.conv_transpose2d(x, (self.resample_filter * 4).tile([c, 1, 1, 1]), groups=c, stride=2)
        if self.down:
            x = F.conv2d(x, self.resample_filter.tile([c, 1, 1, 1]), groups=c, stride=2)
        if self.weight is not None:
            x = F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2)
        return x


class GroupNorm(torch.nn.Module):
    """EDM's grouping: min(32, channels // 4) groups, eps 1e-6. (Emulsion lowers the count to a
    divisor of the channels where that does not divide them; PyTorch refuses such a config.)"""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.groups, self.eps = min(32, channels // 4), eps
        self.weight = torch.nn.Parameter(torch.ones(channels))
        self.bias = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class UNetBlock(torch.nn.Module):
    """x + conv1(dropout(silu(norm1(conv0(silu(norm0(x))) + affine(emb))))), scaled by sqrt(1/2),
    then optional self-attention, also residual and scaled."""

    def __init__(self, cin, cout, emb_channels, dropout, up=False, down=False, heads=0):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout, self.heads = cin, cout, dropout, heads
        self.norm0 = GroupNorm(cin)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down)
        self.affine = Linear(emb_channels, cout)
        self.norm1 = GroupNorm(cout)
        self.conv1 = Conv2d(cout, cout, 3, gain=1e-5)
        self.skip = Conv2d(cin, cout, 1, up=up, down=down) if cin != cout or up or down else None
        if heads:
            self.norm2 = GroupNorm(cout)
            self.qkv = Conv2d(cout, cout * 3, 1, gain=math.sqrt(0.2))
            self.proj = Conv2d(cout, cout, 1, gain=1e-5)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None]))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * math.sqrt(0.5)
        if self.heads:
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.heads, c // self.heads, 3, h * w).unbind(2)
            weights = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(c // self.heads)).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", weights, v)
            x = (self.proj(a.reshape(n, c, h, w)) + x) * math.sqrt(0.5)
        return x


class SongUNet(torch.nn.Module):
    def __init__(self, size, channels, label_dim, model_channels, channel_mult, channel_mult_emb,
                 num_blocks, attn_resolutions, dropout, num_heads, embedding):
        super().__init__()
        if embedding != "positional":
            sys.exit("only model.embedding = positional is mirrored")
        emb_channels = model_channels * channel_mult_emb
        self.noise_channels = model_channels
        half = model_channels // 2
        self.register_buffer("freqs", (1e-4) ** (torch.arange(half, dtype=torch.float32) / (half - 1)), persistent=False)
        self.map_label = Linear(label_dim, model_channels) if label_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        block = lambda cin, cout, **kw: UNetBlock(cin, cout, emb_channels, dropout, **kw)

        self.enc = torch.nn.ModuleDict()
        cout = channels
        for level, mult in enumerate(channel_mult):
            res = size >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, heads=num_heads if res in attn_resolutions else 0)
        skips = [b.out_channels if isinstance(b, UNetBlock) else model_channels for b in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = size >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, heads=num_heads)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, up=True)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, heads=num_heads if attn else 0)
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, channels, 3, gain=1e-5)

    def forward(self, x, noise_labels, class_labels):
        angles = noise_labels[:, None] * self.freqs[None, :]
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.weight.shape[1]))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        skips = []
        for name, block in self.enc.items():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        out = None
        for name, block in self.dec.items():
            if name.endswith("aux_norm"):
                out = block(x)
            elif name.endswith("aux_conv"):
                out = block(F.silu(out))
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


def build_network(config, images, num_classes):
    m = {**MODEL_DEFAULTS, **config.get("model", {})}
    size, channels = images.shape[-1], images.shape[1]
    attn = m["attn_resolutions"] if m["attn_resolutions"] is not None else ([size // 2] if len(m["channel_mult"]) > 1 else [])
    label_dim = num_classes if m["class_conditional"] else 0
    net = SongUNet(size, channels, label_dim, m["channels"], m["channel_mult"], m["channel_mult_emb"],
                   m["num_blocks"], attn, m["dropout"], m["num_heads"], m["embedding"])
    return net, m


# --------------------------------------------------------------------------------------------
# Noise levels: lambda(t) and its inverse per schedule, truncated in t.

def normal_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def schedule(config):
    d = config.get("diffusion", {})
    # `schedule` is a curve's name or a table with its `type` and parameters.
    chosen = d.get("schedule", "cosine")
    chosen = chosen if isinstance(chosen, dict) else {"type": chosen}
    if "type" not in chosen:
        sys.exit("diffusion.schedule: missing field `type` (name the curve in `type`, or write it as its name)")
    name = chosen["type"]
    given = {k: v for k, v in chosen.items() if k != "type"}
    unknown = sorted(set(given) - set(SCHEDULE_DEFAULTS.get(name, {})))
    if unknown:
        sys.exit(f"diffusion.schedule: {', '.join(unknown)} does not apply to type = {name!r}")
    p = {**SCHEDULE_DEFAULTS.get(name, {}), **given}
    if name == "cosine":
        lam, t_of = (lambda t: -2 * torch.log(torch.tan(math.pi * t / 2))), (lambda l: 2 / math.pi * math.atan(math.exp(-l / 2)))
    elif name == "lognormal":
        lam = lambda t: -2 * (p["p_mean"] + p["p_std"] * math.sqrt(2) * torch.erfinv(2 * t - 1))
        t_of = lambda l: normal_cdf((-l / 2 - p["p_mean"]) / p["p_std"])
    elif name == "laplace":
        lam = lambda t: p["mu"] - p["b"] * torch.sign(0.5 - t) * torch.log(1 - 2 * (t - 0.5).abs())
        t_of = lambda l: 0.5 * math.exp(-(l - p["mu"]) / p["b"]) if l >= p["mu"] else 1 - 0.5 * math.exp((l - p["mu"]) / p["b"])
    elif name == "cauchy":
        lam = lambda t: p["mu"] + p["gamma"] * torch.tan(math.pi / 2 * (1 - 2 * t))
        t_of = lambda l: 0.5 - math.atan((l - p["mu"]) / p["gamma"]) / math.pi
    elif name == "flow":
        lam, t_of = (lambda t: 2 * torch.log((1 - t) / t)), (lambda l: 1 / (1 + math.exp(l / 2)))
    else:
        sys.exit(f"schedule {name} is not mirrored by the reference")
    offset = 2 * math.log(d.get("shift", 1.0))
    lo, hi = d.get("lambda_min", -15.0), d.get("lambda_max", 15.0)
    t_lo, t_hi = t_of(hi + offset), t_of(lo + offset)

    def sample(n, device):
        t = torch.empty(n, device=device).uniform_(t_lo, t_hi)
        return (lam(t) - offset).clamp(lo, hi)

    return sample


# --------------------------------------------------------------------------------------------
# Objectives: per-sample losses, as Emulsion's objective/*.rs.

def per_sample(v):
    return v[:, None, None, None]


def make_loss(config, net, sample_lambda):
    d = config.get("diffusion", {})
    # `objective` is a name or a table with its `type` and that objective's keys.
    chosen = d.get("objective", "vp")
    chosen = chosen if isinstance(chosen, dict) else {"type": chosen}
    if "type" not in chosen:
        sys.exit("diffusion.objective: missing field `type` (name the objective in `type`, or write it as its name)")
    objective = chosen["type"]
    if objective not in ("vp", "edm", "flow"):
        sys.exit(f"objective {objective} is not mirrored by the reference (only vp, edm, flow); --count-only works for every config")
    own = {"vp": {"target"}, "edm": {"sigma_data"}, "flow": set()}[objective]
    unknown = sorted(set(chosen) - own - {"type"})
    if unknown:
        sys.exit(f"diffusion.objective: {', '.join(unknown)} does not apply to type = {objective!r}")
    target, sd = chosen.get("target", "eps"), chosen.get("sigma_data", 0.5)

    def loss(x0, noise, labels):
        lam = sample_lambda(x0.shape[0], x0.device)
        s = torch.exp(-lam / 2)
        x = x0 + noise * per_sample(s)
        c_noise = s.log() / 4
        if objective == "vp":
            f = net(x * per_sample((s * s + 1).rsqrt()), c_noise, labels)
            alpha, sigma = per_sample(torch.sigmoid(lam).sqrt()), per_sample(torch.sigmoid(-lam).sqrt())
            y = {"eps": noise, "v": alpha * noise - sigma * x0, "x0": x0}[target]
            return (f - y).square().mean(dim=(1, 2, 3))
        if objective == "edm":
            total = s * s + sd * sd
            c_skip, c_out, c_in = sd * sd / total, s * sd / total.sqrt(), total.rsqrt()
            denoised = per_sample(c_skip) * x + per_sample(c_out) * net(x * per_sample(c_in), c_noise, labels)
            return (denoised - x0).square().mean(dim=(1, 2, 3)) * (total / (s * sd) ** 2)
        shrink = 1 / (1 + s)  # flow: x_t = (1 - t) x0 + t eps, t = s / (1 + s)
        f = net(x * per_sample(shrink), c_noise, labels)
        return (f - (noise - x0)).square().mean(dim=(1, 2, 3))

    return loss


# --------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=pathlib.Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=["eager", "compile"], default="eager")
    parser.add_argument("--steps", type=int, default=31)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent.parent,
                        help="what relative data paths are relative to (default: the checkout)")
    parser.add_argument("--tf32", action="store_true",
                        help="let cuDNN convolutions and matmuls use TF32 (default: off, as EDM's training loop sets it)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true",
                        help="use cuDNN's heuristic algorithm choice (default: benchmark each shape, as EDM does)")
    parser.add_argument("--count-only", action="store_true", help="print the parameter count and exit")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    images, labels, num_classes, hflip = load_data(config, args.root, args.count_only)
    torch.manual_seed(config.get("run", {}).get("seed", 0))
    net, model = build_network(config, images, num_classes)
    parameters = sum(p.numel() for p in net.parameters())
    if args.count_only:
        print(json.dumps({"config": str(args.config), "parameters": parameters}) if args.json else parameters)
        return
    windows = (args.steps - 1 - args.warmup) // args.window if args.window > 0 else 0
    if windows < 1:
        sys.exit(f"--steps {args.steps}: no timed window after the first step and {args.warmup} warm-up steps")
    assignment = config.get("assignment", {}).get("method", "none")
    if assignment != "none":
        sys.exit(f"assignment.method = {assignment} is not mirrored by the reference")

    device = torch.device(args.device)
    # EDM's training loop: cuDNN picks each convolution's algorithm by timing, and full f32.
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    t = {**TRAIN_DEFAULTS, **config.get("train", {})}
    net = net.to(device).train()
    ema = [p.detach().clone() for p in net.parameters()]
    forward = torch.compile(net) if args.mode == "compile" else net
    loss_of = make_loss(config, forward, schedule(config))
    params = list(net.parameters())
    optimizer = torch.optim.AdamW(params, lr=t["lr"], betas=tuple(t["betas"]), eps=t["adam_eps"], weight_decay=t["weight_decay"])
    batch, micro = t["batch_size"], t["micro_batch"] or t["batch_size"]
    data = torch.from_numpy(np.array(images))  # a writable copy
    label_data = torch.from_numpy(labels) if labels is not None else None
    label_dim = num_classes if model["class_conditional"] else 0
    rng = np.random.default_rng(0)
    order, cursor = rng.permutation(len(data)), 0

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(k):
        nonlocal order, cursor
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(data)), 0
        idx = torch.from_numpy(order[cursor: cursor + batch])
        cursor += batch
        x0 = data[idx].to(device, non_blocking=True).float() / 127.5 - 1
        if hflip:
            flip = torch.rand(batch, device=device) < 0.5
            x0 = torch.where(per_sample(flip), x0.flip(3), x0)
        y = None
        if label_dim:
            keep = (torch.rand(batch, device=device) >= model["label_dropout"]).float()[:, None]
            y = F.one_hot(label_data[idx].to(device), label_dim).float() * keep  # the null label: zeros
        noise = torch.randn_like(x0)
        for g in optimizer.param_groups:
            g["lr"] = t["lr"] * min(1.0, (k + 1) / t["warmup_steps"]) if t["warmup_steps"] else t["lr"]
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, batch, micro):
            end = min(start + micro, batch)
            part = loss_of(x0[start:end], noise[start:end], y[start:end] if y is not None else None).mean() * ((end - start) / batch)
            part.backward()
            total = total + part.detach()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - t["ema_decay"])
        return total

    sync()
    setup_s = time.perf_counter() - PROCESS_START
    window_times, first_step_s, final_loss = [], float("nan"), float("nan")
    window_start = time.perf_counter()
    for k in range(args.steps):
        loss = step(k)
        done, timed = k + 1, k - args.warmup
        window_end = timed > 0 and timed % args.window == 0 and timed // args.window <= windows
        if done == 1 or timed == 0 or window_end or done == args.steps:
            final_loss = float(loss)
            sync()
            now = time.perf_counter()
            if done == 1:
                first_step_s = now - PROCESS_START
            if window_end:
                window_times.append(now - window_start)
            window_start = time.perf_counter()

    ips = [args.window * batch / w for w in window_times]
    images_per_s = float(np.median(ips))
    peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "implementation": f"pytorch-{args.mode}",
        "config": str(args.config),
        "device": f"{args.device} (torch {torch.__version__}, "
                  + (f"{torch.cuda.get_device_name(device)}, TF32 {'on' if args.tf32 else 'off'}, cudnn.benchmark {'off' if args.no_cudnn_benchmark else 'on'})"
                     if device.type == "cuda" else f"{torch.get_num_threads()} threads)"),
        "parameters": parameters,
        "batch_size": batch,
        "micro_batch": t["micro_batch"],
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "window_steps": args.window,
        "setup_s": setup_s,
        "first_step_s": first_step_s,
        "images_per_s": images_per_s,
        "step_s": float(np.median([w / args.window for w in window_times])),
        "window_images_per_s": ips,
        "peak_host_mib": peak_host,
        "peak_device_mib": torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None,
        "final_loss": final_loss,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.config} on {result['device']}, {result['implementation']}: {parameters} parameters, batch {batch}")
        print(f"  first step      {first_step_s:.2f} s from start (setup {setup_s:.2f} s)")
        print(f"  steady state    {images_per_s:.1f} images/s, {result['step_s']:.4f} s/step (median of {len(ips)} windows)")
        print(f"  peak host       {peak_host:.0f} MiB")
        print(f"  last loss       {final_loss:.5f}")


if __name__ == "__main__":
    main()
