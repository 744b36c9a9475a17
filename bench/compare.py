#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""quantd against llama.cpp on the same file, threads and lengths, interleaved: each repetition runs
quantd-bench (a fresh process, one warm-up and one timed run) and llama.cpp (through the PyPI llama-cpp-python
bindings, loaded once) back to back, alternating which goes first, so that both see the same load on a
shared machine. Prints per tool the median tokens/s and min-max, and the median of the per-repetition ratios
(quantd / llama.cpp), which is what the load drift disturbs least.

llama.cpp is driven through the low-level llama_decode() (one call per prompt, one per generated token), so
only a few microseconds of Python per call are added to its time; quantd's is engine_decode() wall time
including the copy of the logits.

    python3 bench/compare.py MODEL.gguf [-t 2] [-p 512] [-n 128] [-r 7] [--quantd-bench build/bench/quantd-bench]
"""

import argparse
import re
import statistics
import subprocess
import sys
import time

import llama_cpp
from llama_cpp import Llama


def quantd_once(exe, model, threads, n, prompt, extra):
    args = [exe, "-m", model, "-t", str(threads), "-r", "1"]
    args += ["-p", str(n), "-n", "0"] if prompt else ["-p", "0", "-n", str(n)]
    out = subprocess.run(args + extra, check=True, capture_output=True, text=True).stdout
    m = re.search(r"^\| (?:pp|tg)\d+\s*\|\s*\d+\s*\|\s*([0-9.]+)", out, re.M)
    if not m:
        sys.exit(f"cannot parse quantd-bench output:\n{out}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=7)
    ap.add_argument("--quantd-bench", default="build/bench/quantd-bench")
    ap.add_argument("--quantd-args", default="", help="extra quantd-bench arguments, e.g. '--isa avx2'")
    a = ap.parse_args()

    llm = Llama(a.model, n_ctx=max(a.p, a.n) + 8, n_batch=max(a.p, 1), n_ubatch=max(a.p, 1), n_threads=a.t,
                n_threads_batch=a.t, verbose=False)
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()

    mem = llama_cpp.llama_get_memory(ctx)

    def llama_once(n, prompt):
        toks = (llama_cpp.llama_token * n)(*[(i * 2654435761) % n_vocab for i in range(n)])
        llama_cpp.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        if prompt:
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(toks, n)) != 0:
                sys.exit("llama_decode failed")
        else:
            for i in range(n):
                one = (llama_cpp.llama_token * 1)(toks[i])
                if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                    sys.exit("llama_decode failed")
        return n / (time.perf_counter() - t0)

    extra = a.quantd_args.split()
    print(f"model {a.model}, {a.t} threads, {a.r} interleaved repetitions; llama-cpp-python "
          f"{llama_cpp.__version__}")
    print()
    print("| test   | quantd median (min-max) | llama.cpp median (min-max) | ratio of medians | median ratio |")
    print("|--------|-------------------------|----------------------------|------------------|--------------|")
    for name, n, prompt in ((f"pp{a.p}", a.p, True), (f"tg{a.n}", a.n, False)):
        if n == 0:
            continue
        llama_once(n, prompt)  # warm-up; quantd-bench warms up in each process
        q, l = [], []
        for i in range(a.r):
            if i % 2:
                l.append(llama_once(n, prompt))
                q.append(quantd_once(a.quantd_bench, a.model, a.t, n, prompt, extra))
            else:
                q.append(quantd_once(a.quantd_bench, a.model, a.t, n, prompt, extra))
                l.append(llama_once(n, prompt))
        ratios = [x / y for x, y in zip(q, l)]
        qm, lm = statistics.median(q), statistics.median(l)
        print(f"| {name:6} | {qm:8.1f} ({min(q):.1f}-{max(q):.1f}) | {lm:8.1f} ({min(l):.1f}-{max(l):.1f}) | "
              f"{qm / lm:16.2f} | {statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
              flush=True)


if __name__ == "__main__":
    main()
