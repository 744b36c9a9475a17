#!/bin/bash
# SPDX-License-Identifier: MIT
# The quality table of docs/quantization.md: SRC quantized to every mixture with qd-quantize, each file
# evaluated against SRC with qd-eval on TEXT. Prints one markdown row per mixture: file bytes, bits per weight,
# quantize time (best of 3), perplexity, mean KLD, KLD 99 %, top-1 agreement.
#
#   bench/quant-table.sh BUILD_DIR SRC.gguf TEXT [CTX] [THREADS]
#
# e.g. bench/quant-table.sh build ../shared/models/stories260K.gguf <(cat tests/data/perplexity-text.txt
#      tests/data/quant/story.txt) 256 2
set -euo pipefail

build=$1 src=$2 text=$3 ctx=${4:-512} threads=${5:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$text" "$tmp/text.txt"

echo "| mixture | file bytes | bits/weight | quantize time | PPL | mean KLD | KLD 99 % | top-1 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for m in F16 BF16 Q8_0 Q6_K Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S Q4_1 Q4_0 Q3_K_L Q3_K_M Q3_K_S Q2_K; do
        best=
        for _ in 1 2 3; do
                t0=$(date +%s.%N)
                "$build/quant/qd-quantize" -q -t "$threads" "$src" "$tmp/$m.gguf" "$m"
                t1=$(date +%s.%N)
                best=$(echo "$t0 $t1 ${best:-1e9}" | awk '{d = $2 - $1; print (d < $3 ? d : $3)}')
        done
        "$build/quant/qd-eval" -t "$threads" -c "$ctx" -f "$tmp/text.txt" -b "$src" "$tmp/$m.gguf" > "$tmp/eval"
        awk -v m="$m" -v t="$best" '
                /^file size/   { bytes = $3; bpw = $5 }
                /^perplexity/  { ppl = $2 }
                /^base/        { base = $NF }
                /^KLD mean/    { kld = $3 }
                /^KLD 99%/     { p99 = $3 }
                /^top-1 agree/ { top = $3 }
                END {
                        printf "| %s | %d | %.2f | %s | %.4f | %.5f | %.4f | %.1f %% |\n", m, bytes, bpw,
                               (t < 1 ? sprintf("%.0f ms", t * 1000) : sprintf("%.2f s", t)), ppl, kld, p99, top
                        print base > "/dev/stderr"
                }' "$tmp/eval" 2> "$tmp/base"
        rm -f "$tmp/$m.gguf"
done
echo "base perplexity $(cat "$tmp/base")" >&2
