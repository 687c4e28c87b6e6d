#!/usr/bin/env bash
# Issue 16 on the GPU machine, one call: TTFT, decode and memory of full-size ChatGLM2-6B FP16
# against prompt length (128 to 32,000 tokens), with the KV cache allocated for the whole
# context, each `glmtool bench --backend cuda` run in its own process. carry: .device dist
#   env: LENGTHS (default "128 2048 8192 15000 32000"), BUDGET (s, default 560)
set -uo pipefail
source bench/device-env.sh
mkdir -p prebuilds/linux-x64
xz -dc .device/prebuilt.node.xz > prebuilds/linux-x64/glmtool_cuda.node
M=/tmp/glm/chatglm2-6b-full
[ -d "$M" ] || node bin/run.js synth --arch chatglm2-6b --size full --out "$M" --json > /dev/null 2>> "$LOG"
el "model ready"
for n in ${LENGTHS:-128 2048 8192 15000 32000}; do
  [ "$(left)" -gt 60 ] || { el "budget: stopping before $n"; break; }
  ml=$((n + 64 + 16))
  timeout $(( $(left) - 20 )) node bin/run.js bench "$M" --backend cuda --prompt-tokens "$n" --gen-tokens 64 --max-length "$ml" --repeat 2 --warmup 1 --out "$OUT/bench-$n.json" > "$OUT/bench-$n.txt" 2>> "$LOG"
  el "prompt $n: rc $? $(grep -iE 'ttft|decode|memory|roofline' "$OUT/bench-$n.txt" | tr -s ' ' | head -6 | tr '\n' ';')"
done
el done
