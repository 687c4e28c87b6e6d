#!/usr/bin/env bash
# Issue 13 on the GPU machine's host CPUs (16 cores, 128 GB), one call: streamed calibrated INT4
# quantization of a full-size `synth --outliers` model with the end-to-end evaluation on
# (bench/quantize-streamed.mjs: calibrated and RTN KL / top-1 against the float model), to report
# the calibration time on a second machine and the 6B KL ratio. carry: .device dist
#   env: ARCHS (default "chatglm-6b"), BUDGET (s, default 560), GLMTOOL_COMMIT (recorded)
set -uo pipefail
source bench/device-env.sh
# /usr/bin/time (the bench's peak-RSS probe) where the machine lacks it: the same "-o FILE -f
# '%e %U %S %M'" output from Python's getrusage of the child.
if [ ! -x /usr/bin/time ]; then
  cat > /tmp/time-shim.py <<'PY'
import resource, subprocess, sys, time
a = sys.argv[1:]
out = a[a.index('-o') + 1]; cmd = a[a.index('-f') + 2:]
t0 = time.time(); rc = subprocess.call(cmd); wall = time.time() - t0
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(out, 'w').write(f"{wall:.2f} {u.ru_utime:.2f} {u.ru_stime:.2f} {u.ru_maxrss}\n")
sys.exit(rc)
PY
  printf '#!/bin/sh\nexec python3 /tmp/time-shim.py "$@"\n' > /usr/bin/time && chmod +x /usr/bin/time
  el "no /usr/bin/time: using the getrusage shim"
fi
nproc >> "$LOG"; free -g >> "$LOG"
for a in ${ARCHS:-chatglm-6b}; do
  [ "$(left)" -gt 120 ] || { el "budget: stopping before $a"; break; }
  timeout $(( $(left) - 15 )) node bench/quantize-streamed.mjs --arch "$a" --size full --dir /tmp/kl > "$OUT/kl-$a.jsonl" 2> "$OUT/kl-$a.log"
  el "$a rc=$? $(tail -1 "$OUT/kl-$a.jsonl" | cut -c1-600)"
done
el done
