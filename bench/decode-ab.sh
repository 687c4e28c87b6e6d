#!/usr/bin/env bash
# Issue 6, decode kernels A/B in one device call (results in bench/RESULTS.md):
#   build/native/stepbench (per-kernel-class times, earlier vs v2 kernels, v2 checked against the
#   earlier ones) -> CUDA parity (test/cuda/parity.mjs, default = v2 decode kernels) while both
#   full-size models are synthesised -> `glmtool bench` of both with the v2 kernels and with the
#   earlier ones (GLMTOOL_CUDA_DECODE=0). Run 3 also benched two other GEMV shapes through a
#   GLMTOOL_CUDA_GEMV_CFG switch, removed after it (both slower; stepbench still times them).
# Carry [".device", "dist", "build/native"]; build here first (npm run build && npm run
# build:native && nvcc -std=c++17 -O3 -arch=sm_90 -o build/native/stepbench native/stepbench.cu).
set -u
source bench/device-env.sh
M=${MODELS:-/tmp/glm}
mkdir -p "$M"
(
  for a in chatglm-6b chatglm2-6b; do
    t0=$(date +%s)
    node bin/run.js synth --arch $a --size full --out "$M/$a-torch" > /dev/null 2>&1 &&
      node bin/run.js convert "$M/$a-torch" --to safetensors --out "$M/$a" > /dev/null 2>&1 &&
      echo "[bg] $a synth + convert: $(($(date +%s) - t0)) s" >> "$LOG"
    rm -rf "$M/$a-torch"
  done
) &
SYNTH=$!
el "stepbench ..."
timeout 120 build/native/stepbench > "$OUT/stepbench.log" 2>&1
el "stepbench rc=$?"
el "parity ..."
timeout 200 node test/cuda/parity.mjs --json "$OUT/parity.json" > "$OUT/parity.log" 2>&1
el "parity rc=$?"
wait $SYNTH
el "models: $(ls "$M")"
B="node bin/run.js bench $M/chatglm-6b $M/chatglm2-6b --backend cuda --prompt-tokens 512 --gen-tokens 128 --repeat ${REPEAT:-3} --max-length 2048"
for v in new old; do
  case $v in
    new) env=() ;; old) env=(GLMTOOL_CUDA_DECODE=0) ;;
  esac
  el "bench $v ${env[*]} ..."
  env "${env[@]}" timeout 120 $B --json "$OUT/bench-$v.json" > "$OUT/bench-$v.log" 2>&1
  el "bench $v rc=$? $(grep -E 'decode tok/s' "$OUT/bench-$v.log" | tr -s ' ')"
done
echo "== stepbench =="; cat "$OUT/stepbench.log"
echo "== parity =="; grep -E '^(ok|FAIL|cuda parity)' "$OUT/parity.log" | cut -c1-330
echo "== steps =="; grep -E '^\[' "$LOG"
