#!/bin/sh
# SPDX-License-Identifier: MIT
# Prepares what one device-machine call carries, so that the call spends no device time building: bench-cuda
# and the gpu tests built here with bench/build-cuda.sh (the development and device machines are both x86-64
# with CUDA 13.0), the shared libraries they need that the device image lacks (cmocka, PCRE2), the test models,
# and DIR/run.sh, which runs the gpu tests and then bench-cuda for each SPEC.
#   bench/cuda-carry.sh [DIR [SPEC...]]     (DIR: .gpuwork, which .gitignore ignores; it must be inside the
#                                            checkout the device tool sends, named in the call's carry)
# SPEC: as for bench-cuda --synthetic, with options, e.g. "llama2-7b:q4_K_M --batch 1,4,16".
# On the device machine, from the checkout's root: sh DIR/run.sh (results under $OUT).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$src/.gpuwork}
[ $# -gt 0 ] && shift
mkdir -p "$dir/lib" "$dir/models"
sh "$src/bench/build-cuda.sh" "$dir/bc" >"$dir/build.log" 2>&1 || { cat "$dir/build.log"; exit 1; }
rm -rf "$dir/bc/obj" "$dir"/bc/*.o "$dir/bc/libengine.a"
for l in libcmocka.so.0 libpcre2-8.so.0; do
        p=$(ldconfig -p | awk -v l="$l" '$1 == l { print $NF; exit }')
        [ -n "$p" ] && cp -L "$p" "$dir/lib/"
done
models=${QUANTD_TEST_MODELS:-$src/../shared/models}
cp "$models/stories260K.gguf" "$models/stories260K.golden" "$dir/models/"
{
        echo '#!/bin/sh'
        echo 'set -u'
        echo "W=\$PWD/$(basename "$dir")"
        echo 'export LD_LIBRARY_PATH=$W/lib QUANTD_TEST_MODELS=$W/models CMOCKA_MESSAGE_OUTPUT=TAP'
        echo 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt'
        echo 'for t in $W/bc/test-cuda-*; do'
        echo '        timeout 300 $t >$OUT/$(basename $t).log 2>&1; echo "$(basename $t): exit $?"'
        echo '        grep -E "^(ok|not ok)" $OUT/$(basename $t).log'
        echo 'done'
        for spec in "$@"; do
                echo "timeout 300 \$W/bc/bench-cuda --synthetic $spec 2>&1 | tee -a \$OUT/bench.log"
        done
} >"$dir/run.sh"
du -sh "$dir"
