#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""llama.cpp's own quantizer as the reference for the k-quants, IQ4_NL and the mixtures' type choices.

Builds a small llama-shaped model (8 layers, width 256, FFN 320 so that ffn_down needs fallbacks, 4 heads of
64, 2 KV heads, vocabulary 256) whose F32 weights come from a counter-based generator that
tests/test-quant-llama-cpp.c reproduces exactly, quantizes it with llama_model_quantize() (PyPI
llama-cpp-python) for every mixture, plain and with --pure and --leave-output-tensor, and writes
tests/data/quant/llama-cpp-mixtures.txt: one line per tensor, "MIXTURE OPTIONS NAME TYPE SHA256" (the
hash cut to 16 hex digits).

Run: pip install llama-cpp-python gguf numpy; python3 tests/data/make-quant-llama-cpp-reference.py
"""
import ctypes
import hashlib
import os
import sys
import tempfile

import numpy as np
import gguf
import llama_cpp

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant", "llama-cpp-mixtures.txt")
N_LAYER, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_VOCAB = 8, 256, 320, 4, 2, 256
SEED = 20261127
MIXTURES = [("F16", 1), ("BF16", 32), ("Q8_0", 7), ("Q4_0", 2), ("Q4_1", 3), ("Q5_0", 8), ("Q5_1", 9),
            ("Q2_K", 10), ("Q3_K_S", 11), ("Q3_K_M", 12), ("Q3_K_L", 13), ("Q4_K_S", 14), ("Q4_K_M", 15),
            ("Q5_K_S", 16), ("Q5_K_M", 17), ("Q6_K", 18), ("IQ4_NL", 25)]
VARIANTS = [("Q4_K_M", 15, "pure"), ("Q2_K", 10, "pure"), ("Q5_K_M", 17, "leave"), ("Q3_K_M", 12, "pure,leave")]


def tensors():
    """(name, shape as numpy orders it, scale, offset) in file order; ne[0] is the last dimension."""
    kv = N_EMBD // N_HEAD * N_HEAD_KV
    t = [("token_embd.weight", (N_VOCAB, N_EMBD), 0.02, 0.0), ("output_norm.weight", (N_EMBD,), 0.1, 1.0),
         ("output.weight", (N_VOCAB, N_EMBD), 0.02, 0.0)]
    for i in range(N_LAYER):
        t += [(f"blk.{i}.attn_q.weight", (N_EMBD, N_EMBD), 0.02, 0.0),
              (f"blk.{i}.attn_k.weight", (kv, N_EMBD), 0.02, 0.0),
              (f"blk.{i}.attn_v.weight", (kv, N_EMBD), 0.02, 0.0),
              (f"blk.{i}.attn_output.weight", (N_EMBD, N_EMBD), 0.02, 0.0),
              (f"blk.{i}.ffn_gate.weight", (N_FF, N_EMBD), 0.02, 0.0),
              (f"blk.{i}.ffn_up.weight", (N_FF, N_EMBD), 0.02, 0.0),
              (f"blk.{i}.ffn_down.weight", (N_EMBD, N_FF), 0.02, 0.0),
              (f"blk.{i}.attn_norm.weight", (N_EMBD,), 0.1, 1.0),
              (f"blk.{i}.ffn_norm.weight", (N_EMBD,), 0.1, 1.0)]
    return t


def values(counter, n, scale, offset):
    """splitmix64 outputs counter+1 .. counter+n mapped to floats; one value in 256 is an 8x outlier."""
    with np.errstate(over="ignore"):
        z = np.uint64(SEED) + np.arange(counter + 1, counter + n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    v = ((z >> np.uint64(40)).astype(np.float64) / 16777216.0 - 0.5) * scale
    v = np.where((z & np.uint64(0xFF)) == 0, v * 8.0, v) + offset
    return v.astype(np.float32)


def write_model(path):
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_vocab_size(N_VOCAB)
    counter = 0
    for name, shape, scale, offset in tensors():
        n = int(np.prod(shape))
        w.add_tensor(name, values(counter, n, scale, offset).reshape(shape))
        counter += n
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, ftype, options):
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = 2
    p.ftype = ftype
    p.pure = "pure" in options
    p.quantize_output_tensor = "leave" not in options
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) != 0:
        raise RuntimeError("llama_model_quantize failed for ftype %d" % ftype)


def main():
    lines = ["# llama.cpp's quantizer (llama-cpp-python %s) on the model of make-quant-llama-cpp-reference.py"
             % llama_cpp.__version__, "# MIXTURE OPTIONS TENSOR TYPE SHA256 (first 16 hex digits)"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src.gguf")
        write_model(src)
        for name, ftype, options in [(m, f, "-") for m, f in MIXTURES] + VARIANTS:
            dst = os.path.join(tmp, "out.gguf")
            quantize(src, dst, ftype, options)
            r = gguf.GGUFReader(dst)
            assert int(r.fields["general.file_type"].parts[-1][0]) == ftype
            for t in r.tensors:
                lines.append("%s %s %s %s %s" % (name, options, t.name, t.tensor_type.name.lower(),
                                                  hashlib.sha256(t.data.tobytes()).hexdigest()[:16]))
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
