#!/bin/sh
# SPDX-License-Identifier: MIT
# One call on the device machine: build (bench/build-cuda.sh), the gpu tests, then bench-cuda per spec.
#   bench/cuda-device-run.sh OUTDIR [SPEC...]
# SPEC: as for bench-cuda --synthetic; "kernels" (bench-cuda --kernels); "ncu:SPEC" (per-kernel times).
# Expects cmocka unpacked under ./sysroot and test models under ./models.
set -u
out=${1:?OUTDIR}
shift
export PATH=$PATH:/usr/local/cuda/bin
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.txt"
nvcc --version | tail -1
bench/build-cuda.sh /tmp/bc "$PWD/sysroot" >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
grep -iE "warning|error" "$out/build.log" | head -20
export QUANTD_TEST_MODELS="$PWD/models" CMOCKA_MESSAGE_OUTPUT=TAP
for t in /tmp/bc/test-cuda-*; do
        [ -x "$t" ] || continue
        timeout 300 "$t" >"$out/$(basename "$t").log" 2>&1
        echo "$(basename "$t"): exit $?"
        grep -E "^(not ok|# )" "$out/$(basename "$t").log" | head -40
done
for spec in "$@"; do
        if [ "$spec" = kernels ]; then
                timeout 300 /tmp/bc/bench-cuda --kernels 2>&1 | tee -a "$out/bench.log"
        elif [ "${spec#ncu:}" != "$spec" ]; then
                # Per-kernel device time of two decode steps, summed by kernel name.
                timeout 300 ncu --metrics gpu__time_duration.sum --csv --graph-profiling node \
                        /tmp/bc/bench-cuda --synthetic "${spec#ncu:}" --tg 2 --pp 0 --reps 1 >"$out/ncu.csv" 2>&1
                python3 bench/cuda-ncu-summary.py "$out/ncu.csv" 4 | tee -a "$out/bench.log"
        else
                # shellcheck disable=SC2086 # a spec may carry more options, e.g. "llama2-7b:q4_0 --breakdown"
                timeout 300 /tmp/bc/bench-cuda --synthetic $spec 2>&1 | tee -a "$out/bench.log"
        fi
done
