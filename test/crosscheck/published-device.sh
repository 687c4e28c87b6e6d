#!/usr/bin/env bash
# On the GPU machine, in one device call: the published THUDM code beside glmtool's reference
# (test/crosscheck/published_check.py, with transformers there), then the CUDA parity
# (test/cuda/parity.mjs), since the engine's v1 DeepNorm alpha changed. Results: test/crosscheck/README.md.
#
# Prepare here:
#   npm run build && npm run build:native
#   .device/ with node.tar.xz, modules.tar.xz (production node_modules) and unpack.sh, as
#     ../shared/device/README.md describes
#   build/xcheck/pub/{v1,v2,v3}/: copies of the published configuration_chatglm.py,
#     modeling_chatglm.py, quantization.py of chatglm-6b, chatglm2-6b, chatglm3-6b (not committed)
# and run with carry [".device", "dist", "build/native/glmtool_cuda.node", "build/xcheck/pub"]:
#   bash test/crosscheck/published-device.sh
# $OUT gets steps.log, published.log, published.json, parity.log, parity.json.
set -u
[ -L node_modules ] && rm -f node_modules  # the dev VM's symlink travels dangling
source bench/device-env.sh
el "tree: $(test -f test/fixtures/adapters/ptuning/v2-tuple/config.json && echo 'this branch' || echo 'NOT this branch')"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' >> "$LOG" 2>&1
W=/tmp/xcheck
mkdir -p "$W"
g() { node bin/run.js "$@" > /dev/null 2>> "$LOG" || el "FAILED: glmtool $*"; }
g synth --arch chatglm-6b --size tiny --out $W/v1-tiny --seed 11
g synth --arch chatglm-6b --size small --out $W/v1-small --seed 12
g synth --arch chatglm2-6b --size tiny --out $W/v2-tiny --seed 13
cp -r $W/v2-tiny $W/v3-tiny
python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['_name_or_path']='THUDM/chatglm3-6b'; json.dump(c, open(p,'w'))" $W/v3-tiny/config.json
for c in v1-embedding:v1-tiny v1-projection:v1-tiny v2-projection:v2-tiny v2-tuple:v2-tiny v3-embedding:v3-tiny; do
  g merge-adapter $W/${c##*:} --adapter test/fixtures/adapters/ptuning/${c%%:*} --out $W/merged-${c%%:*}
done
el "models: $(ls $W | tr '\n' ' ')"
el "published_check ..."
P=build/xcheck/pub
timeout "${PUBLISHED_TIMEOUT:-300}" python3 test/crosscheck/published_check.py --pub-v1 $P/v1 --pub-v2 $P/v2 --pub-v3 $P/v3 \
  --work $W --json "$OUT/published.json" > "$OUT/published.log" 2>&1
el "published_check rc=$?"
grep -E '^(ok|FAIL)' "$OUT/published.log" | cut -c1-300 | tee -a "$LOG"
tail -1 "$OUT/published.log" | tee -a "$LOG"
if [ "${PARITY:-1}" = 1 ] && [ "$(left)" -gt 60 ]; then
  el "parity ..."
  timeout $(($(left) - 20)) node test/cuda/parity.mjs --json "$OUT/parity.json" > "$OUT/parity.log" 2>&1
  el "parity rc=$?"
  grep -E '^(ok|FAIL|cuda parity|reference)' "$OUT/parity.log" | cut -c1-300 | tee -a "$LOG"
fi
el "done"
