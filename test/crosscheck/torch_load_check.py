#!/usr/bin/python3
"""Check that a ChatGLM model directory is genuine torch.save data, as torch sees it.

Usage:
    /usr/bin/python3 test/crosscheck/torch_load_check.py <model-dir>

The directory holds either pytorch_model.bin.index.json plus the shards it
names, or a single pytorch_model.bin; and config.json.  Every shard is
  - required to be a zip-format torch.save file (data.pkl + data/<key> records
    under one root folder; the legacy non-zip format is reported),
  - loaded with torch.load(path, map_location="cpu"), and again with
    weights_only=True where this torch has it (1.13 does) -- a file that only
    loads with the full unpickler is a problem,
  - required to hold a dict of name -> tensor.
Then:
  - index: every name in weight_map is in the shard it names; no shard holds a
    tensor the index lacks; no name is in two shards; every shard file exists.
    A metadata.total_size that differs from the tensors' bytes is a warning
    (published v1 indexes carry a stale one).
  - config: the tensor names, shapes and dtypes are those of the architecture
    config.json describes, from an expected-shape table implemented here
    independently of glmtool (ChatGLM-6B "v1" and ChatGLM2-6B "v2", see
    docs/chatglm.md sections 1-2; `quantization_bit` 4/8 layouts
    of the published quantization.py are understood too).

Prints one JSON object:
    {"ok": bool, "architecture": "v1"|"v2"|null, "tensors": n,
     "dtypes": {"F16": n, ...}, "names": [...in file order...],
     "files": {"<shard>": n_tensors}, "weights_only": "checked"|"unsupported",
     "problems": [...], "warnings": [...]}
and exits 1 when there are problems (0 otherwise, 2 on bad usage).
Always run with /usr/bin/python3 (Debian's python3-torch).
"""

import json
import os
import sys
import zipfile

import torch

sys.dont_write_bytecode = True  # keep __pycache__ out of the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tensor_digest as td  # noqa: E402

TORCH_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


# --------------------------------------------------------------------------
# Expected names and shapes, computed from config.json
# --------------------------------------------------------------------------

def detect_architecture(cfg, names):
    v2_keys = ("padded_vocab_size", "multi_query_group_num", "ffn_hidden_size", "kv_channels")
    v1_keys = ("inner_hidden_size", "position_encoding_2d", "max_sequence_length")
    if any(k in cfg for k in v2_keys):
        return "v2"
    if any(k in cfg for k in v1_keys):
        return "v1"
    if any(n.startswith("transformer.encoder.") for n in names):
        return "v2"
    if any(n.startswith("transformer.layers.") for n in names):
        return "v1"
    return None


def _linear(table, name, out_f, in_f, bias, quant_bits, fdt):
    """A linear layer; quantized per the published quantization.py when asked."""
    if quant_bits:
        assert in_f * quant_bits % 8 == 0
        table[name + ".weight"] = ([out_f, in_f * quant_bits // 8], "I8")
        table[name + ".weight_scale"] = ([out_f], fdt)
    else:
        table[name + ".weight"] = ([out_f, in_f], fdt)
    if bias:
        table[name + ".bias"] = ([out_f], fdt)


def expected_v1(cfg, fdt):
    H = cfg["hidden_size"]
    L = cfg["num_layers"]
    heads = cfg["num_attention_heads"]
    F = cfg.get("inner_hidden_size") or 4 * H
    V = cfg["vocab_size"]
    qb = cfg.get("quantization_bit") or 0
    head_dim = H // heads
    # RotaryEmbedding(head_dim // 2 if position_encoding_2d else head_dim),
    # inv_freq over arange(0, dim, 2)
    rot_dim = head_dim // 2 if cfg.get("position_encoding_2d", True) else head_dim
    t = {}
    t["transformer.word_embeddings.weight"] = ([V, H], fdt)
    for i in range(L):
        p = f"transformer.layers.{i}."
        t[p + "input_layernorm.weight"] = ([H], fdt)
        t[p + "input_layernorm.bias"] = ([H], fdt)
        t[p + "attention.rotary_emb.inv_freq"] = ([rot_dim // 2], fdt)
        _linear(t, p + "attention.query_key_value", 3 * H, H, True, qb, fdt)
        _linear(t, p + "attention.dense", H, H, True, qb, fdt)
        t[p + "post_attention_layernorm.weight"] = ([H], fdt)
        t[p + "post_attention_layernorm.bias"] = ([H], fdt)
        _linear(t, p + "mlp.dense_h_to_4h", F, H, True, qb, fdt)
        _linear(t, p + "mlp.dense_4h_to_h", H, F, True, qb, fdt)
    t["transformer.final_layernorm.weight"] = ([H], fdt)
    t["transformer.final_layernorm.bias"] = ([H], fdt)
    t["lm_head.weight"] = ([V, H], fdt)
    return t


def expected_v2(cfg, fdt):
    H = cfg["hidden_size"]
    L = cfg["num_layers"]
    heads = cfg["num_attention_heads"]
    F = cfg["ffn_hidden_size"]
    V = cfg["padded_vocab_size"]
    D = cfg.get("kv_channels") or H // heads
    G = cfg["multi_query_group_num"] if cfg.get("multi_query_attention", True) else heads
    qb = cfg.get("quantization_bit") or 0
    bias = bool(cfg.get("add_bias_linear", False))
    qkv_bias = bool(cfg.get("add_qkv_bias", True))
    rms = cfg.get("rmsnorm", True)
    proj = heads * D                  # = H in every published config
    qkv = proj + 2 * G * D
    t = {}
    t["transformer.embedding.word_embeddings.weight"] = ([V, H], fdt)
    # RotaryEmbedding(kv_channels // 2), inv_freq over arange(0, dim, 2)
    t["transformer.rotary_pos_emb.inv_freq"] = ([D // 4], fdt)

    def norm(name):
        t[name + ".weight"] = ([H], fdt)
        if not rms:
            t[name + ".bias"] = ([H], fdt)

    for i in range(L):
        p = f"transformer.encoder.layers.{i}."
        norm(p + "input_layernorm")
        _linear(t, p + "self_attention.query_key_value", qkv, H, bias or qkv_bias, qb, fdt)
        _linear(t, p + "self_attention.dense", H, proj, bias, qb, fdt)
        norm(p + "post_attention_layernorm")
        _linear(t, p + "mlp.dense_h_to_4h", 2 * F, H, bias, qb, fdt)
        _linear(t, p + "mlp.dense_4h_to_h", H, F, bias, qb, fdt)
    if cfg.get("post_layer_norm", True):
        norm("transformer.encoder.final_layernorm")
    t["transformer.output_layer.weight"] = ([V, H], fdt)
    return t


def expected_table(cfg, arch):
    fdt = TORCH_DTYPES.get(cfg.get("torch_dtype", "float16"), "F16")
    return expected_v1(cfg, fdt) if arch == "v1" else expected_v2(cfg, fdt)


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------

def zip_problems(path):
    rel = os.path.basename(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x80\x02":
            return [f"{rel}: legacy (pre-1.6, non-zip) torch.save format, not the zip format"]
        return [f"{rel}: not a zip archive"]
    probs = []
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            probs.append(f"{rel}: zip entries do not share one root folder: {sorted(roots)}")
        rels = {n.split("/", 1)[1] for n in names if "/" in n}
        if "data.pkl" not in rels:
            probs.append(f"{rel}: no <root>/data.pkl entry")
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                probs.append(f"{rel}: entry {info.filename} is compressed ({info.compress_type})")
        bad = zf.testzip()
        if bad:
            probs.append(f"{rel}: CRC mismatch in {bad}")
    return probs


def check(model_dir):
    problems, warnings = [], []
    files_count = {}
    names, dtypes = [], {}
    found = {}          # name -> (shard, dtype, shape)
    weights_only = "checked" if td.supports_weights_only() else "unsupported"

    index_path = os.path.join(model_dir, "pytorch_model.bin.index.json")
    weight_map = None
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            problems.append("index: no weight_map object")
            weight_map = {}
        shards = sorted(set(weight_map.values()))
        total = (index.get("metadata") or {}).get("total_size")
    elif os.path.exists(os.path.join(model_dir, "pytorch_model.bin")):
        shards, total = ["pytorch_model.bin"], None
    else:
        problems.append("neither pytorch_model.bin.index.json nor pytorch_model.bin")
        shards, total = [], None

    for shard in shards:
        path = os.path.join(model_dir, shard)
        if not os.path.exists(path):
            problems.append(f"{shard}: named by the index but missing")
            continue
        problems.extend(zip_problems(path))
        try:
            obj = torch.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - reported, not raised
            problems.append(f"{shard}: torch.load failed: {type(e).__name__}: {e}")
            continue
        if weights_only == "checked":
            try:
                wo = torch.load(path, map_location="cpu", weights_only=True)
                if list(wo.keys()) != list(obj.keys()):
                    problems.append(f"{shard}: weights_only load gives different keys")
                del wo
            except Exception as e:  # noqa: BLE001
                problems.append(f"{shard}: torch.load(weights_only=True) failed: "
                                f"{type(e).__name__}: {str(e).splitlines()[0]}")
        if not isinstance(obj, dict):
            problems.append(f"{shard}: top level is {type(obj).__name__}, not a dict")
            continue
        files_count[shard] = len(obj)
        for name, t in obj.items():
            if not isinstance(t, torch.Tensor):
                problems.append(f"{shard}: {name!r} is a {type(t).__name__}, not a tensor")
                continue
            if name in found:
                problems.append(f"{name}: in both {found[name][0]} and {shard}")
                continue
            dn = td.dtype_name(t.dtype)
            found[name] = (shard, dn, list(t.shape), t.numel() * t.element_size())
            names.append(name)
            dtypes[dn] = dtypes.get(dn, 0) + 1
            if weight_map is not None:
                if name not in weight_map:
                    problems.append(f"{shard}: holds {name} which the index does not list")
                elif weight_map[name] != shard:
                    problems.append(f"{shard}: holds {name} which the index puts in "
                                    f"{weight_map[name]}")
        del obj

    if weight_map is not None:
        for name, shard in weight_map.items():
            if name not in found and os.path.exists(os.path.join(model_dir, shard)):
                problems.append(f"index: {name} is not in its shard {shard}")
        nbytes = sum(v[3] for v in found.values())
        if total is None:
            warnings.append("index: no metadata.total_size")
        elif total != nbytes:
            warnings.append(f"index: metadata.total_size {total} != {nbytes} bytes of tensors")

    # against config.json
    arch = None
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(cfg_path):
        problems.append("no config.json")
    else:
        with open(cfg_path) as f:
            cfg = json.load(f)
        arch = detect_architecture(cfg, names)
        if arch is None:
            problems.append("config.json: neither a ChatGLM-6B nor a ChatGLM2-6B config")
        else:
            if cfg.get("model_type") != "chatglm":
                warnings.append(f"config.json: model_type {cfg.get('model_type')!r}, expected 'chatglm'")
            if cfg.get("torch_dtype") not in TORCH_DTYPES:
                problems.append(f"config.json: torch_dtype {cfg.get('torch_dtype')!r}")
            try:
                table = expected_table(cfg, arch)
            except (KeyError, TypeError, ZeroDivisionError, AssertionError) as e:
                problems.append(f"config.json: cannot compute {arch} shapes: {e!r}")
                table = {}
            prefix_ok = bool(cfg.get("pre_seq_len"))
            for name, (shape, dt) in table.items():
                if name not in found:
                    problems.append(f"{arch}: expected tensor {name} {shape} is missing")
                    continue
                _shard, gdt, gshape, _n = found[name]
                if gshape != shape:
                    problems.append(f"{name}: shape {gshape}, expected {shape}")
                if gdt != dt:
                    if name.endswith("inv_freq") and gdt == "F32":
                        warnings.append(f"{name}: F32 inv_freq (config dtype {dt})")
                    else:
                        problems.append(f"{name}: dtype {gdt}, expected {dt}")
            for name in names:
                if name not in table:
                    if prefix_ok and name.startswith("transformer.prefix_encoder."):
                        warnings.append(f"{name}: P-Tuning prefix tensor, shape not checked")
                    else:
                        problems.append(f"{name}: not a tensor of the {arch} architecture")

    return {
        "ok": not problems,
        "architecture": arch,
        "tensors": len(names),
        "dtypes": dtypes,
        "names": names,
        "files": files_count,
        "weights_only": weights_only,
        "problems": problems,
        "warnings": warnings,
    }


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    result = check(argv[1])
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
