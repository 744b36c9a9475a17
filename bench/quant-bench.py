#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Quantization throughput, qd-quantize beside llama.cpp's quantizer (llama_model_quantize() from the PyPI
llama-cpp-python bindings) on the same source file in the same run, alternating, median of -r repetitions.
Throughput is megabytes of source tensor data per second.

Without a source file it writes a Llama-shaped F16 model of random weights (width 1024, FFN 2816, 8 layers,
vocabulary 8192: 120M weights, 240 MB).

    python3 bench/quant-bench.py build/quant/qd-quantize [--src MODEL.gguf] [-t 2] [-r 3] [-q Q4_K_M,Q8_0]
"""

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import gguf
import llama_cpp

FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q2_K": 10, "Q3_K_M": 12}


def make_model(path):
    rng = np.random.default_rng(1)
    n_embd, n_ff, n_layer, n_vocab = 1024, 2816, 8, 8192
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(16)
    w.add_head_count_kv(16)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(64)
    w.add_vocab_size(n_vocab)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16))

    t("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    t("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{part}.weight", n_embd, n_embd)
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp_quantize(src, dst, ftype, threads):
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = threads
    p.ftype = ftype
    t0 = time.perf_counter()
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) != 0:
        raise RuntimeError("llama_model_quantize failed")
    return time.perf_counter() - t0


def ours(tool, src, dst, mixture, threads):
    t0 = time.perf_counter()
    subprocess.run([tool, "-q", "-t", str(threads), src, dst, mixture], check=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tool")
    ap.add_argument("--src")
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-q", default="Q4_K_M,Q8_0")
    a = ap.parse_args()
    llama_cpp.llama_log_set(ctypes.cast(None, llama_cpp.llama_log_callback), ctypes.c_void_p(0)) \
        if hasattr(llama_cpp, "llama_log_set") else None

    with tempfile.TemporaryDirectory() as tmp:
        src = a.src or os.path.join(tmp, "src.gguf")
        if not a.src:
            make_model(src)
        mb = sum(int(t.n_bytes) for t in gguf.GGUFReader(src).tensors) / 1e6
        dst = os.path.join(tmp, "out.gguf")
        print("source: %s, %.1f MB of tensor data, %d threads, median of %d" % (a.src or "synthetic F16", mb, a.t, a.r))
        print("| mixture | qd-quantize MB/s | llama.cpp MB/s | ratio |")
        print("|---|---:|---:|---:|")
        for m in a.q.split(","):
            tq, tl = [], []
            for _ in range(a.r):
                tq.append(ours(a.tool, src, dst, m, a.t))
                tl.append(llama_cpp_quantize(src, dst, FTYPES[m], a.t))
            q, l = mb / statistics.median(tq), mb / statistics.median(tl)
            print("| %s | %.0f | %.0f | %.2fx |" % (m, q, l, q / l))


if __name__ == "__main__":
    main()
