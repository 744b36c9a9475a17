#!/bin/sh
# SPDX-License-Identifier: MIT
# One call on the device machine: build (bench/build-cuda.sh), the gpu tests, then bench-cuda per spec.
#   bench/cuda-device-run.sh OUTDIR [SPEC...]      (SPEC as for bench-cuda --synthetic, or "kernels")
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
        else
                timeout 300 /tmp/bc/bench-cuda --synthetic "$spec" 2>&1 | tee -a "$out/bench.log"
        fi
done
