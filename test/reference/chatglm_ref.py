#!/usr/bin/python3
"""Independent PyTorch reference of the ChatGLM-6B ("v1") and ChatGLM2-6B ("v2") forward pass.

glmtool's runtimes (ONNX on CPU, CUDA) are checked against this file. It is written from
docs/chatglm.md (sections 2, 3, 4, 6, 7) and checked, detail by detail, against the
published modeling_chatglm.py of THUDM/chatglm-6b and THUDM/chatglm2-6b (read, not copied).
No `transformers`, no published code is imported: plain torch ops on a dict of tensors.
Run it with Debian's torch: `/usr/bin/python3` (torch 1.13 on CPU; torch 2.x on the GPU machine
works too).

SPEC vs PUBLISHED CODE (the published code wins; what this file does is the published way)
--------------------------------------------------------------------------------------------
1. v1 rotary inverse frequencies are fp16-rounded.  Spec section 3 says
   inv_freq = 1/10000^(arange(0,64,2)/64).  The published RotaryEmbedding computes that in fp32
   and then calls `.half()` in __init__, and ignores the checkpoint's buffer
   (`_load_from_state_dict` is a no-op).  So every published v1 run -- fp16, and also a model
   cast to fp32 with `.float()` -- rotates with the fp16-ROUNDED values (relative error up to
   4.9e-4 per frequency: angle errors grow with the position, up to 0.33 rad at position 2048).
   Default `--rope published` uses the rounded values; `--rope exact` the spec's exact ones.
   (The stored `rotary_emb.inv_freq` buffers hold the same fp16 values; checked to agree to 1e-3.)
2. v1 in fp16 also builds the rotary table in fp16: positions as fp16, position*inv_freq
   rounded to fp16, cos/sin rounded to fp16.  `--dtype f16` emulates that; spec is silent.
3. v2 prefix encoder with `prefix_projection`: spec section 7 says "a Linear-Tanh-Linear MLP
   from H ... applied to an embedding of width H".  That is v1's layout only.  Published v2:
   embedding [pre_seq_len, kv_size], trans.0 = Linear(kv_size -> H), Tanh,
   trans.2 = Linear(H -> kv_size), kv_size = num_layers*2*G*D.  This file reads the widths
   from the tensors, so both work.
4. v2 rotary in fp16 (spec section 4 says theta and positions are fp16 before cos/sin in
   fp32): the published code also rounds the 10000**(2j/64) power and the product
   position*theta to fp16, and rounds the cos/sin cache to fp16 ("mimic complex32").
   `--dtype f16` emulates each rounding.  In fp32 (a `.float()` model) nothing is rounded.
   Positions above 2048 are not exact in fp16: the published fp16 model rotates position
   2049 as 2048, etc.  (Only relevant for `--dtype f16` with long prompts.)
5. v2 masked scores: the published code masks with -inf (torch<2 path) or a boolean mask
   (SDPA, torch>=2); v1 masks with -10000 (then multiplied by layer_id+1).  Spec says -10000
   for v1 and is silent for v2.  Same softmax either way when a row has a visible entry.
6. v1 position ids, published (final) get_position_ids: context_length = FIRST index of <sop>
   (bos_token_id); tokens before it are at 0..ctx-1; <sop> and later at mask_position = FIRST
   index of [gMASK] (or of [MASK] when the prompt has no [gMASK]).  Spec's "0..n, n" is the
   same for text+[gMASK,<sop>].  Older published revisions (150001-era) left <sop> at n+1 in
   the prompt pass with [gMASK] but used n while decoding; the final revision uses n for both,
   which is what the spec says and what this file does.
7. v1 attention mask, published get_masks: causal, plus every column before <sop> visible to
   every row.  Decode rows see everything (the published mask update appends a visible
   column).  With a P-Tuning prefix every row also sees the pre_seq_len prefix columns.
   Matches spec.
8. v1 residuals (alpha * NORMED input), GeLU tanh form, (layer_id+1) score scaling that
   cancels, softmax in fp32: match spec, except alpha: the spec says sqrt(2 * num_layers),
   the published code computes sqrt(2 * 28) at every depth (its get_layer() never passes
   num_layers to GLMBlock, whose default is 28); this file follows the code.  v2 RMSNorm
   (fp32 variance; x*rsqrt(var+eps) then *weight, cast back), MQA grouping h // (heads/G), interleaved-pair rotary on the first
   D/2 dims, SwiGLU silu(y[:F])*y[F:]: match spec.
9. P-Tuning v2 prefix: both generations view the encoder output as
   [pre_seq_len, num_layers*2, heads_or_groups, head_dim]; index 2i = layer i keys, 2i+1
   values; cast to the model dtype (`.type(dtype)`; older v1 revisions: `.half()`); dropout
   is inactive in eval; keys are not rotated; positions are not shifted; every query sees
   every prefix entry.  Matches spec.
10. Whether the prefix encoder projects (trans.*): published v1 and ChatGLM3-6B as config.json's
   prefix_projection says; published ChatGLM2-6B ALWAYS, because its configuration_chatglm.py
   stores `self.prefix_projection = prefix_projection,` (a one-element tuple, truthy), so its
   PrefixEncoder always has trans.* and load_state_dict fails on a checkpoint without them.
   Spec section 7 is silent.  This file reads the checkpoint's config.json (beside
   pytorch_model.bin) and follows that rule; ChatGLM3-6B is told apart by a _name_or_path naming
   chatglm3.  Without a config.json the tensors decide (trans.* present: projected).
11. rope_ratio (config.json of the 32k models; absent = 1), spec silent.  ChatGLM3-6B-32k's
   RotaryEmbedding.forward_impl (THUDM/chatglm3-6b-32k modeling_chatglm.py) scales the BASE:
   `base = base * self.rope_ratio`, theta = 1/base^(arange(0, n, 2)/n) in float32; the
   checkpoint's inv_freq buffer (built from 10000) is never read.  ChatGLM2-6B-32k's forward_impl
   instead divides the POSITIONS by rope_ratio (position interpolation); this file does not
   implement that and refuses a rope_ratio != 1 unless _name_or_path names chatglm3.
   ChatGLM3-6B's forward_impl also computes theta, positions and angles in float32 whatever the
   model dtype (dtype=torch.float), rounding only the cos/sin cache: `--dtype f16` on a config
   naming chatglm3 emulates that, not note 4's roundings.

HOW IT WAS CHECKED (besides test/reference/test_chatglm_ref.py)
----------------------------------------------------------------
Once, by hand (not part of the suite: the published files are not in this repo),
against a local transcription of the published compute classes (RotaryEmbedding,
attention_fn / CoreAttention, SelfAttention, GLU / MLP, GLMBlock, RMSNorm, PrefixEncoder,
get_prompt, get_masks, get_position_ids, the decode-time position rule) loaded with tiny synth
weights (also with QKV weights x8 for peaked attention): f32 logits bit-identical on CPU
(torch 1.13) for prompts of 0, 1, 7 and 37 text tokens + 5 decode steps, and with P-Tuning
prefixes with and without prefix_projection, both generations; <= 9e-7 relative against the
published code in f32 on an H200 (torch 2.11, SDPA path for v2).  Published fp16 on the
H200 vs this file: 8e-4..1.5e-3 relative for `--dtype f32` and 7e-4..1.3e-3 for the
`--dtype f16` emulation (the fp16 rounding of the logits alone is ~5e-4); bf16 (v2):
8e-3..1.7e-2 vs f32, 6e-3..9e-3 vs the bf16 emulation.  `--rope exact` moves v1 logits by
2e-5 relative already on the tiny model at ~40 tokens.

PYTHON API
----------
ChatGLMRef(model_dir, dtype="f32", rope="published", device="cpu", prefix=None);
.build_prompt(text_ids) -> ids with specials; .layout(ids) -> ((pos, block|None), allowed);
.prefill(ids) -> (logits [S, V], session); .decode(session, token) -> logits [V];
.full_forward(ids) -> logits [S, V] (no cache); .forward_tokens(session, ids, pos, block,
allowed) with explicit positions and visibility; .self_check(ids, steps);
.set_prefix(load_prefix_checkpoint(path)) or .set_prefix_kv(ks, vs).

PRECISION
---------
`--dtype f32` (default): weights cast to float32, everything computed in float32 on the
stated device; this is the reference parity is measured against.  `--dtype f16|bf16`
emulates the published half-precision run in float32 arithmetic: weights rounded to the
dtype, and every tensor the published code materialises in half precision rounded to it
after the op that produces it (GEMMs accumulate in fp32 and round once, as cuBLAS does;
softmax, norms and the v2 RMSNorm variance in fp32).  Close to, not bit-equal to, CUDA.

CLI
---
  chatglm_ref.py --model DIR --ids 5,6,7 [--steps N] [--all-logits] [--out DIR]
                 [--prefix FILE] [--self-check] [--dtype f32|f16|bf16]
                 [--rope published|exact] [--device cpu|cuda] [--self-check-tol X] [--kv-int8]
                 [--kv-int8-from f32|f16|bf16]
--kv-int8 rounds every key and value row (one KV head, one token) as glmtool's INT8 KV cache
stores it, the prefix's rows included: the reference for `--kv-dtype int8`.  --kv-int8-from
rounds each row to the engine's dtype first, as the engine holds it when it quantizes.
--ids are TEXT token ids ('' for none); the script adds the specials
(v1: ids + [gMASK, <sop>]; v2: [gMASK, sop] + ids).  It runs one prefill over the prompt,
then N greedy decode steps with the KV cache: row 0 after the prompt gives generated[0]
(argmax), decode step k feeds generated[k-1] and gives the next row; generation does not
stop at EOS.  Outputs in --out:
  meta.json: {"arch": "chatglm-6b"|"chatglm2-6b",
              "input_ids": prompt ids with specials,
              "positions": v1 [[position ids], [block position ids]], v2 [position ids],
                           covering the prompt then the token fed at each decode step
                           (len(input_ids) + steps entries per row),
              "generated": argmax of every row from the last prompt row on (steps+1 ids;
                           the first `steps` of them were fed back),
              "rows": r, "vocab": V, "prompt_len": len(input_ids), "steps": N,
              "all_logits": bool, "dtype": "f32"|"f16"|"bf16", "rope": "published"|"exact",
              "prefix_len": pre_seq_len or 0, "self_check": {...} or null}
  logits.f32: raw little-endian float32, rows x vocab, row-major.  With --all-logits one row
              per prompt token (input_ids order) then one per decode step
              (rows = prompt_len + steps); without, the last prompt row then one per decode
              step (rows = 1 + steps).
--self-check decodes max(steps, 4) tokens with the cache and compares every row against a
full recompute of the whole sequence without cache (relative error per row =
max|a-b| / max|b|); fails (exit 1) above --self-check-tol (default 1e-5 for f32, 5e-2 for
f16/bf16).  A one-line JSON summary is printed on stdout.
"""

import argparse
import re
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

V1 = "chatglm-6b"
V2 = "chatglm2-6b"
# ChatGLM2/3 tokenizer specials: appended after the SentencePiece vocabulary (spec section 4).
V2_GMASK, V2_SOP = 64790, 64792
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


class RefError(Exception):
    """A problem with the inputs, reported as one line."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- report which file, and why, in one line
        raise RefError(f"cannot torch.load {path} (weights_only=True): {e}") from e


def load_state_dict(model_dir, wanted_dtype):
    """Every tensor of the model directory, cast to `wanted_dtype` then held as float32.

    Returns (tensors, notes): notes lists index/shard inconsistencies (never fatal here; a
    tensor the forward pass needs and cannot find is reported by `need`).
    """
    index_path = os.path.join(model_dir, "pytorch_model.bin.index.json")
    single = os.path.join(model_dir, "pytorch_model.bin")
    notes = []
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
        weight_map, files = None, ["pytorch_model.bin"]
    else:
        raise RefError(f"{model_dir}: neither pytorch_model.bin.index.json nor pytorch_model.bin")
    tensors, where = {}, {}
    for fname in files:
        path = os.path.join(model_dir, fname)
        if not os.path.exists(path):
            raise RefError(f"{model_dir}: the index names shard {fname}, which does not exist")
        sd = _torch_load(path)
        if not isinstance(sd, dict):
            raise RefError(f"{path}: not a state dict (a {type(sd).__name__})")
        for name, t in sd.items():
            if not torch.is_tensor(t):
                continue
            if weight_map is not None and weight_map.get(name) != fname:
                notes.append(f"{name} is in {fname} but the index says {weight_map.get(name)}")
            if name in tensors:
                notes.append(f"{name} is in both {where[name]} and {fname}; using {fname}")
            t = t.detach()
            if t.is_floating_point():
                t = t.to(wanted_dtype).to(torch.float32)
            tensors[name] = t
            where[name] = fname
        del sd
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in tensors:
                notes.append(f"{name} is in the index ({fname}) but in no shard")
    return tensors, notes


def detect_arch(config):
    if "position_encoding_2d" in config or "inner_hidden_size" in config:
        return V1
    if "multi_query_attention" in config or "padded_vocab_size" in config or "ffn_hidden_size" in config:
        return V2
    raise RefError("config.json is neither ChatGLM-6B (position_encoding_2d) nor ChatGLM2-6B (multi_query_attention)")


# --------------------------------------------------------------------------------------------
# Precision helpers
# --------------------------------------------------------------------------------------------

class Precision:
    """Float32 arithmetic that rounds to the emulated storage dtype where the published code
    would hold a half-precision tensor (identity for f32)."""

    def __init__(self, name):
        self.name = name
        self.dtype = TORCH_DTYPES[name]
        self.half = name != "f32"

    def r(self, x):
        return x.to(self.dtype).to(torch.float32) if self.half else x


def rel_error(a, b):
    """Per row: max|a-b| / max|b|; returns the max over rows (inf if anything is not finite)."""
    a = a.reshape(-1, a.shape[-1]).double()
    b = b.reshape(-1, b.shape[-1]).double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    num = (a - b).abs().amax(dim=1)
    den = b.abs().amax(dim=1).clamp_min(1e-30)
    return float((num / den).max())


# --------------------------------------------------------------------------------------------
# Sessions: the KV cache of one sequence
# --------------------------------------------------------------------------------------------

class Session:
    """ids so far, and per layer K/V of shape [kv_heads, prefix_len + len(ids), head_dim]
    (K after rotary; prefix entries first, as stored)."""

    def __init__(self, k, v, prefix_len):
        self.k, self.v = k, v
        self.prefix_len = prefix_len
        self.ids = []

    @property
    def length(self):
        return len(self.ids)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class ChatGLMRef:
    def __init__(self, model_dir, dtype="f32", rope="published", device="cpu", prefix=None, kv_int8=False, kv_int8_from="f32"):
        self.kv_int8 = kv_int8
        if kv_int8_from not in TORCH_DTYPES:
            raise RefError(f"--kv-int8-from must be one of {', '.join(sorted(TORCH_DTYPES))}, not {kv_int8_from}")
        self.kv_int8_from = TORCH_DTYPES[kv_int8_from]
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            self.config = json.load(f)
        if self.config.get("quantization_bit"):
            raise RefError("quantized checkpoints (quantization_bit) are not supported by the reference")
        self.arch = detect_arch(self.config)
        self.prec = Precision(dtype)
        if rope not in ("published", "exact"):
            raise RefError(f"--rope must be published or exact, not {rope}")
        self.rope = rope
        self.device = torch.device(device)
        tensors, self.load_notes = load_state_dict(model_dir, self.prec.dtype)
        self.w = {k: t.to(self.device) for k, t in tensors.items()}
        c = self.config
        self.L = int(c["num_layers"])
        self.H = int(c["hidden_size"])
        self.heads = int(c["num_attention_heads"])
        self.eps = float(c.get("layernorm_epsilon", 1e-5))
        if self.arch == V1:
            if c.get("position_encoding_2d", True) is not True:
                raise RefError("ChatGLM-6B with position_encoding_2d=false is not supported")
            self.D = self.H // self.heads
            self.kv_heads = self.heads
            self.F = int(c.get("inner_hidden_size", 4 * self.H))
            self.rot = self.D // 2  # each half of a head has its own rotary of this width
            self.gmask = int(c.get("gmask_token_id", 130001))
            self.mask_id = int(c.get("mask_token_id", 130000))
            self.sop = int(c.get("bos_token_id", 130004))
            self.vocab = self.need("lm_head.weight").shape[0]
            # Published get_layer() never passes num_layers to GLMBlock (default 28), so
            # alpha is sqrt(2 * 28) whatever the depth; the spec's sqrt(2 * num_layers) is not
            # what the published code computes (note 8).
            self.alpha = math.sqrt(2 * 28)
        else:
            if c.get("rmsnorm", True) is not True:
                raise RefError("ChatGLM2-6B with rmsnorm=false is not supported")
            self.D = int(c.get("kv_channels") or self.H // self.heads)
            mqa = c.get("multi_query_attention", False)
            self.kv_heads = int(c["multi_query_group_num"]) if mqa else self.heads
            if self.heads % self.kv_heads:
                raise RefError(f"{self.heads} heads do not split into {self.kv_heads} groups")
            self.F = int(c["ffn_hidden_size"])
            self.rot = self.D // 2  # rotary on the first D/2 dims of each head
            self.vocab = self.need("transformer.output_layer.weight").shape[0]
            self.post_ln = c.get("post_layer_norm", True)
            self.residual_post_ln = c.get("apply_residual_connection_post_layernorm", False)
            self.chatglm3 = re.search("chatglm3", str(c.get("_name_or_path") or ""), re.I) is not None
            ratio = c.get("rope_ratio")
            ratio = 1 if ratio is None else ratio
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
                raise RefError(f"config.json: rope_ratio must be a finite number > 0 (got {json.dumps(c.get('rope_ratio'))})")
            if ratio != 1 and not self.chatglm3:
                raise RefError(f"config.json: rope_ratio {ratio} without chatglm3 in _name_or_path (ChatGLM2-6B-32k's "
                               "position interpolation) is not supported (note 11)")
            # published: base = base * self.rope_ratio (base 10000), note 11
            self.rope_base = 10000 * ratio
        self.inv_freq = self._inv_freq()
        self.inv_freq_notes = self._check_stored_inv_freq()
        self.lora = {}
        self.prefix_k = self.prefix_v = None
        self.prefix_len = 0
        if prefix is not None:
            self.set_prefix(load_prefix_checkpoint(prefix))

    # -- weights -------------------------------------------------------------------------------

    def need(self, name):
        t = self.w.get(name)
        if t is None:
            raise RefError(f"tensor {name} is missing from the model (in no shard)")
        return t

    def opt(self, name):
        return self.w.get(name)

    # -- rotary tables -------------------------------------------------------------------------

    def _inv_freq(self):
        """v1: 1/10000^(arange(0,rot,2)/rot), fp16-rounded as published (see note 1).
        v2: theta for fp32 runs (f16 runs rebuild it with roundings, see `_rope_v2`)."""
        j = torch.arange(0, self.rot, 2, dtype=torch.float32)
        base = 10000 if self.arch == V1 else self.rope_base
        inv = 1.0 / (base ** (j / self.rot))
        if self.arch == V1 and self.rope == "published":
            inv = inv.half().float()
        return inv.to(self.device)

    def _check_stored_inv_freq(self):
        notes = []
        names = ([f"transformer.layers.{i}.attention.rotary_emb.inv_freq" for i in range(self.L)]
                 if self.arch == V1 else ["transformer.rotary_pos_emb.inv_freq"])
        # The buffers are stored in the checkpoint dtype (fp16): agree to fp16 precision.
        expect = 1.0 / (10000 ** (torch.arange(0, self.rot, 2, dtype=torch.float32) / self.rot))
        for n in names:
            t = self.w.get(n)
            if t is None:
                continue
            if t.shape != expect.shape:
                notes.append(f"{n} has shape {list(t.shape)}, expected {list(expect.shape)}; ignored")
                continue
            diff = float((t.cpu() - expect).abs().max())
            if diff > 1e-3 * float(expect.abs().max()):
                notes.append(f"{n} differs from 1/10000^(2j/{self.rot}) by {diff:.3g}; ignored (recomputed)")
        return notes

    def _rope_v1(self, pos):
        """cos, sin [S, rot] for integer positions (cat(freqs, freqs) layout, rotate_half)."""
        p = self.prec
        t = pos.to(self.device, torch.float32)
        if p.half and self.rope == "published":
            t = p.r(t)
            freqs = p.r(t[:, None] * self.inv_freq[None, :])
            emb = torch.cat((freqs, freqs), dim=-1)
            return p.r(emb.cos()), p.r(emb.sin())
        freqs = t[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def _rope_v2(self, pos):
        """cos, sin [S, rot/2] for the interleaved pairs (2j, 2j+1)."""
        p = self.prec
        t = pos.to(self.device, torch.float32)
        if p.half and self.rope == "published" and self.chatglm3:
            # ChatGLM3-6B's forward_impl: float32 throughout, the cos/sin cache rounded (note 11)
            ang = t[:, None] * self.inv_freq[None, :]
            return p.r(ang.cos()), p.r(ang.sin())
        if p.half and self.rope == "published":
            # published forward_impl in the model dtype: every op rounds (see note 4)
            j = p.r(torch.arange(0, self.rot, 2, dtype=torch.float32, device=self.device) / self.rot)
            theta = p.r(1.0 / p.r(self.rope_base ** j))
            ang = p.r(p.r(t)[:, None] * theta[None, :])
            return p.r(ang.cos()), p.r(ang.sin())
        ang = t[:, None] * self.inv_freq[None, :]
        return ang.cos(), ang.sin()

    # -- prompts, positions, masks ---------------------------------------------------------------

    def build_prompt(self, text_ids):
        text_ids = [int(i) for i in text_ids]
        if self.arch == V1:
            return text_ids + [self.gmask, self.sop]
        return [V2_GMASK, V2_SOP] + text_ids

    def v1_anchor(self, ids):
        """(mask_position, context_length) as the published v1 code finds them: the FIRST
        [gMASK] (else first [MASK]) and the FIRST <sop>."""
        if self.sop not in ids:
            raise RefError("a ChatGLM-6B sequence must contain <sop> (bos_token_id)")
        ctx = ids.index(self.sop)
        mask_tok = self.gmask if self.gmask in ids else self.mask_id
        if mask_tok not in ids:
            raise RefError("a ChatGLM-6B sequence must contain [gMASK] or [MASK]")
        return ids.index(mask_tok), ctx

    def layout(self, ids):
        """Positions (v1: (pos, block); v2: (pos, None)) and the visibility matrix
        allowed[s, t] (True = row s attends to column t) of a whole sequence without cache."""
        S = len(ids)
        causal = torch.ones(S, S, dtype=torch.bool).tril_()
        if self.arch == V1:
            mpos, ctx = self.v1_anchor(ids)
            pos = torch.tensor([i if i < ctx else mpos for i in range(S)], dtype=torch.long)
            block = torch.tensor([0 if i < ctx else i - ctx + 1 for i in range(S)], dtype=torch.long)
            allowed = causal.clone()
            allowed[:, :ctx] = True
            return (pos, block), allowed
        return (torch.arange(S, dtype=torch.long), None), causal

    def decode_positions(self, ids_before, token_index):
        """Position (and block) of the token fed at index `token_index`, as the published
        generation loop computes it from the sequence so far (not from `layout`)."""
        if self.arch == V1:
            mpos, ctx = self.v1_anchor(ids_before)
            # published prepare_inputs_for_generation: [mask_position, seq_length - context_length]
            return mpos, (token_index + 1) - ctx
        return token_index, None

    # -- the forward pass ------------------------------------------------------------------------

    def new_session(self):
        if self.prefix_k is not None:
            k = [self._kv_round(t.clone()) for t in self.prefix_k]
            v = [self._kv_round(t.clone()) for t in self.prefix_v]
        else:
            empty = torch.zeros(self.kv_heads, 0, self.D, device=self.device)
            k = [empty for _ in range(self.L)]
            v = [empty for _ in range(self.L)]
        return Session(k, v, self.prefix_len)

    def forward_tokens(self, session, ids, pos, block, allowed):
        """Run `ids` (new tokens) against the session's cache and append their K/V.
        pos/block: LongTensor [S]; allowed: bool [S, len(cached tokens) + S] over the
        session's tokens (the prefix columns are always visible). Returns logits [S, V]."""
        S = len(ids)
        T_prev = session.length
        if allowed.shape != (S, T_prev + S):
            raise ValueError(f"allowed is {tuple(allowed.shape)}, expected {(S, T_prev + S)}")
        allowed = torch.cat([torch.ones(S, session.prefix_len, dtype=torch.bool), allowed], dim=1)
        allowed = allowed.to(self.device)
        ids_t = torch.tensor(ids, dtype=torch.long, device=self.device)
        if self.arch == V1:
            x = F.embedding(ids_t, self.need("transformer.word_embeddings.weight"))
            rope = (self._rope_v1(pos), self._rope_v1(block))
            for i in range(self.L):
                x = self._v1_layer(i, x, rope, allowed, session)
            x = self._layernorm(x, "transformer.final_layernorm")
            logits = self.prec.r(x @ self.need("lm_head.weight").t())
        else:
            x = F.embedding(ids_t, self.need("transformer.embedding.word_embeddings.weight"))
            rope = self._rope_v2(pos)
            for i in range(self.L):
                x = self._v2_layer(i, x, rope, allowed, session)
            if self.post_ln:
                x = self._rmsnorm(x, "transformer.encoder.final_layernorm.weight")
            logits = self.prec.r(x @ self.need("transformer.output_layer.weight").t())
        session.ids.extend(int(i) for i in ids)
        return logits

    def _linear(self, x, name, bias=True):
        y = x @ self.need(name + ".weight").t()
        lora = self.lora.get(name)
        if lora is not None:
            # LoRA applied at run time, unmerged, as PEFT's forward does: y += scale * B(A(x)).
            a, b_, scale = lora
            y = y + ((x @ a.t()) @ b_.t()) * scale
        b = self.opt(name + ".bias") if bias else None
        if b is not None:
            y = y + b
        return self.prec.r(y)

    def set_lora(self, adapter_dir):
        """Load a PEFT LoRA adapter (adapter_config.json + adapter_model.bin) to apply at run time."""
        with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        r = int(cfg["r"])
        scale = float(cfg["lora_alpha"]) / (math.sqrt(r) if cfg.get("use_rslora") else r)
        sd = _torch_load(os.path.join(adapter_dir, "adapter_model.bin"))
        pairs = {}
        for k, t in sd.items():
            m = re.match(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", k)
            if not m:
                raise RefError(f"unexpected LoRA tensor {k}")
            pairs.setdefault(m.group(1), {})[m.group(2)] = t.float().to(self.device)
        for module, ab in pairs.items():
            a, b_ = ab["A"], ab["B"]
            if cfg.get("fan_in_fan_out"):
                a, b_ = b_.t(), a.t()
            self.need(module + ".weight")
            self.lora[module] = (a, b_, scale)

    def _layernorm(self, x, name):
        return self.prec.r(F.layer_norm(x, (x.shape[-1],), self.need(name + ".weight"),
                                        self.need(name + ".bias"), self.eps))

    def _rmsnorm(self, x, weight_name):
        var = x.pow(2).mean(-1, keepdim=True)  # x is float32 already
        return self.prec.r(self.need(weight_name) * (x * torch.rsqrt(var + self.eps)))

    @staticmethod
    def _rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    def _kv_round(self, t):
        """--kv-int8: each row of D values (one KV head, one token) as glmtool's INT8 KV cache
        stores it (native/kv_int8.cuh): q = round(x * 127 / max|x|) (half to even), x = q * max|x| / 127.
        The engine quantizes rows it holds in the model's dtype (the QKV buffer after rotary), so with
        --kv-int8-from f16|bf16 the row is rounded to that dtype first: a float32 row and its fp16
        copy can round to different integers, which a sharpened model amplifies."""
        if not self.kv_int8:
            return t
        if self.kv_int8_from != torch.float32:
            t = t.to(self.kv_int8_from).to(t.dtype)
        m = t.abs().amax(dim=-1, keepdim=True)
        inv = torch.where(m > 0, 127.0 / m, torch.zeros_like(m))
        return torch.clamp(torch.round(t * inv), -127, 127) * (m / 127.0)

    def _append_kv(self, session, i, k, v):
        k, v = self._kv_round(k), self._kv_round(v)
        session.k[i] = torch.cat((session.k[i], k), dim=1)
        session.v[i] = torch.cat((session.v[i], v), dim=1)
        return session.k[i], session.v[i]

    def _v1_layer(self, i, x, rope, allowed, session):
        p = self.prec
        S = x.shape[0]
        pre = f"transformer.layers.{i}."
        ln = self._layernorm(x, pre + "input_layernorm")
        qkv = self._linear(ln, pre + "attention.query_key_value")
        qkv = qkv.view(S, self.heads, 3 * self.D).transpose(0, 1)  # [heads, S, 3D], per head q|k|v
        q, k, v = qkv[..., :self.D], qkv[..., self.D:2 * self.D], qkv[..., 2 * self.D:]
        (cp, sp), (cb, sb) = rope

        def rot2d(t):
            t1, t2 = t[..., :self.rot], t[..., self.rot:]
            t1 = p.r(t1 * cp + self._rotate_half(t1) * sp)  # by position id
            t2 = p.r(t2 * cb + self._rotate_half(t2) * sb)  # by block position id
            return torch.cat((t1, t2), dim=-1)

        q, k = rot2d(q), rot2d(k)
        k_all, v_all = self._append_kv(session, i, k, v)
        # Published: q / (sqrt(D) * (layer_id+1)), scores masked with -10000, then * (layer_id+1)
        # in fp32 before softmax: numerically softmax(q.k / sqrt(D)).
        coeff = float(i + 1)
        qs = p.r(q / (math.sqrt(self.D) * coeff))
        scores = p.r(torch.matmul(qs, k_all.transpose(1, 2)))  # [heads, S, T]; no baddbmm (NaN trap)
        scores = scores.masked_fill(~allowed, -10000.0) * coeff
        probs = p.r(torch.softmax(scores, dim=-1))
        ctx = p.r(torch.matmul(probs, v_all))  # [heads, S, D]
        ctx = ctx.transpose(0, 1).reshape(S, self.heads * self.D)
        a = self._linear(ctx, pre + "attention.dense")
        h = p.r(p.r(ln * self.alpha) + a)  # DeepNorm: residual from the NORMED input
        ln2 = self._layernorm(h, pre + "post_attention_layernorm")
        m = self._linear(ln2, pre + "mlp.dense_h_to_4h")
        m = p.r(0.5 * m * (1.0 + torch.tanh(0.7978845608028654 * m * (1.0 + 0.044715 * m * m))))
        m = self._linear(m, pre + "mlp.dense_4h_to_h")
        return p.r(p.r(ln2 * self.alpha) + m)

    def _v2_layer(self, i, x, rope, allowed, session):
        p = self.prec
        S = x.shape[0]
        pre = f"transformer.encoder.layers.{i}."
        ln = self._rmsnorm(x, pre + "input_layernorm.weight")
        qkv = self._linear(ln, pre + "self_attention.query_key_value")
        nq, nkv = self.heads * self.D, self.kv_heads * self.D
        q = qkv[:, :nq].view(S, self.heads, self.D).transpose(0, 1)
        k = qkv[:, nq:nq + nkv].view(S, self.kv_heads, self.D).transpose(0, 1)
        v = qkv[:, nq + nkv:nq + 2 * nkv].view(S, self.kv_heads, self.D).transpose(0, 1)
        cos, sin = rope  # [S, rot/2]

        def rot_pairs(t):
            r, rest = t[..., :self.rot], t[..., self.rot:]
            pairs = r.reshape(*r.shape[:-1], self.rot // 2, 2)
            x0, x1 = pairs[..., 0], pairs[..., 1]
            out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
            return torch.cat((p.r(out), rest), dim=-1)

        q, k = rot_pairs(q), rot_pairs(k)
        k_all, v_all = self._append_kv(session, i, k, v)
        rep = self.heads // self.kv_heads  # query head h uses group h // rep
        k_all = k_all.repeat_interleave(rep, dim=0)
        v_all = v_all.repeat_interleave(rep, dim=0)
        scores = torch.matmul(q, k_all.transpose(1, 2)) / math.sqrt(self.D)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = p.r(torch.softmax(scores, dim=-1))
        ctx = p.r(torch.matmul(probs, v_all)).transpose(0, 1).reshape(S, nq)
        a = self._linear(ctx, pre + "self_attention.dense")
        h = p.r((ln if self.residual_post_ln else x) + a)
        ln2 = self._rmsnorm(h, pre + "post_attention_layernorm.weight")
        y = self._linear(ln2, pre + "mlp.dense_h_to_4h")
        act = p.r(p.r(F.silu(y[:, :self.F])) * y[:, self.F:])
        m = self._linear(act, pre + "mlp.dense_4h_to_h")
        return p.r((ln2 if self.residual_post_ln else h) + m)

    # -- public entry points ---------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, ids):
        """The prompt in one pass. Returns (logits [S, V], session)."""
        session = self.new_session()
        (pos, block), allowed = self.layout(list(ids))
        return self.forward_tokens(session, list(ids), pos, block, allowed), session

    @torch.no_grad()
    def decode(self, session, token):
        """One token against the cache. Returns logits [V]."""
        idx = session.length
        position, blk = self.decode_positions(session.ids + [int(token)], idx)
        pos = torch.tensor([position], dtype=torch.long)
        block = torch.tensor([blk], dtype=torch.long) if blk is not None else None
        allowed = torch.ones(1, idx + 1, dtype=torch.bool)
        return self.forward_tokens(session, [int(token)], pos, block, allowed)[0]

    @torch.no_grad()
    def full_forward(self, ids):
        """The whole sequence (prompt + generated tokens) recomputed without a cache, with the
        positions and mask the published code builds for it. Returns logits [S, V]."""
        return self.prefill(ids)[0]

    @torch.no_grad()
    def generate(self, ids, steps):
        """Prefill then `steps` greedy decode steps. Returns (rows, generated, positions):
        rows = [prompt logits [S, V], decode row 1, ...]; positions of every fed token."""
        logits, session = self.prefill(ids)
        (pos, block), _ = self.layout(list(ids))
        positions = [pos.tolist()] + ([block.tolist()] if block is not None else [])
        rows = []
        generated = [int(torch.argmax(logits[-1]))]
        for _ in range(steps):
            tok = generated[-1]
            position, blk = self.decode_positions(session.ids + [tok], session.length)
            positions[0].append(position)
            if blk is not None:
                positions[1].append(blk)
            row = self.decode(session, tok)
            rows.append(row)
            generated.append(int(torch.argmax(row)))
        return logits, rows, generated, positions

    @torch.no_grad()
    def self_check(self, ids, steps=4):
        """Cache-decode logits vs full recompute, every row. Returns a summary dict."""
        logits, rows, generated, _ = self.generate(ids, steps)
        fed = list(ids) + generated[:steps]
        full = self.full_forward(fed)
        S = len(ids)
        prefill_err = rel_error(logits, full[:S])
        decode_err = rel_error(torch.stack(rows), full[S:]) if rows else 0.0
        abs_err = float((torch.cat([logits] + [r[None] for r in rows]) - full).abs().max())
        return {"prompt_len": S, "steps": steps, "max_rel_prefill": prefill_err,
                "max_rel_decode": decode_err, "max_rel": max(prefill_err, decode_err),
                "max_abs": abs_err, "argmax_equal": bool(
                    torch.equal(full[S - 1:].argmax(-1).cpu(), torch.tensor(generated[:steps + 1])))}

    # -- P-Tuning v2 ---------------------------------------------------------------------------

    def set_prefix(self, prefix):
        """prefix: dict with 'embedding' [P, w], optional 'trans0_w/b', 'trans2_w/b', and
        'config' (the checkpoint's config.json, or None): note 10 decides whether it projects."""
        cfg = prefix.get("config")
        if cfg is None:
            projects = "trans0_w" in prefix
        elif self.arch == V2 and "chatglm3" not in str(cfg.get("_name_or_path", "")).lower():
            projects = bool((cfg.get("prefix_projection", False),))  # the published tuple: always
        else:
            projects = bool(cfg.get("prefix_projection", False))
        if projects and "trans0_w" not in prefix:
            raise RefError("prefix checkpoint has no prefix_encoder.trans.*, which the published "
                           + ("ChatGLM2-6B model always builds (its config's prefix_projection tuple)"
                              if self.arch == V2 else "model builds with prefix_projection true"))
        emb = prefix["embedding"].float().to(self.device)
        if projects:
            h = torch.tanh(emb @ prefix["trans0_w"].float().to(self.device).t()
                           + prefix["trans0_b"].float().to(self.device))
            out = h @ prefix["trans2_w"].float().to(self.device).t() + prefix["trans2_b"].float().to(self.device)
        else:
            out = emb
        P = out.shape[0]
        width = self.L * 2 * self.kv_heads * self.D
        if out.shape[1] != width:
            raise RefError(f"prefix width {out.shape[1]} != num_layers*2*kv_heads*head_dim = {width} "
                           f"({self.L}*2*{self.kv_heads}*{self.D})")
        out = self.prec.r(out).view(P, self.L * 2, self.kv_heads, self.D)
        self.prefix_k = [out[:, 2 * i].transpose(0, 1).contiguous() for i in range(self.L)]
        self.prefix_v = [out[:, 2 * i + 1].transpose(0, 1).contiguous() for i in range(self.L)]
        self.prefix_len = P

    def set_prefix_kv(self, ks, vs):
        """Prefix K/V per layer directly ([kv_heads, P, D] each), e.g. for tests."""
        self.prefix_k = [self.prec.r(k.float().to(self.device)) for k in ks]
        self.prefix_v = [self.prec.r(v.float().to(self.device)) for v in vs]
        self.prefix_len = ks[0].shape[1]


def load_prefix_checkpoint(path):
    """A P-Tuning v2 trainer checkpoint (pytorch_model.bin or its directory) -> prefix dict."""
    if os.path.isdir(path):
        path = os.path.join(path, "pytorch_model.bin")
    sd = _torch_load(path)
    if not isinstance(sd, dict):
        raise RefError(f"{path}: not a state dict")

    def find(suffix):
        for name, t in sd.items():
            if name == suffix or name.endswith("." + suffix):
                return t
        return None

    emb = find("prefix_encoder.embedding.weight")
    if emb is None:
        raise RefError(f"{path}: no transformer.prefix_encoder.embedding.weight")
    out = {"embedding": emb}
    parts = {k: find(f"prefix_encoder.trans.{k[5]}.{'weight' if k.endswith('w') else 'bias'}")
             for k in ("trans0_w", "trans0_b", "trans2_w", "trans2_b")}
    present = [k for k, t in parts.items() if t is not None]
    if present and len(present) != 4:
        raise RefError(f"{path}: prefix_encoder.trans is incomplete (has {present})")
    if present:
        out.update(parts)
    cfg_path = os.path.join(os.path.dirname(path), "config.json")
    out["config"] = None
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            out["config"] = json.load(f)
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def parse_ids(s):
    s = s.strip()
    if not s:
        return []
    try:
        return [int(x) for x in s.split(",") if x.strip() != ""]
    except ValueError as e:
        raise RefError(f"--ids must be comma-separated integers: {e}") from e


def main(argv=None):
    ap = argparse.ArgumentParser(description="ChatGLM v1/v2 PyTorch reference (see the module docstring)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated TEXT token ids (specials are added)")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--all-logits", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--prefix")
    ap.add_argument("--lora", help="PEFT LoRA adapter directory, applied at run time (not merged)")
    ap.add_argument("--self-check", action="store_true")
    ap.add_argument("--self-check-tol", type=float)
    ap.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="f32")
    ap.add_argument("--rope", choices=["published", "exact"], default="published")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kv-int8", action="store_true", help="keys and values rounded as glmtool's INT8 KV cache stores them")
    ap.add_argument("--kv-int8-from", choices=sorted(TORCH_DTYPES), default="f32",
                    help="with --kv-int8: the dtype the engine holds a row in before it rounds it (f16 for an fp16 model)")
    args = ap.parse_args(argv)
    try:
        if args.steps < 0:
            raise RefError("--steps must be >= 0")
        if not args.out and not args.self_check:
            raise RefError("give --out DIR and/or --self-check")
        model = ChatGLMRef(args.model, dtype=args.dtype, rope=args.rope, device=args.device, prefix=args.prefix, kv_int8=args.kv_int8, kv_int8_from=args.kv_int8_from)
        if args.lora:
            model.set_lora(args.lora)
        for n in model.load_notes + model.inv_freq_notes:
            print(f"note: {n}", file=sys.stderr)
        text = parse_ids(args.ids)
        bad = [i for i in text if not 0 <= i < model.vocab]
        if bad:
            raise RefError(f"--ids {bad[:5]} outside the vocabulary (0..{model.vocab - 1})")
        ids = model.build_prompt(text)
        check = None
        if args.self_check:
            tol = args.self_check_tol if args.self_check_tol is not None else (1e-5 if args.dtype == "f32" else 5e-2)
            check = model.self_check(ids, steps=max(args.steps, 4))
            check["tol"] = tol
            check["ok"] = check["max_rel"] <= tol
        summary = {"arch": model.arch, "prompt_len": len(ids), "self_check": check}
        if args.out:
            logits, rows, generated, positions = model.generate(ids, args.steps)
            head = logits if args.all_logits else logits[-1:]
            out = torch.cat([head] + [r[None] for r in rows]).float().cpu().contiguous()
            os.makedirs(args.out, exist_ok=True)
            meta = {
                "arch": model.arch, "input_ids": ids,
                "positions": positions if model.arch == V1 else positions[0],
                "generated": generated, "rows": out.shape[0], "vocab": out.shape[1],
                "prompt_len": len(ids), "steps": args.steps, "all_logits": bool(args.all_logits),
                "dtype": args.dtype, "rope": args.rope, "prefix_len": model.prefix_len,
                "self_check": check,
            }
            out.numpy().astype("<f4").tofile(os.path.join(args.out, "logits.f32"))
            with open(os.path.join(args.out, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f)
                f.write("\n")
            summary.update({"out": args.out, "rows": meta["rows"], "vocab": meta["vocab"], "generated": generated})
        print(json.dumps(summary))
        if check is not None and not check["ok"]:
            print(f"self-check FAILED: max relative error {check['max_rel']:.3g} > {check['tol']:.3g}", file=sys.stderr)
            return 1
        return 0
    except RefError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
