#!/usr/bin/env bash
# Issue 12 on the GPU machine, in one device call (results recorded in bench/RESULTS.md):
#   probe -> CUDA parity (test/cuda/parity.mjs: the FP16 cases as before plus the quantized ones
#   against the CPU runtime's MatMulNBits graph) -> full-size ChatGLM2-6B, then ChatGLM-6B: synth ->
#   safetensors fp16 -> `glmtool quantize --bits 8` and `--bits 4` (RTN, per channel, lm_head and
#   embeddings fp16: the published layout), in the background during parity -> `glmtool bench`
#   of FP16 / INT8 / INT4 side by side per generation (bench measures the copy rate itself, in the
#   same process, before the models).
#
# Prepare here: npm run build && npm run build:native; .device/ as bench/cuda-device.sh says;
# optionally nvcc -std=c++17 -O3 -arch=sm_90 -o build/native/stepbench native/stepbench.cu (STEPBENCH=0 skips it).
# Run with carry [".device", "dist", "build/native"]:  BUDGET=480 bash bench/cuda-quant-device.sh
# (BENCH=0 skips the per-generation benches; a second call on the same warm machine reuses the models.)
# Everything lands in $OUT (the JSON files packed into results.tar.gz at the end): steps.log, stepbench.log, parity.log, parity.json, bench-v2.json, bench-v1.json,
# torch-v2.json, torch-v1.json (TORCH=1: the PyTorch eager baseline), bench-kv8-v2.json, bench-kv8-v1.json (KV8: the variants benched again with --kv-dtype int8, default
# "f16 4"; empty skips) and sweep.jsonl with SWEEP set.
set -u
source bench/device-env.sh
el "probe: $(node -e "console.log(JSON.stringify(require('./build/native/glmtool_cuda.node').probe()))" 2>&1)"
df -h /tmp | tail -1 >> "$LOG"

M=${MODELS:-/tmp/glm}
mkdir -p "$M"
GENS=${GENS:-"chatglm2-6b chatglm-6b"}
QTHREADS=${QTHREADS:-6}
prep() {  # synth (one core) -> safetensors fp16, the torch copy removed (disk: 64 GB)
  [ -f "$M/$1/config.json" ] && [ ! -d "$M/$1-torch" ] && { echo "[bg] $1: kept from an earlier call on this machine" >> "$LOG"; return; }
  local t0=$(date +%s)
  node bin/run.js synth --arch $1 --size ${SIZE:-full} --out "$M/$1-torch" > /dev/null 2>&1 &&
    node bin/run.js convert "$M/$1-torch" --to safetensors --out "$M/$1" > /dev/null 2>&1 &&
    rm -rf "$M/$1-torch" && echo "[bg] $1 synth + convert: $(($(date +%s) - t0)) s" >> "$LOG"
}
# QUANTS: the quantized variants, "B" (per channel) or "BgG" (groups of G columns)
QUANTS=${QUANTS:-"8 4"}
quant() {  # RTN, lm_head and embeddings fp16 (the defaults)
  for q in $QUANTS; do
    [ -f "$M/$1-int$q/config.json" ] && grep -q "rc=0" "$M/q-$1-$q.rc" 2>/dev/null && continue
    local t1=$(date +%s) b=${q%%g*} g=0
    [ "$q" != "$b" ] && g=${q#*g}
    node bin/run.js quantize "$M/$1" --bits $b --group-size $g --out "$M/$1-int$q" --evaluate off --threads $QTHREADS > "$M/q-$1-$q.log" 2>&1
    local rc=$?
    echo "rc=$rc" > "$M/q-$1-$q.rc"
    echo "[bg] $1 int$q rc=$rc $(($(date +%s) - t1)) s: $(tail -1 "$M/q-$1-$q.log" | cut -c1-200)" >> "$LOG"
  done
  touch "$M/$1.ready"
}
# the second model's synth overlaps the first one's quantization
(
  set -- $GENS
  prep $1
  quant $1 &
  [ -n "${2:-}" ] && prep $2
  wait
  [ -n "${2:-}" ] && quant $2
) &

# the kernel self-checks and GEMV timings (native/stepbench.cu, its quantized section included),
# while the models are made on the CPU
if [ -x build/native/stepbench ] && [ "${STEPBENCH:-1}" = 1 ]; then
  el "stepbench ..."
  timeout "${STEPBENCH_TIMEOUT:-150}" build/native/stepbench > "$OUT/stepbench.log" 2>&1
  el "stepbench rc=$?"
  grep -E '^(copy|quantized)|int[48] g' "$OUT/stepbench.log" | cut -c1-200 | tee -a "$LOG"
fi

if [ "${PARITY:-1}" = 1 ]; then
el "parity ..."
env ${PARITY_ENV:-} timeout "${PARITY_TIMEOUT:-240}" node test/cuda/parity.mjs --json "$OUT/parity.json" ${PARITY_ARGS:-} > "$OUT/parity.log" 2>&1
el "parity rc=$?"
grep -E '^(ok|FAIL|cuda parity|reference)' "$OUT/parity.log" | cut -c1-420 | tee -a "$LOG"
fi

for a in $GENS; do
  while [ ! -f "$M/$a.ready" ] && [ "$(left)" -gt 60 ]; do sleep 2; done
  if [ -f "$M/$a.ready" ] && [ "$(left)" -gt 60 ] && [ "${BENCH:-1}" = 1 ]; then
    el "bench $a fp16 / int8 / int4 ..."
    dirs=("$M/$a")
    for q in $QUANTS; do dirs+=("$M/$a-int$q"); done
    timeout $(($(left) - 10)) node bin/run.js bench "${dirs[@]}" --backend cuda --prompt-tokens 512 --gen-tokens 128 \
      --repeat 3 --max-length 2048 --out "$OUT/bench-${a/chatglm2-6b/v2}.json" >> "$LOG" 2>&1
    el "bench $a rc=$?"
    # the PyTorch eager fp16 baseline (TORCH=1) of the same FP16 model, in the same call
    if [ "${TORCH:-0}" = 1 ] && [ "$(left)" -gt 90 ]; then
      timeout $(($(left) - 10)) python3 bench/peers/torch_baseline.py "$M/$a" --prompt-tokens 512 --gen-tokens 128 --repeat 3 \
        --json "$OUT/torch-${a/chatglm2-6b/v2}.json" >> "$LOG" 2>&1
      el "torch $a rc=$?"
    fi
    # the INT8 KV cache (--kv-dtype int8) on the KV8 variants (default: fp16 and int4), same settings
    if [ -n "${KV8-f16 4}" ] && [ "$(left)" -gt 60 ]; then
      kdirs=()
      for q in ${KV8-f16 4}; do [ "$q" = f16 ] && kdirs+=("$M/$a") || kdirs+=("$M/$a-int$q"); done
      timeout $(($(left) - 10)) node bin/run.js bench "${kdirs[@]}" --backend cuda --prompt-tokens 512 --gen-tokens 128 \
        --repeat 3 --max-length 2048 --kv-dtype int8 --out "$OUT/bench-kv8-${a/chatglm2-6b/v2}.json" >> "$LOG" 2>&1
      el "bench $a --kv-dtype int8 rc=$?"
    fi
    # A/B of switches on the quantized models (AB: space-separated, `+` joins two; AB_FP16=1 adds
    # the FP16 model), 3 repeats
    abdirs=("${dirs[@]:1}")
    [ "${AB_FP16:-0}" = 1 ] && abdirs=("${dirs[@]}")
    for sw in ${AB:-}; do
      [ "$(left)" -gt 50 ] || break
      IFS=+ read -r -a vars <<< "$sw"
      env "${vars[@]}" timeout $(($(left) - 10)) node bin/run.js bench "${abdirs[@]}" --backend cuda --prompt-tokens 512 --gen-tokens 128 \
        --repeat 3 --max-length 2048 > "$OUT/ab.log" 2>&1
      el "bench $a $sw rc=$? $(grep -E 'architecture|decode tok/s|time to first' "$OUT/ab.log" | tr -s ' ' | tr '\n' ' ')"
      rm -f "$OUT/ab.log"
    done
  fi
done
[ -f "$OUT/bench-chatglm-6b.json" ] && mv "$OUT/bench-chatglm-6b.json" "$OUT/bench-v1.json"
[ -f "$OUT/bench-kv8-chatglm-6b.json" ] && mv "$OUT/bench-kv8-chatglm-6b.json" "$OUT/bench-kv8-v1.json"
[ -f "$OUT/torch-chatglm-6b.json" ] && mv "$OUT/torch-chatglm-6b.json" "$OUT/torch-v1.json"
# Cost as work grows (SWEEP: prompt lengths, e.g. "128 512 2048 8192"): the first generation's
# FP16 and quantized models in one bench process per length, the KV cache sized for the length,
# 32 new tokens; each length's JSON a line of $OUT/sweep.jsonl (bench/plot-context.mjs draws it).
# SWEEP_QUANTS (default "8 4"; empty: FP16 only) for lengths up to SWEEP_QMAX (default 8192),
# SWEEP_ENV (e.g. GLMTOOL_CUDA_FLASH=2). SWEEP2 / SWEEP2_ENV: the FP16 model again at those lengths
# with other switches (e.g. GLMTOOL_CUDA_FLASH=0, the attention before flash), into sweep2.jsonl.
a=${GENS%% *}
sweep() {  # $1 length, $2 env, $3 the jsonl file, $4 quantized variants
  local n=$1 dirs=("$M/$a")
  for q in $4; do dirs+=("$M/$a-int$q"); done
  env $2 timeout $(($(left) - 10)) node bin/run.js bench "${dirs[@]}" --backend cuda --prompt-tokens "$n" --gen-tokens 32 \
    --repeat 1 --warmup 1 --max-length $((n + 48)) --out "$OUT/sweep-$n.json" > /dev/null 2>> "$LOG"
  el "sweep $n ${2:-} rc=$?"
  [ -f "$OUT/sweep-$n.json" ] && { tr -d '\n' < "$OUT/sweep-$n.json"; echo; } >> "$OUT/$3" && rm -f "$OUT/sweep-$n.json"
}
for n in ${SWEEP:-}; do
  [ "$(left)" -gt 45 ] || { el "sweep: budget, stopping before $n"; break; }
  qs=""
  [ "$n" -le "${SWEEP_QMAX:-8192}" ] && qs=${SWEEP_QUANTS-8 4}
  sweep "$n" "${SWEEP_ENV:-}" sweep.jsonl "$qs"
done
for n in ${SWEEP2:-}; do
  [ "$(left)" -gt 45 ] || { el "sweep2: budget, stopping before $n"; break; }
  sweep "$n" "${SWEEP2_ENV:-}" sweep2.jsonl ""
done
el "done"
# few files come back from the device machine: the JSON results travel as one archive
( cd "$OUT" && ls *.json *.jsonl > /dev/null 2>&1 && tar czf results.tar.gz $(ls *.json *.jsonl 2>/dev/null) && rm -f *.json *.jsonl )
echo "== bench =="; sed -n '/┌/,/┘/p' "$LOG" | cut -c1-250; grep '^roofline' "$LOG" | cut -c1-330
echo "== parity =="; grep -E '^(ok|FAIL|cuda parity)' "$OUT/parity.log" | cut -c1-330
echo "== bg =="; grep '^\[bg\]' "$LOG"
