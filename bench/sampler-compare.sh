#!/bin/sh
# SPDX-License-Identifier: MIT
# bench/sampler-bench.c against the sampler of another revision, alternated in one invocation:
#   bench/sampler-compare.sh [BASE_REV [BUILD_DIR [REPS]]]     (defaults: HEAD, build, 500)
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
base=${1:-HEAD}
build=${2:-$src/build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$src" show "$base:engine/sampler.c" >"$tmp/sampler-base.c"
flags="-std=gnu11 -O2 -D_GNU_SOURCE -I$build -I$src/common -I$src/engine"
cc $flags -o "$tmp/base" "$src/bench/sampler-bench.c" "$tmp/sampler-base.c" "$build/common/libcommon.a" -lm
cc $flags -o "$tmp/new" "$src/bench/sampler-bench.c" "$src/engine/sampler.c" "$build/common/libcommon.a" -lm
for i in 1 2; do
        echo "== $base"; "$tmp/base" ${3:-}
        echo "== working tree"; "$tmp/new" ${3:-}
done
