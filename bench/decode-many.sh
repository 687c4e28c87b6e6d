#!/usr/bin/env bash
# Issue 6, decode steps without the host round trip, in one device call (results in
# bench/RESULTS.md): CUDA parity (test/cuda/parity.mjs, now also decodeMany against the per-step
# path: greedy through the graph and launch by launch, and top-k/top-p sampling with the same
# draws) while both full-size models are synthesised in parallel -> `glmtool bench` of both with
# decodeMany (default, 16 steps per call), the per-step path (GLMTOOL_CUDA_STEPS=1), the whole
# decode in one call (GLMTOOL_CUDA_STEPS=128), then the per-step path again, as time allows.
# Carry [".device", "dist", "build/native"]; build here first (npm run build && npm run build:native).
set -u
BUDGET=${BUDGET:-280}
source bench/device-env.sh
df -h /tmp | tail -1 >> "$LOG" 2>&1
M=${MODELS:-/tmp/glm}
mkdir -p "$M"
# both full-size models at once (synth is one CPU core each; peak disk ~51 GB of 64)
for a in chatglm-6b chatglm2-6b; do
  (
    t0=$(date +%s)
    node bin/run.js synth --arch $a --size full --out "$M/$a-torch" > /dev/null 2>&1 &&
      node bin/run.js convert "$M/$a-torch" --to safetensors --out "$M/$a" > /dev/null 2>&1 &&
      echo "[bg] $a synth + convert: $(($(date +%s) - t0)) s" >> "$LOG"
    rm -rf "$M/$a-torch"
  ) &
done
el "parity ..."
timeout "${PARITY_TIMEOUT:-150}" node test/cuda/parity.mjs --json "$OUT/parity.json" > "$OUT/parity.log" 2>&1
el "parity rc=$?"
grep -E '^(ok|FAIL|cuda parity|reference)' "$OUT/parity.log" | cut -c1-500 | tee -a "$LOG"
wait
el "models: $(ls "$M")"
B="node bin/run.js bench $M/chatglm-6b $M/chatglm2-6b --backend cuda --prompt-tokens 512 --gen-tokens 128 --repeat ${REPEAT:-3} --max-length 2048"
for v in new old all old2; do
  case $v in
    new) env=(GLMTOOL_CUDA_STEPS=16) ;; old | old2) env=(GLMTOOL_CUDA_STEPS=1) ;; all) env=(GLMTOOL_CUDA_STEPS=128) ;;
  esac
  if [ "$(left)" -lt 35 ]; then el "skip bench $v (time)"; continue; fi
  el "bench $v ${env[*]} ..."
  env "${env[@]}" timeout $(($(left) - 5)) $B --json "$OUT/bench-$v.json" > "$OUT/bench.log" 2>&1
  rc=$?
  el "bench $v rc=$rc $(grep -E 'backend|decode tok/s|time to first|peak GPU' "$OUT/bench.log" | tr -s ' ' | tr '\n' ' ')"
  [ $rc -ne 0 ] && tail -20 "$OUT/bench.log" >> "$LOG"
done
rm -f "$OUT/bench.log"
el "done"
