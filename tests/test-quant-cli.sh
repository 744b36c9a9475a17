#!/bin/sh
# SPDX-License-Identifier: MIT
# qd-quantize writes a readable file atomically and refuses bad arguments with a message and no output;
# qd-eval scores a model against a base; qd-convert turns a Hugging Face folder into a GGUF.
tool=$1
dump=$2
eval_tool=$3
convert_tool=$4
hf=${QUANTD_TEST_DATA:-tests/data}/hf-tiny-llama
hf_spm=${QUANTD_TEST_DATA:-tests/data}/hf-tiny-spm
model=${QUANTD_TEST_MODELS:-../shared/models}/stories260K.gguf
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
n=0
fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; }
check() { desc=$1; shift; if "$@"; then ok "$desc"; else not_ok "$desc"; fi; }

echo "1..26"
check "--help shows usage" sh -c "'$tool' --help | grep -q '^Usage: qd-quantize'"
check "Q4_K_M on stories260K succeeds" "$tool" -q -t 2 "$model" "$dir/q4km.gguf" Q4_K_M
check "the result is a GGUF with q5_0 and f16 tensors" \
        sh -c "'$dump' '$dir/q4km.gguf' | grep -q q5_0 && '$dump' '$dir/q4km.gguf' | grep -q f16"
check "progress names each tensor" \
        sh -c "'$tool' -t 1 '$model' '$dir/q8.gguf' q8_0 2>&1 | grep -q '\[  48/  48\] blk.4.ffn_norm.weight'"
check "--tensor-type overrides a type" \
        sh -c "'$tool' -q --tensor-type 'attn_v=q8_0' --pure '$model' '$dir/o.gguf' Q4_0 &&
               '$dump' '$dir/o.gguf' | grep 'blk.0.attn_v' | grep -q q8_0"
check "an unknown type exits 2 and names it" \
        sh -c "'$tool' '$model' '$dir/x.gguf' Q9_K 2>&1 | grep -q \"Unknown quantization type 'Q9_K'\"; test ! -e '$dir/x.gguf'"
check "a bad --tensor-type exits 2" sh -c "'$tool' --tensor-type nonsense '$model' '$dir/x.gguf' Q4_0 2>/dev/null; test \$? -eq 2"
check "a missing source fails with its name" \
        sh -c "'$tool' '$dir/none.gguf' '$dir/x.gguf' Q4_0 2>&1 | grep -q 'none.gguf'; test ! -e '$dir/x.gguf'"
check "a bad pattern fails and leaves nothing behind" \
        sh -c "! '$tool' -q --tensor-type '(=q8_0' '$model' '$dir/y.gguf' Q4_0 2>/dev/null && test -z \"\$(ls '$dir' | grep y.gguf)\""
check "a directory that cannot be written to fails" \
        sh -c "! '$tool' -q '$model' /proc/no/such/x.gguf Q4_0 2>/dev/null"
check "a quantized source is refused without --allow-requantize" \
        sh -c "'$tool' -q '$dir/q8.gguf' '$dir/r.gguf' Q4_0 2>&1 | grep -q 'already quantized'; test ! -e '$dir/r.gguf'"
check "and converted with it" \
        sh -c "'$tool' -q --allow-requantize '$dir/q8.gguf' '$dir/r.gguf' Q4_0 && '$dump' '$dir/r.gguf' | grep 'blk.0.attn_q' | grep -q q4_0"
check "qd-eval --help shows usage" sh -c "'$eval_tool' --help | grep -q '^Usage: qd-eval'"
check "qd-eval without --file exits 2" sh -c "'$eval_tool' '$model' 2>/dev/null; test \$? -eq 2"
check "qd-eval rejects a bad context size" sh -c "'$eval_tool' -c zero -f /dev/null '$model' 2>/dev/null; test \$? -eq 2"
check "qd-eval reports a text too short" \
        sh -c "'$eval_tool' -t 1 -f /dev/null '$model' 2>&1 | grep -q 'fewer than one chunk'"
check "qd-eval compares Q8_0 with the original" \
        sh -c "'$eval_tool' -t 2 -c 64 -f '$QUANTD_TEST_DATA/quant/story.txt' -b '$model' '$dir/q8.gguf' | grep -q '^top-1 agree'"
check "qd-eval names a missing model" sh -c "'$eval_tool' -f /dev/null '$dir/none.gguf' 2>&1 | grep -q \"Failed to load '$dir/none.gguf'\""
check "qd-eval names a missing base" \
        sh -c "'$eval_tool' -c 64 -f '$QUANTD_TEST_DATA/quant/story.txt' -b '$dir/none.gguf' '$model' 2>&1 | grep -q 'none.gguf'"
check "qd-eval names a missing text" sh -c "'$eval_tool' -f '$dir/none.txt' '$model' 2>&1 | grep -q \"Failed to read '$dir/none.txt'\""
check "qd-convert --help shows usage" sh -c "'$convert_tool' --help | grep -q '^Usage: qd-convert'"
check "qd-convert writes a llama GGUF" \
        sh -c "'$convert_tool' '$hf' '$dir/hf.gguf' && '$dump' '$dir/hf.gguf' | grep 'blk.1.attn_q.weight' | grep -q f16"
check "qd-convert --outtype f32 converts the matrices" \
        sh -c "'$convert_tool' --outtype f32 '$hf' '$dir/hf32.gguf' && '$dump' '$dir/hf32.gguf' | grep 'blk.1.attn_q.weight' | grep -q f32"
check "qd-convert writes a SentencePiece vocabulary as GGUF's llama tokenizer" \
        sh -c "'$convert_tool' '$hf_spm' '$dir/spm.gguf' && '$dump' '$dir/spm.gguf' | grep -q '^tokenizer.ggml.model *string *\"llama\"'"
check "qd-convert rejects a quantized --outtype with exit 2" \
        sh -c "'$convert_tool' --outtype q4_0 '$hf' '$dir/hfq.gguf' 2>&1 | grep -q \"Invalid --outtype 'q4_0'\"; test ! -e '$dir/hfq.gguf'"
check "qd-convert names a folder without a model and leaves nothing" \
        sh -c "'$convert_tool' '$dir' '$dir/none.gguf' 2>&1 | grep -q 'config.json'; test -z \"\$(ls '$dir' | grep none.gguf)\""
exit $fail
