# Sourced at the start of the GPU-machine scripts (cuda-device.sh),
# from the project root with .device carried: $OUT and $LOG (its steps.log), `el` (a timestamped
# log line), `left` (seconds of $BUDGET remaining), Node from .device, the Python the reference
# runs with, the GPU's name in the log, and GLMTOOL_CUBLAS when cuBLAS is not on the linker path.
OUT=${OUT:-/tmp/glmtool-device-out}
mkdir -p "$OUT"
LOG=$OUT/steps.log
START=$(date +%s)
BUDGET=${BUDGET:-540}
el() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
source .device/unpack.sh >> "$LOG" 2>&1
export PYTHONUNBUFFERED=1
export GLMTOOL_REFERENCE_PYTHON=${GLMTOOL_REFERENCE_PYTHON:-$(command -v python3)}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory,clocks.max.sm,power.limit --format=csv >> "$LOG" 2>&1
if ! ldconfig -p | grep -q 'libcublas.so.13'; then
  GLMTOOL_CUBLAS=$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
  export GLMTOOL_CUBLAS
  el "cuBLAS not on the linker path; using $GLMTOOL_CUBLAS"
fi
