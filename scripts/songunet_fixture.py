#!/usr/bin/env python3
"""Makes crates/emulsion-models/tests/fixtures/songunet_tiny.safetensors: the weights of a small
EDM `SongUNet` (the PyTorch network of scripts/torch_reference.py, EDM's names, buffers and
layouts), an input and the network's output, against which Emulsion's import of EDM weights
is tested (crates/emulsion-models/tests/songunet_fixture.rs).

    scripts/songunet_fixture.py [--out PATH]
    scripts/songunet_fixture.py --check EXPORTED.safetensors

`--check` loads a file that `emulsion export` wrote into the SongUNet its metadata describes,
with `strict=True`. Needs torch, numpy and safetensors (made once; not a CI dependency).

The fixture holds the network's `state_dict` under its own names; `io.x` (images),
`io.noise_labels`, `io.class_labels` (class indices as floats; `label_dim` is the null label,
a zero one-hot) and `io.output`; its metadata `songunet` holds the network's arguments.
"""
import argparse
import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_reference import SongUNet  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates/emulsion-models/tests/fixtures/songunet_tiny.safetensors"

# Two levels, an attention block, class labels: every kind of tensor SongUNet has.
TINY = dict(size=8, channels=3, label_dim=10, model_channels=8, channel_mult=[1, 2], channel_mult_emb=4,
            num_blocks=1, attn_resolutions=[4], dropout=0.0, num_heads=1, embedding="positional")


def build(kwargs):
    return SongUNet(kwargs["size"], kwargs["channels"], kwargs["label_dim"], kwargs["model_channels"],
                    kwargs["channel_mult"], kwargs["channel_mult_emb"], kwargs["num_blocks"],
                    kwargs["attn_resolutions"], kwargs["dropout"], kwargs["num_heads"], kwargs["embedding"])


def make(out):
    torch.manual_seed(0)
    net = build(TINY).eval()
    # Weights far from their initial values (EDM zero-initialises biases and the last layers),
    # so that every tensor and every layout moves the output.
    with torch.no_grad():
        for name, p in net.named_parameters():
            is_norm_scale = "norm" in name.rsplit(".", 2)[-2] and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if is_norm_scale else 0.0))
    x = torch.randn(3, TINY["channels"], TINY["size"], TINY["size"])
    noise_labels = torch.tensor([-1.3, 0.2, 2.1])
    labels = torch.tensor([2, 7, TINY["label_dim"]])
    one_hot = torch.nn.functional.one_hot(labels, TINY["label_dim"] + 1)[:, : TINY["label_dim"]].float()
    with torch.no_grad():
        output = net(x, noise_labels, one_hot)
    tensors = {name: t.detach().contiguous() for name, t in net.state_dict().items()}
    tensors.update({"io.x": x, "io.noise_labels": noise_labels, "io.class_labels": labels.float(), "io.output": output})
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"songunet": json.dumps(TINY)})
    print(f"wrote {out}: {len(net.state_dict())} tensors, output mean {output.mean():.6f}")


def check(path):
    with safe_open(str(path), "pt") as f:
        info = json.loads(f.metadata()["emulsion"])
    s = info["songunet"]
    kwargs = dict(size=s["img_resolution"], channels=s["in_channels"], label_dim=s["label_dim"],
                  model_channels=s["model_channels"], channel_mult=s["channel_mult"],
                  channel_mult_emb=s["channel_mult_emb"], num_blocks=s["num_blocks"],
                  attn_resolutions=s["attn_resolutions"], dropout=s["dropout"], num_heads=info["unet"]["num_heads"],
                  embedding=s["embedding_type"])
    net = build(kwargs)
    net.load_state_dict(load_file(str(path)), strict=True)
    print(f"{path}: loads into SongUNet({json.dumps(s)}) with strict=True")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--check", type=pathlib.Path)
    args = parser.parse_args()
    check(args.check) if args.check else make(args.out)
