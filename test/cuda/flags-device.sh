#!/usr/bin/env bash
# Issue 14 on the GPU machine, in one device call: the feature-flag engine against the generation
# engine it replaced, byte for byte (test/cuda/engine-identity.mjs), the decode-kernel self-checks
# (build/native/stepbench, when built), then the CUDA parity (test/cuda/parity.mjs, with the
# rope_ratio 50 case).
#
# Prepare here (the GPU machine has no Node and no registry):
#   npm run build && node native/build.mjs       (nvcc; a copy with the gencode list reduced to '90' is faster)
#   nvcc -std=c++17 -O3 -arch=sm_90 -o build/native/stepbench native/stepbench.cu
#   build/device/node.tar.xz, build/device/modules.tar.xz: Node and the production node_modules
#     (as shared/device/pack.sh makes them, production packages only, so everything fits 64 MiB)
#   build/old/: the engine before (git archive <commit> | tar x; npm run build; node native/build.mjs),
#     its dist/, package.json and build/native/glmtool_cuda.node
#   rm build/native/*.o
# and run, with carry ["build/device", "build/native", "build/old", "dist"]:
#   bash test/cuda/flags-device.sh
# $OUT gets steps.log, stepbench.log, identity.log, parity.log and parity.json.
set -u
OUT=${OUT:-/tmp/glmtool-device-out}
mkdir -p "$OUT"
LOG=$OUT/steps.log
START=$(date +%s)
el() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
mkdir -p /tmp/node-bin
tar xJf build/device/node.tar.xz -C /tmp/node-bin
export PATH=/tmp/node-bin:$PATH
[ -d node_modules ] || tar xJf build/device/modules.tar.xz
el "node $(node --version); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
export PYTHONUNBUFFERED=1
export GLMTOOL_REFERENCE_PYTHON=${GLMTOOL_REFERENCE_PYTHON:-$(command -v python3)}
if ! ldconfig -p | grep -q 'libcublas.so.13'; then
  GLMTOOL_CUBLAS=$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
  export GLMTOOL_CUBLAS
  el "cuBLAS not on the linker path; using $GLMTOOL_CUBLAS"
fi
W=/tmp/glmtool-identity
if [ -d build/old/dist ]; then
  el "identity: models ..."
  node test/cuda/engine-identity.mjs make --work "$W" >> "$OUT/identity.log" 2>&1
  el "identity: generation engine ..."
  GLMTOOL_CUDA_ADDON=$PWD/build/old/build/native/glmtool_cuda.node timeout "${IDENTITY_TIMEOUT:-150}" \
    node test/cuda/engine-identity.mjs dump --root "$PWD/build/old" --work "$W" --out /tmp/identity-old.bin >> "$OUT/identity.log" 2>&1
  el "identity: old rc=$?"
  GLMTOOL_CUDA_ADDON=$PWD/build/native/glmtool_cuda.node timeout "${IDENTITY_TIMEOUT:-150}" \
    node test/cuda/engine-identity.mjs dump --root "$PWD" --work "$W" --out /tmp/identity-new.bin >> "$OUT/identity.log" 2>&1
  el "identity: new rc=$?"
  if cmp /tmp/identity-old.bin /tmp/identity-new.bin >> "$LOG" 2>&1; then
    el "identity: IDENTICAL ($(stat -c %s /tmp/identity-new.bin) bytes of logits and tokens)"
  else
    el "identity: DIFFERENT"
  fi
fi
if [ -x build/native/stepbench ]; then
  timeout 90 build/native/stepbench > "$OUT/stepbench.log" 2>&1
  el "stepbench rc=$?"
fi
el "parity ..."
timeout "${PARITY_TIMEOUT:-300}" node test/cuda/parity.mjs --json "$OUT/parity.json" > "$OUT/parity.log" 2>&1
el "parity rc=$?"
grep -E '^(ok|FAIL|cuda parity|reference)' "$OUT/parity.log" | cut -c1-500 | tee -a "$LOG"
