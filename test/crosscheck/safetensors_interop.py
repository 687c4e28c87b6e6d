#!/usr/bin/env python3
"""Cross-check glmtool's safetensors reader/writer against the reference Python package.

Needs Python with `torch` and `safetensors` (the GPU machine; no GPU is used).

  python3 safetensors_interop.py write DIR
      Writes files with safetensors.torch.save_file (every dtype glmtool handles, bf16
      included, a 0-d scalar, zero-size tensors, with and without __metadata__, and a
      two-shard model with model.safetensors.index.json) plus DIR/manifest.json.
      Commit the result as test/fixtures/safetensors-py/ so the vitest suite
      (test/safetensors-interop.test.ts) checks glmtool's reader against it.

  python3 safetensors_interop.py check DIR
      Loads every .safetensors under DIR with safe_open and load_file and compares it with
      DIR/manifest.json (as glmtool writes it:
        SAFETENSORS_INTEROP_OUT=DIR npx vitest run test/safetensors-interop).
      Prints a JSON summary; exits 1 on any mismatch.

manifest.json = {"files": {"<path relative to DIR, posix>": {
    "metadata": {str: str} | null,
    "tensors": {name: {"dtype": "F16", "shape": [...], "sha256": "<hex of the contiguous
                row-major little-endian bytes>"}}}}}
"""
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DTYPES = {
    torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.bool: "BOOL",
}


def tensor_bytes(t: torch.Tensor) -> bytes:
    # A byte view of the flattened tensor is its row-major buffer; x86/ARM hosts are little-endian.
    assert sys.byteorder == "little"
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def describe(tensors: dict, metadata) -> dict:
    return {
        "metadata": metadata,
        "tensors": {
            name: {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                   "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest()}
            for name, t in tensors.items()
        },
    }


def sample(prefix: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for dtype in DTYPES:
        short = DTYPES[dtype].lower()
        for suffix, shape in (("mat", (3, 5)), ("scalar", ()), ("empty", (2, 0))):
            if dtype.is_floating_point:
                t = torch.randn(shape, generator=g, dtype=torch.float64).mul(50).to(dtype)
                if suffix == "mat":  # specials survive byte-for-byte, NaN included
                    t.view(-1)[:6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0], dtype=dtype)
            elif dtype == torch.bool:
                t = torch.randint(0, 2, shape, generator=g).bool()
            else:
                info = torch.iinfo(dtype)
                t = torch.randint(max(info.min, -(2**62)), min(info.max, 2**62), shape, generator=g, dtype=torch.int64).to(dtype)
            out[f"{prefix}{short}.{suffix}"] = t
    out[f"{prefix}big"] = torch.randn((64, 33), generator=g)
    return out


def write(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    manifest = {"files": {}}
    meta = {"format": "pt", "source": "safetensors python interop", "unicode-ключ": "значение ✓"}

    t = sample("", 1)
    save_file(t, str(d / "py_all_dtypes.safetensors"), metadata=meta)
    manifest["files"]["py_all_dtypes.safetensors"] = describe(t, meta)

    t = dict(list(sample("plain.", 2).items())[:6])
    save_file(t, str(d / "py_no_metadata.safetensors"))
    manifest["files"]["py_no_metadata.safetensors"] = describe(t, None)

    # A two-shard model in the transformers layout.
    sd = d / "py_sharded"
    sd.mkdir(exist_ok=True)
    t = sample("layers.", 3)
    names = list(t)
    shards = [dict((n, t[n]) for n in names[: len(names) // 2]), dict((n, t[n]) for n in names[len(names) // 2:])]
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(sd / fname), metadata={"format": "pt"})
        manifest["files"][f"py_sharded/{fname}"] = describe(shard, {"format": "pt"})
        for n, v in shard.items():
            weight_map[n] = fname
            total += v.numel() * v.element_size()
    (sd / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n")

    (d / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({"wrote": sorted(manifest["files"]), "dir": str(d)}, indent=2))


def check(d: Path) -> int:
    manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))["files"]
    problems, checked = [], {}
    found = sorted(p.relative_to(d).as_posix() for p in d.rglob("*.safetensors"))
    for rel in sorted(set(manifest) - set(found)):
        problems.append(f"{rel}: listed in manifest.json but not found")
    for rel in found:
        want = manifest.get(rel)
        if want is None:
            problems.append(f"{rel}: not listed in manifest.json")
            continue
        try:
            with safe_open(str(d / rel), framework="pt") as f:
                meta = f.metadata()
                opened = {k: f.get_tensor(k) for k in f.keys()}
            loaded = load_file(str(d / rel))  # the other entry point, same bytes expected
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{rel}: failed to load: {type(e).__name__}: {e}")
            continue
        if (meta or None) != want["metadata"]:
            problems.append(f"{rel}: metadata {meta!r} != {want['metadata']!r}")
        got = describe(opened, meta)["tensors"]
        if set(got) != set(want["tensors"]):
            problems.append(f"{rel}: tensors differ: missing {sorted(set(want['tensors']) - set(got))}, "
                            f"unexpected {sorted(set(got) - set(want['tensors']))}")
        for name in sorted(set(got) & set(want["tensors"])):
            if got[name] != want["tensors"][name]:
                problems.append(f"{rel}: {name}: got {got[name]}, want {want['tensors'][name]}")
            if tensor_bytes(loaded[name]) != tensor_bytes(opened[name]):
                problems.append(f"{rel}: {name}: load_file and safe_open disagree")
        checked[rel] = len(got)
    for idx in sorted(d.rglob("model.safetensors.index.json")):
        wm = json.loads(idx.read_text())["weight_map"]
        for name, fname in wm.items():
            with safe_open(str(idx.parent / fname), framework="pt") as f:
                if name not in f.keys():
                    problems.append(f"{idx.relative_to(d)}: {name} not in {fname}")
    summary = {"dir": str(d), "files_checked": checked, "tensors_checked": sum(checked.values()),
               "problems": problems, "ok": not problems,
               "versions": {"torch": torch.__version__, "safetensors": __import__("safetensors").__version__}}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0 if not problems else 1


def main(argv: list) -> int:
    if len(argv) != 3 or argv[1] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(argv[2])
    if argv[1] == "write":
        write(d)
        return 0
    return check(d)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
