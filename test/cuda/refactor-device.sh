#!/usr/bin/env bash
# After a refactor, on the GPU machine in one call: the engine driven by this dist against the
# same addon driven by the dist before it (build/old: dist/, bin/, package.json of the earlier
# commit), byte for byte (test/cuda/engine-identity.mjs), then the CUDA parity (test/cuda/parity.mjs).
# The addon is the one `npm pack` ships, carried xz-compressed as .device/prebuilt.node.xz.
#   carry: .device dist build/old        ($OUT: steps.log, identity.log, parity.log, parity.json)
set -u
source bench/device-env.sh
mkdir -p build/native build/old/build/native
xz -dc .device/prebuilt.node.xz > build/native/glmtool_cuda.node
cp build/native/glmtool_cuda.node build/old/build/native/glmtool_cuda.node
el "old dist from $(cat build/old/COMMIT 2>/dev/null)"
bash test/cuda/flags-device.sh
