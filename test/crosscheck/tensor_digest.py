#!/usr/bin/python3
"""Print torch's own view of every tensor in a torch.save file or model directory.

Usage:
    /usr/bin/python3 test/crosscheck/tensor_digest.py <file-or-dir> [--full]

Prints one JSON object, name -> {"dtype", "shape", "sha256"}, with the same
conventions as test/fixtures/torch/expected.json:

  dtype   safetensors-style name: F16 BF16 F32 F64 I8 U8 I16 I32 I64 BOOL
          (other torch dtypes are printed as "torch.<name>")
  shape   list of ints ([] for a 0-d tensor)
  sha256  hex digest of the tensor's values as contiguous, row-major,
          little-endian bytes (bool as one byte 0/1; bf16 as its raw 16 bits)

With --full each entry also has "nbytes" and "first" (up to the first 8
elements, as JSON numbers; bool as 0/1).

A directory is read through pytorch_model.bin.index.json when present (every
shard the index names), else pytorch_model.bin, else every *.bin / *.pt file
in it.  A name that occurs in more than one file of a directory is an error.
Nested containers (a dict inside the top-level dict, lists, tuples) are
flattened with "." between the parts of a name.

Files are opened with torch.load(..., map_location="cpu", weights_only=True)
where this torch supports it (1.13 does), so a malicious pickle is refused
rather than executed.  Use on the device of your choice with Debian's
python3-torch: always /usr/bin/python3.

This module is also imported by test/fixtures/make_torch_fixtures.py and
test/crosscheck/torch_load_check.py so that all three share one definition of
dtype names and digests.
"""

import hashlib
import inspect
import json
import math
import os
import sys

import torch

DTYPE_NAMES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}


def dtype_name(dtype):
    return DTYPE_NAMES.get(dtype, str(dtype))


def supports_weights_only():
    try:
        return "weights_only" in inspect.signature(torch.load).parameters
    except (TypeError, ValueError):
        return False


def load_torch(path, weights_only=True):
    """torch.load on CPU; weights_only when asked and supported."""
    if weights_only and supports_weights_only():
        return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu")


def tensor_bytes(t):
    """Row-major little-endian bytes of the tensor's values."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    if arr.dtype.byteorder == ">":  # never on x86/arm64 hosts, but be exact
        arr = arr.byteswap().newbyteorder()
    return arr.tobytes()


def first_values(t, n=8):
    flat = t.detach().contiguous().reshape(-1)[:n]
    if t.dtype == torch.bool:
        return [int(v) for v in flat.tolist()]
    if t.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # exact: every f16/bf16 value is an f32 value
    if t.dtype.is_floating_point:
        # JSON has no NaN/Infinity: spell non-finite values as strings
        return [v if math.isfinite(v) else ("NaN" if v != v else ("Infinity" if v > 0 else "-Infinity"))
                for v in map(float, flat.tolist())]
    return [int(v) for v in flat.tolist()]


def digest(t, full=False):
    data = tensor_bytes(t)
    d = {
        "dtype": dtype_name(t.dtype),
        "shape": list(t.shape),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if full:
        d["nbytes"] = len(data)
        d["first"] = first_values(t)
    return d


def flatten_tensors(obj, prefix=""):
    """Yield (name, tensor) for every tensor reachable through dicts/lists/tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            yield from flatten_tensors(v, name)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            name = f"{prefix}.{i}" if prefix else str(i)
            yield from flatten_tensors(v, name)


def model_files(directory):
    """The torch files that make up a model directory, in a stable order."""
    index = os.path.join(directory, "pytorch_model.bin.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        seen = []
        for shard in weight_map.values():
            if shard not in seen:
                seen.append(shard)
        return [os.path.join(directory, s) for s in sorted(seen)]
    single = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(single):
        return [single]
    return sorted(
        os.path.join(directory, n)
        for n in os.listdir(directory)
        if n.endswith(".bin") or n.endswith(".pt")
    )


def digest_path(path, full=False):
    files = model_files(path) if os.path.isdir(path) else [path]
    out = {}
    for fp in files:
        obj = load_torch(fp)
        for name, t in flatten_tensors(obj):
            if name in out:
                raise SystemExit(f"tensor name {name!r} occurs twice (second time in {fp})")
            out[name] = digest(t, full)
    return out


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    full = "--full" in argv[1:]
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(json.dumps(digest_path(args[0], full), indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
