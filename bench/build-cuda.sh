#!/bin/sh
# SPDX-License-Identifier: MIT
# Builds the engine with its CUDA backend, bench-cuda and the gpu tests without meson and without the daemon's
# libraries, for machines that have only a compiler, nvcc and the CUDA libraries (the device machine).
#   bench/build-cuda.sh [OUTDIR] [CMOCKA_PREFIX]
# The gpu tests are built when cmocka's header and library are found (in CMOCKA_PREFIX/usr if given).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$src/build-cuda}
cmocka=${2:-}
nvcc=${NVCC:-nvcc}
mkdir -p "$out/obj"
cat >"$out/config.h" <<EOC
#define PACKAGE_VERSION "0.1.0"
#define PACKAGE_NAME "quantd"
#define HAVE_CUDA 1
#define HAVE_DBUS 0
EOC
inc="-I$out -I$src/common -I$src/engine -I$src/engine/cuda"
cflags="-std=gnu11 -O2 -g -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -fno-strict-aliasing -pthread $inc"
nvflags="-O2 -g -lineinfo -gencode=arch=compute_90,code=[sm_90,compute_90] -Xcompiler=-Wall,-Wextra $inc"
pids=""
for f in "$src"/common/*.c "$src"/engine/*.c "$src"/engine/cuda/*.c; do
        case "$f" in */gguf-dump.c) continue ;; esac
        # Files that need the daemon's libraries (PCRE2, msgpack, ...) are not needed by the kernels.
        grep -qE '#include <(pcre2|msgpack|systemd/|json-c|curl/|archive|histedit|editline|openssl/)' "$f" && continue
        cc $cflags -c "$f" -o "$out/obj/$(basename "$f").o" & pids="$pids $!"
done
for f in "$src"/engine/cuda/*.cu; do
        $nvcc $nvflags -c "$f" -o "$out/obj/$(basename "$f").o" & pids="$pids $!"
done
for p in $pids; do wait "$p"; done
rm -f "$out/libengine.a"
ar rcs "$out/libengine.a" "$out"/obj/*.o
libs="-L$out -lengine -lcublas -lcudart -lm -lpthread -lstdc++"
cudalib=$(dirname "$(command -v "$nvcc")")/../lib64
cc $cflags -c "$src/bench/bench-cuda.c" -o "$out/obj-bench-cuda.o"
cc -o "$out/bench-cuda" "$out/obj-bench-cuda.o" -L"$cudalib" -Wl,-rpath,"$cudalib" $libs
if [ -n "$cmocka" ]; then
        cinc="-I$cmocka/usr/include"
        clib="-L$cmocka/usr/lib/x86_64-linux-gnu -Wl,-rpath,$cmocka/usr/lib/x86_64-linux-gnu"
fi
for t in "$src"/tests/test-cuda-*.c; do
        n=$(basename "$t" .c)
        cc $cflags ${cinc:-} -c "$t" -o "$out/obj-$n.o" &&
                cc -o "$out/$n" "$out/obj-$n.o" -L"$cudalib" -Wl,-rpath,"$cudalib" ${clib:-} -lcmocka $libs ||
                echo "build-cuda.sh: $n not built (cmocka missing?)" >&2
done
echo "build-cuda.sh: built in $out"
