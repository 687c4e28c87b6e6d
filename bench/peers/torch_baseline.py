#!/usr/bin/env python3
"""PyTorch eager float16 baseline for `glmtool bench` (issue 6).

ChatGLM-6B ("v1") and ChatGLM2-6B ("v2") written from docs/chatglm.md the way the
published modeling code runs them, i.e. what a user of the reference code gets: float16 weights
on the GPU (embedding included), eager PyTorch ops, a KV cache grown with torch.cat every step,
v1's manual attention (scores masked with -10000, softmax in float32) and full-prompt logits,
v2's scaled_dot_product_attention with the multi-query keys expanded to every head and
last-token logits, greedy decoding with one host sync per token (the generation loop's stop
check). No transformers import; plain torch over a dict of tensors.

It reads glmtool's safetensors output (model.safetensors[.index.json]) or a torch directory, and
builds the same prompt as `glmtool bench` (src/pipelines/bench.ts benchPrompt: pseudo-random text
ids 1000..59999 from the same LCG, plus [gMASK] <sop>), so the greedy tokens of both can be
compared.

  torch_baseline.py MODEL [--prompt-tokens 512] [--gen-tokens 128] [--repeat 5] [--warmup 1] [--json FILE]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def load_weights(model_dir, device, dtype):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    w = {}
    if os.path.exists(index) or os.path.exists(single):
        from safetensors import safe_open
        files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
        for f in files:
            with safe_open(os.path.join(model_dir, f), framework="pt", device=device) as st:
                for k in st.keys():
                    w[k] = st.get_tensor(k)
    else:
        idx = os.path.join(model_dir, "pytorch_model.bin.index.json")
        files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["pytorch_model.bin"]
        for f in files:
            for k, t in torch.load(os.path.join(model_dir, f), map_location="cpu", weights_only=True).items():
                w[k] = t.to(device)
    return {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in w.items()}


def sdpa(q, k, v, is_causal):
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2, as the published code uses it
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # older torch (CPU check)
    if is_causal:
        S = q.shape[-2]
        scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


def bench_prompt(n, arch):
    seed, lo, hi = 12345, 1000, 60000
    text = []
    for _ in range(n - 2):
        seed = (seed * 1103515245 + 12345) % 2 ** 31
        text.append(lo + seed % (hi - lo))
    return text + [130001, 130004] if arch == 1 else [64790, 64792] + text


class V1:
    """ChatGLM-6B, docs/chatglm.md section 3."""

    def __init__(self, w, c, device, dt):
        self.w, self.L, self.H, self.dt = w, c["num_layers"], c["hidden_size"], dt
        self.heads = c["num_attention_heads"]
        self.D = self.H // self.heads
        self.eps = c.get("layernorm_epsilon", 1e-5)
        self.alpha = math.sqrt(2 * 28)  # published get_layer() never passes num_layers: 28 at every depth
        rot = self.D // 2
        inv = (1.0 / (10000 ** (torch.arange(0, rot, 2, device=device).float() / rot))).half()
        t = torch.arange(c.get("max_sequence_length", 2048), device=device, dtype=torch.half if dt == torch.half else torch.float)
        freqs = torch.einsum("i,j->ij", t, inv.to(t.dtype))
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(dt), emb.sin().to(dt)  # [P, rot] (published: an fp16 cache)

    def rot(self, x, cos, sin):
        h = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin

    def forward(self, ids, pos, block, past, mask, all_logits):
        w, S, D = self.w, ids.shape[0], self.D
        x = F.embedding(ids, w["transformer.word_embeddings.weight"])
        cp, sp = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        cb, sb = self.cos[block][:, None, :], self.sin[block][:, None, :]
        new_past = []
        for i in range(self.L):
            p = f"transformer.layers.{i}."
            ln = F.layer_norm(x, (self.H,), w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], self.eps)
            qkv = F.linear(ln, w[p + "attention.query_key_value.weight"], w[p + "attention.query_key_value.bias"])
            q, k, v = qkv.view(S, self.heads, 3 * D).split(D, dim=-1)
            q = torch.cat((self.rot(q[..., :D // 2], cp, sp), self.rot(q[..., D // 2:], cb, sb)), dim=-1)
            k = torch.cat((self.rot(k[..., :D // 2], cp, sp), self.rot(k[..., D // 2:], cb, sb)), dim=-1)
            if past is not None:
                k = torch.cat((past[i][0], k), dim=0)
                v = torch.cat((past[i][1], v), dim=0)
            new_past.append((k, v))
            coeff = float(i + 1)
            scores = torch.matmul((q / (math.sqrt(D) * coeff)).permute(1, 0, 2), k.permute(1, 2, 0))
            if mask is not None:
                scores = scores.masked_fill(mask, -10000.0)
            probs = torch.softmax(scores.float() * coeff, dim=-1).to(self.dt)
            ctx = torch.matmul(probs, v.permute(1, 0, 2)).permute(1, 0, 2).reshape(S, self.H)
            h = ln * self.alpha + F.linear(ctx, w[p + "attention.dense.weight"], w[p + "attention.dense.bias"])
            ln2 = F.layer_norm(h, (self.H,), w[p + "post_attention_layernorm.weight"], w[p + "post_attention_layernorm.bias"], self.eps)
            m = F.linear(ln2, w[p + "mlp.dense_h_to_4h.weight"], w[p + "mlp.dense_h_to_4h.bias"])
            m = 0.5 * m * (1.0 + torch.tanh(0.7978845608028654 * m * (1.0 + 0.044715 * m * m)))
            x = ln2 * self.alpha + F.linear(m, w[p + "mlp.dense_4h_to_h.weight"], w[p + "mlp.dense_4h_to_h.bias"])
        x = F.layer_norm(x, (self.H,), w["transformer.final_layernorm.weight"], w["transformer.final_layernorm.bias"], self.eps)
        logits = F.linear(x if all_logits else x[-1:], w["lm_head.weight"])  # published: every prompt row
        return logits[-1], new_past

    def generate(self, prompt, steps, device):
        n = len(prompt) - 2  # text + [gMASK, <sop>]; [gMASK] at n, <sop> at n + 1
        ids = torch.tensor(prompt, device=device)
        pos = torch.tensor(list(range(n + 1)) + [n], device=device)
        block = torch.tensor([0] * (n + 1) + [1], device=device)
        S = len(prompt)
        r = torch.arange(S, device=device)
        mask = (r[None, :] > r[:, None]) & (r[None, :] >= n + 1)  # context bidirectional, then causal
        logits, past = self.forward(ids, pos, block, None, mask[None], True)
        tok = int(logits.argmax())
        t1 = time.perf_counter()
        out = [tok]
        for k in range(1, steps):
            logits, past = self.forward(torch.tensor([tok], device=device), torch.tensor([n], device=device),
                                        torch.tensor([1 + k], device=device), past, None, False)
            tok = int(logits.argmax())
            out.append(tok)
        return out, t1


class V2:
    """ChatGLM2-6B, docs/chatglm.md section 4."""

    def __init__(self, w, c, device, dt):
        self.w, self.L, self.H, self.dt = w, c["num_layers"], c["hidden_size"], dt
        self.heads = c["num_attention_heads"]
        self.D = c.get("kv_channels") or self.H // self.heads
        self.G = c["multi_query_group_num"] if c.get("multi_query_attention") else self.heads
        self.F = c["ffn_hidden_size"]
        self.eps = c.get("layernorm_epsilon", 1e-5)
        rot = self.D // 2
        ct = torch.half if dt == torch.half else torch.float  # published: the model dtype
        theta = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=ct, device=device) / rot))
        t = torch.arange(8192, dtype=ct, device=device)
        ang = torch.outer(t, theta).float()
        self.cache = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1).to(dt)  # [P, rot/2, 2] ("complex32")

    def rms(self, x, weight):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (weight * (x * torch.rsqrt(var + self.eps))).to(self.dt)

    def rope(self, x, pos):  # x [S, n, D]
        rot = self.D // 2
        xr, rest = x[..., :rot], x[..., rot:]
        c = self.cache[pos][:, None, :, :]  # [S, 1, rot/2, 2]
        xs = xr.reshape(*xr.shape[:-1], rot // 2, 2)
        out = torch.stack((xs[..., 0] * c[..., 0] - xs[..., 1] * c[..., 1], xs[..., 1] * c[..., 0] + xs[..., 0] * c[..., 1]), -1)
        return torch.cat((out.flatten(-2), rest), dim=-1)

    def forward(self, ids, pos, past):
        w, S, D, N, G = self.w, ids.shape[0], self.D, self.heads, self.G
        x = F.embedding(ids, w["transformer.embedding.word_embeddings.weight"])
        new_past = []
        for i in range(self.L):
            p = f"transformer.encoder.layers.{i}."
            ln = self.rms(x, w[p + "input_layernorm.weight"])
            qkv = F.linear(ln, w[p + "self_attention.query_key_value.weight"], w.get(p + "self_attention.query_key_value.bias"))
            q, k, v = qkv.split([N * D, G * D, G * D], dim=-1)
            q, k, v = self.rope(q.view(S, N, D), pos), self.rope(k.view(S, G, D), pos), v.view(S, G, D)
            if past is not None:
                k = torch.cat((past[i][0], k), dim=0)
                v = torch.cat((past[i][1], v), dim=0)
            new_past.append((k, v))
            T = k.shape[0]
            # published: expand the groups to every head (a contiguous copy), then SDPA
            ke = k[:, :, None, :].expand(T, G, N // G, D).contiguous().view(T, N, D)
            ve = v[:, :, None, :].expand(T, G, N // G, D).contiguous().view(T, N, D)
            qh, kh, vh = q.permute(1, 0, 2)[None], ke.permute(1, 0, 2)[None], ve.permute(1, 0, 2)[None]
            ctx = sdpa(qh, kh, vh, S == T and S > 1)
            ctx = ctx[0].permute(1, 0, 2).reshape(S, N * D)
            h = x + F.linear(ctx, w[p + "self_attention.dense.weight"])
            ln2 = self.rms(h, w[p + "post_attention_layernorm.weight"])
            y = F.linear(ln2, w[p + "mlp.dense_h_to_4h.weight"])
            a, b = y.chunk(2, dim=-1)
            x = h + F.linear(F.silu(a) * b, w[p + "mlp.dense_4h_to_h.weight"])
        x = self.rms(x[-1:], w["transformer.encoder.final_layernorm.weight"])  # published: return_last_logit
        return F.linear(x, w["transformer.output_layer.weight"])[-1], new_past

    def generate(self, prompt, steps, device):
        S = len(prompt)
        logits, past = self.forward(torch.tensor(prompt, device=device), torch.arange(S, device=device), None)
        tok = int(logits.argmax())
        t1 = time.perf_counter()
        out = [tok]
        for k in range(1, steps):
            logits, past = self.forward(torch.tensor([tok], device=device), torch.tensor([S - 1 + k], device=device), past)
            tok = int(logits.argmax())
            out.append(tok)
        return out, t1


def spread(xs, higher_is_faster):
    s = sorted(xs)

    def at(q):
        i = (len(s) - 1) * q
        lo = int(math.floor(i))
        hi = min(len(s) - 1, lo + 1)
        return s[lo] + (s[hi] - s[lo]) * (i - lo)
    return {"median": at(0.5), "p90": at(0.1 if higher_is_faster else 0.9)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16", help="f32: a check of the code on the CPU")
    a = ap.parse_args()
    device = a.device
    dt = torch.half if a.dtype == "f16" else torch.float
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    c = json.load(open(os.path.join(a.model, "config.json")))
    arch = 1 if "position_encoding_2d" in c or "inner_hidden_size" in c else 2
    t0 = time.perf_counter()
    w = load_weights(a.model, device, dt)
    model = (V1 if arch == 1 else V2)(w, c, device, dt)
    sync()
    load_s = time.perf_counter() - t0
    prompt = bench_prompt(a.prompt_tokens, arch)
    runs = []
    with torch.inference_mode():
        for r in range(a.warmup + a.repeat):
            sync()
            t0 = time.perf_counter()
            out, t1 = model.generate(prompt, a.gen_tokens, device)
            sync()
            t2 = time.perf_counter()
            if r >= a.warmup:
                runs.append({"ttftMs": (t1 - t0) * 1e3, "prefillTokensPerSecond": len(prompt) / (t1 - t0),
                             "decodeTokensPerSecond": (a.gen_tokens - 1) / (t2 - t1)})
    res = {
        "model": a.model, "architecture": "chatglm-6b" if arch == 1 else "chatglm2-6b", "backend": f"pytorch-eager-{a.dtype}",
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else device, "promptTokens": len(prompt),
        "genTokens": a.gen_tokens, "repeat": a.repeat, "loadSeconds": load_s,
        "ttftMs": spread([r["ttftMs"] for r in runs], False),
        "prefillTokensPerSecond": spread([r["prefillTokensPerSecond"] for r in runs], True),
        "decodeTokensPerSecond": spread([r["decodeTokensPerSecond"] for r in runs], True),
        "peakAllocatedBytes": torch.cuda.max_memory_allocated() if cuda else 0,
        "peakReservedBytes": torch.cuda.max_memory_reserved() if cuda else 0,
        "runs": runs, "generatedIds": out,
    }
    print(json.dumps({k: res[k] for k in ("model", "architecture", "device", "ttftMs", "prefillTokensPerSecond", "decodeTokensPerSecond", "peakAllocatedBytes")}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
