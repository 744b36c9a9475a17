#!/bin/sh
# SPDX-License-Identifier: MIT
# Builds the engine with its CUDA backend, bench-cuda, quantd-bench and the gpu tests without meson and
# without the daemon's libraries, for machines that have only a compiler, nvcc and the CUDA libraries (the
# device machine).
#   bench/build-cuda.sh [OUTDIR] [SYSROOT]
# SYSROOT: a folder with Debian packages unpacked (dpkg -x) for what the machine lacks: cmocka for the gpu
# tests, PCRE2 for the tokenizers that model loading links.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$src/build-cuda}
sysroot=${2:-}
nvcc=${NVCC:-nvcc}
mkdir -p "$out/obj"
rm -f "$out"/obj/*.o
cat >"$out/config.h" <<EOC
#define PACKAGE_VERSION "0.1.0"
#define PACKAGE_NAME "quantd"
#define HAVE_CUDA 1
#define HAVE_DBUS 0
EOC
inc="-I$out -I$src/common -I$src/engine -I$src/engine/cuda"
sysinc="" syslib=""
if [ -n "$sysroot" ]; then
        sysinc="-I$sysroot/usr/include"
        syslib="-L$sysroot/usr/lib/x86_64-linux-gnu -Wl,-rpath,$sysroot/usr/lib/x86_64-linux-gnu"
fi
cflags="-std=gnu11 -O2 -g -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -fno-strict-aliasing -pthread $inc $sysinc"
# CUDA_EXTRA_FLAGS: more nvcc options, e.g. -DMV_OCC_K=9 for a timing variant.
nvflags="-O2 -g -lineinfo -gencode=arch=compute_90,code=[sm_90,compute_90] -Xcompiler=-Wall,-Wextra $inc ${CUDA_EXTRA_FLAGS:-}"
pcre2=""
if printf '#define PCRE2_CODE_UNIT_WIDTH 8\n#include <pcre2.h>\n' | cc $sysinc -E - >/dev/null 2>&1; then
        pcre2="-lpcre2-8"
        [ -n "$sysroot" ] && [ -f "$sysroot/usr/lib/x86_64-linux-gnu/libpcre2-8.a" ] &&
                pcre2="$sysroot/usr/lib/x86_64-linux-gnu/libpcre2-8.a"
fi
pids=""
for f in "$src"/common/*.c "$src"/engine/*.c "$src"/engine/cuda/*.c; do
        case "$f" in */gguf-dump.c) continue ;; esac
        # Files that need the daemon's libraries are not needed by the engine.
        grep -qE '#include <(msgpack|systemd/|json-c|curl/|archive|histedit|editline|openssl/)' "$f" && continue
        [ -z "$pcre2" ] && grep -q '#include <pcre2.h>' "$f" && continue
        cc $cflags -c "$f" -o "$out/obj/$(basename "$f").o" & pids="$pids $!"
done
for f in "$src"/engine/cuda/*.cu; do
        $nvcc $nvflags -c "$f" -o "$out/obj/$(basename "$f").o" & pids="$pids $!"
done
for p in $pids; do wait "$p"; done
rm -f "$out/libengine.a"
ar rcs "$out/libengine.a" "$out"/obj/*.o
cudalib=$(dirname "$(command -v "$nvcc")")/../lib64
libs="-L$out -lengine $pcre2 -L$cudalib -Wl,-rpath,$cudalib -lcublas -lcudart -lm -lpthread -lstdc++"
cc $cflags -c "$src/bench/bench-cuda.c" -o "$out/obj-bench-cuda.o"
cc -o "$out/bench-cuda" "$out/obj-bench-cuda.o" $libs
# quantd-bench needs only the engine: real GGUF files on either backend.
cc $cflags -c "$src/bench/quantd-bench.c" -o "$out/obj-quantd-bench.o"
cc -o "$out/quantd-bench" "$out/obj-quantd-bench.o" $libs
for t in "$src"/tests/test-cuda-*.c; do
        n=$(basename "$t" .c)
        # Tests that need more than the engine (test-cuda-placement quantizes through quant/) run in meson's
        # gpu suite only.
        if grep -qE '#include "(quant|registry|daemon)' "$t"; then
                echo "build-cuda.sh: $n needs more than the engine: meson's gpu suite builds it" >&2
                continue
        fi
        cc $cflags -c "$t" -o "$out/obj-$n.o" &&
                cc -o "$out/$n" "$out/obj-$n.o" $syslib -lcmocka $libs ||
                echo "build-cuda.sh: $n not built (cmocka or PCRE2 missing?)" >&2
done
echo "build-cuda.sh: built in $out"
