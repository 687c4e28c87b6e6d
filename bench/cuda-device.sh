#!/usr/bin/env bash
# Issue 6 on the GPU machine, in one device call (results recorded in bench/RESULTS.md):
#   probe -> decode-kernel micro-benchmark (build/native/stepbench, when built) -> CUDA parity
#   (test/cuda/parity.mjs: tiny/small synth models of both generations vs the PyTorch reference on
#   the GPU and the CPU runtime) -> full-size synth + convert of both generations (in the
#   background, during parity) -> `glmtool bench` of both side by side -> the PyTorch eager fp16
#   baseline (bench/peers/torch_baseline.py) of each -> the full-size reference check -> A/B
#   benches of decode-kernel switches (AB) -> parity under other switches (PARITY_ALT).
#
# Prepare here (the GPU machine has no Node, no registry, no nvcc-built addon of ours):
#   npm run build && npm run build:native
#   nvcc -std=c++17 -O3 -arch=sm_90 -o build/native/stepbench native/stepbench.cu
#   bash ../shared/device/pack.sh      # .device/: Node + node_modules (then, to fit 64 MiB,
#   # replace .device/modules.tar.xz with the production modules only: see bench/RESULTS.md)
# and run, with carry [".device", "dist", "build/native"]:
#   BUDGET=540 bash bench/cuda-device.sh        (PEERS=0: no PyTorch baseline / full-size check)
# Everything lands in $OUT (at most 8 files come back): steps.log, stepbench.log, parity.log,
# parity.json, bench.json, torch-v1.json, torch-v2.json, parity-alt<i>.log (the full-size
# reference check and the A/B benches: in steps.log).
set -u
source bench/device-env.sh
{
  ldconfig -p | grep -i 'cublas' || echo 'no cuBLAS on the linker path'
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  df -h /tmp | tail -1
  nproc
} >> "$LOG" 2>&1
el "probe: $(node -e "console.log(JSON.stringify(require('./build/native/glmtool_cuda.node').probe()))" 2>&1)"

# Full-size models, one after the other, in the background (synth is one CPU core; about 1 min each).
M=${MODELS:-/tmp/glm}
mkdir -p "$M"
(
  for a in chatglm-6b chatglm2-6b; do
    t0=$(date +%s)
    node bin/run.js synth --arch $a --size full --out "$M/$a-torch" > /dev/null 2>&1 &&
      node bin/run.js convert "$M/$a-torch" --to safetensors --out "$M/$a" > /dev/null 2>&1 &&
      echo "[bg] $a synth + convert: $(($(date +%s) - t0)) s, $(du -sh "$M/$a" | cut -f1)" >> "$LOG"
    # the torch copy of ChatGLM2-6B stays for the full-size reference check (disk: 64 GB)
    [ "$a" = chatglm-6b ] && rm -rf "$M/$a-torch"
  done
) &
SYNTH=$!

if [ -x build/native/stepbench ]; then
  el "stepbench ..."
  timeout 90 build/native/stepbench > "$OUT/stepbench.log" 2>&1
  el "stepbench rc=$?"
fi
el "parity ..."
timeout "${PARITY_TIMEOUT:-240}" node test/cuda/parity.mjs --json "$OUT/parity.json" > "$OUT/parity.log" 2>&1
el "parity rc=$?"
grep -E '^(ok|FAIL|cuda parity|reference)' "$OUT/parity.log" | cut -c1-400 | tee -a "$LOG"

wait $SYNTH
el "models: $(ls "$M")"
if [ "$(left)" -gt 60 ]; then
  el "bench ..."
  timeout $(($(left) - 20)) node bin/run.js bench "$M/chatglm-6b" "$M/chatglm2-6b" --backend cuda --prompt-tokens 512 --gen-tokens 128 \
    --repeat 5 --max-length 2048 --out "$OUT/bench.json" >> "$LOG" 2>&1
  el "bench rc=$?"
fi
# PEERS=0 skips the PyTorch baseline and the full-size reference check (A/B-only calls).
for a in chatglm2-6b chatglm-6b; do
  if [ "${PEERS:-1}" = 1 ] && [ "$(left)" -gt 45 ] && [ -d "$M/$a" ]; then
    el "torch baseline $a ..."
    timeout $(($(left) - 10)) python3 bench/peers/torch_baseline.py "$M/$a" --prompt-tokens 512 --gen-tokens 128 --repeat 3 \
      --json "$OUT/torch-${a/chatglm-6b/v1}.json" >> "$LOG" 2>&1
    el "torch $a rc=$?"
  fi
done
[ -f "$OUT/torch-chatglm2-6b.json" ] && mv "$OUT/torch-chatglm2-6b.json" "$OUT/torch-v2.json"
# Full size against the float32 reference (ChatGLM2-6B; the reference reads torch shards).
if [ "${PEERS:-1}" = 1 ] && [ "$(left)" -gt 70 ] && [ -d "$M/chatglm2-6b-torch" ]; then
  el "full-size reference check chatglm2-6b ..."
  timeout $(($(left) - 10)) node test/cuda/fullsize-check.mjs --torch "$M/chatglm2-6b-torch" --st "$M/chatglm2-6b" --steps 8 \
    --bench "$OUT/bench.json" --baseline "$OUT/torch-v2.json" >> "$LOG" 2>&1
  el "full-size check rc=$?"
fi
# A/B of the decode-step switches on the same lease (3 repeats each). Run 6 (H200, second call):
# the attention per query head (GLMTOOL_CUDA_ATTN=head), the norm kernels for ChatGLM2-6B
# (GLMTOOL_CUDA_NORM=kernel), the fused norms for ChatGLM-6B (=fused), 2 heads per attention
# block, 32-key tiles; this call: GEMV shapes per call site (GLMTOOL_CUDA_GEMV). AB names the set
# (space-separated; `+` joins two switches); PARITY_ALT the switches of a second parity run.
AB=${AB:-"GLMTOOL_CUDA_GEMV=dense:1,down:1 GLMTOOL_CUDA_GEMV=up:2,lm:2 GLMTOOL_CUDA_GEMV=qkv:1,dense:1,up:2,down:1,lm:2 GLMTOOL_CUDA_GEMV=dense:1,up:2,down:1,lm:2 default"}
[ "$AB" = - ] && AB=""  # - : none
for sw in $AB; do
  if [ "$(left)" -gt 40 ]; then
    el "bench $sw ..."
    [ "$sw" = default ] && vars=() || IFS=+ read -r -a vars <<< "$sw"
    env "${vars[@]}" timeout $(($(left) - 10)) node bin/run.js bench "$M/chatglm-6b" "$M/chatglm2-6b" --backend cuda --prompt-tokens 512 \
      --gen-tokens 128 --repeat 3 --max-length 2048 > "$OUT/ab.log" 2>&1
    el "bench $sw rc=$? $(grep -E 'decode tok/s|time to first' "$OUT/ab.log" | tr -s ' ' | tr '\n' ' ')"
    rm -f "$OUT/ab.log"
  fi
done
# Parity of other decode paths, as time allows (PARITY_ALT: `;` between runs, `+` between switches).
PARITY_ALT=${PARITY_ALT:-"GLMTOOL_CUDA_ATTN=head+GLMTOOL_CUDA_NORM=fused"}
[ "$PARITY_ALT" = - ] && PARITY_ALT=""  # - : none
IFS=';' read -r -a alts <<< "$PARITY_ALT"
i=0
for alt in "${alts[@]}"; do
  i=$((i + 1))
  if [ "$(left)" -gt 60 ]; then
    el "parity $alt ..."
    IFS=+ read -r -a vars <<< "$alt"
    env "${vars[@]}" timeout $(($(left) - 10)) node test/cuda/parity.mjs > "$OUT/parity-alt$i.log" 2>&1
    el "parity ($alt) rc=$?"
    grep -E '^(ok|FAIL|cuda parity)' "$OUT/parity-alt$i.log" | cut -c1-200 | tee -a "$LOG"
  fi
done
# Parity failed and time is left: look for bad memory accesses on the tiny models.
if grep -q '^FAIL' "$OUT/parity.log" && [ "$(left)" -gt 50 ] && command -v compute-sanitizer > /dev/null; then
  el "compute-sanitizer memcheck on the tiny models ..."
  GLMTOOL_REFERENCE_DEVICE=cpu timeout $(($(left) - 5)) compute-sanitizer --tool memcheck --print-limit 10 \
    node test/cuda/parity.mjs --only chatglm-6b-tiny,chatglm2-6b-tiny 2>&1 | grep -v '^mock' | tail -40 | cut -c1-300 >> "$LOG"
fi
el "done"
echo "== stepbench =="; cat "$OUT/stepbench.log" 2>/dev/null
echo "== bench table =="; sed -n '/┌/,/┘/p' "$LOG" | cut -c1-250; grep '^roofline' "$LOG" | cut -c1-300
echo "== parity =="; grep -E '^(ok|FAIL|cuda parity)' "$OUT/parity.log" | cut -c1-330
echo "== torch =="; grep -h '"architecture"' "$LOG" | cut -c1-400
echo "== full size =="; grep -h '"referenceTokens"' "$LOG" | cut -c1-900
