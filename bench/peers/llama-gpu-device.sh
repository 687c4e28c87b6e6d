#!/usr/bin/env bash
# Issue 17's GPU race on the GPU machine: glmtool's CUDA engine (FP16 / INT8 / INT4, `glmtool
# bench --backend cuda`) against llama.cpp's CUDA build (F16 / Q8_0 / Q4_0, its own
# `llama-bench`) on the same full-size synth ChatGLM2-6B, in the same lease.
#
# llama.cpp is the source node-llama-cpp bundles (node_modules/node-llama-cpp/llama/
# gitRelease.bundle), built there for sm_90 only: its prebuilt CUDA package is too large to
# carry and this machine has no cuBLAS to link it. Prepare here:
#   git clone node_modules/node-llama-cpp/llama/gitRelease.bundle /tmp/llsrc, drop models/,
#   tests/, docs/ and the web UI, then tar -C /tmp -cJf .device/llama-src.tar.xz llsrc
# (5.5 MB), and .device/ as bench/device-env.sh says (prebuilt.node.xz: the npm package's addon).
# Run with carry [".device", "dist"]: BUDGET=560 bash bench/peers/llama-gpu-device.sh
# Every step is skipped when its output exists, so a second call on the warm machine resumes.
# Everything lands in $OUT (8 files, the most a call brings back): steps.log, glmtool.json,
# glmtool.txt, llama-{f16,q8_0,q4_0}.json, llama.err, llama-build.log (its tail).
set -u
source bench/device-env.sh
mkdir -p prebuilds/linux-x64
xz -dc .device/prebuilt.node.xz > prebuilds/linux-x64/glmtool_cuda.node
M=/tmp/glm
mkdir -p "$M"
df -h /tmp | tail -1 >> "$LOG"

# llama.cpp: configured and built in the background (14 jobs) while the models are written
LL=/tmp/llbuild
build_llama() {
  [ -d /tmp/llsrc ] || tar -C /tmp -xJf .device/llama-src.tar.xz
  local t0=$(date +%s)
  cmake -S /tmp/llsrc -B $LL -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/llama-build.log 2>&1 &&
    cmake --build $LL --target llama-bench -j ${LLJOBS:-14} >> /tmp/llama-build.log 2>&1
  echo "[bg] llama.cpp build rc=$? $(($(date +%s) - t0)) s" >> "$LOG"
}
[ -x $LL/bin/llama-bench ] || build_llama &
LLPID=$!

# the models: synth -> safetensors fp16 -> glmtool INT8 / INT4 (RTN, per channel, lm_head and
# embeddings fp16 as published) and GGUF F16 / Q8_0 / Q4_0 (llama.cpp's own layouts)
A=chatglm2-6b
if [ ! -f "$M/$A/config.json" ]; then
  t0=$(date +%s)
  node bin/run.js synth --arch $A --size full --out "$M/$A-torch" > /dev/null 2>> "$LOG" &&
    node bin/run.js convert "$M/$A-torch" --to safetensors --out "$M/$A" > /dev/null 2>> "$LOG" &&
    rm -rf "$M/$A-torch"
  el "synth + safetensors: $(($(date +%s) - t0)) s"
fi
for b in 8 4; do
  [ -d "$M/$A-int$b" ] || (t1=$(date +%s); node bin/run.js quantize "$M/$A" --bits $b --out "$M/$A-int$b" --evaluate off --threads 4 > "$M/q$b.log" 2>&1;
    echo "[bg] int$b rc=$? $(($(date +%s) - t1)) s: $(tail -1 "$M/q$b.log" | cut -c1-160)" >> "$LOG") &
done
for t in f16 q8_0 q4_0; do
  [ -f "$M/$A-$t.gguf" ] || (t1=$(date +%s); node bin/run.js convert "$M/$A" --to gguf --type $t --out "$M/$A-$t.gguf" > "$M/g$t.log" 2>&1;
    echo "[bg] gguf $t rc=$? $(($(date +%s) - t1)) s" >> "$LOG") &
done
# wait for the model jobs (not the build)
while [ "$(jobs -rp | grep -vx "$LLPID" | wc -l)" -gt 0 ] && [ "$(left)" -gt 30 ]; do sleep 2; done
el "models: $(ls -d $M/$A* | tr '\n' ' ')"
df -h /tmp | tail -1 >> "$LOG"

# glmtool: the three precisions side by side, the copy rate measured in the same process
if [ ! -f "$OUT/glmtool.json" ] && [ -d "$M/$A-int4" ] && [ "$(left)" -gt 120 ]; then
  timeout $(($(left) - 30)) node bin/run.js bench "$M/$A" "$M/$A-int8" "$M/$A-int4" --backend cuda \
    --prompt-tokens 512 --gen-tokens 128 --repeat 3 --max-length 2048 --out "$OUT/glmtool.json" > "$OUT/glmtool.txt" 2>> "$LOG"
  el "glmtool bench rc=$?"
fi

# llama.cpp: pp512 (prompt tok/s, from an empty cache) and tg128 after a 512-token context
# (-d 512), flash attention off and on, 3 repetitions, all layers on the GPU
while kill -0 $LLPID 2>/dev/null && [ "$(left)" -gt 60 ]; do sleep 3; done
tail -c 3000 /tmp/llama-build.log > "$OUT/llama-build.log"
if [ -x $LL/bin/llama-bench ]; then
  for t in f16 q8_0 q4_0; do
    [ -f "$OUT/llama-$t.json" ] || [ "$(left)" -lt 60 ] && continue
    timeout $(($(left) - 20)) $LL/bin/llama-bench -m "$M/$A-$t.gguf" -ngl 99 -p 512 -n 128 -d 0,512 -fa 0,1 -r 3 -o json \
      > "$OUT/llama-$t.json" 2>> "$OUT/llama.err"
    el "llama-bench $t rc=$? $(grep -o '"avg_ts": [0-9.]*' "$OUT/llama-$t.json" | tr '\n' ' ')"
  done
fi
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$LOG" 2>&1
el done
grep '^\[bg\]' "$LOG"
