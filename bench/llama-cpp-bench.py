#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""pp/tg tokens per second of llama.cpp (through the PyPI llama-cpp-python bindings, which build it from
source) for the same file, threads and lengths as quantd-bench, so docs/performance.md compares like with like.

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python
    python3 bench/llama-cpp-bench.py MODEL.gguf [-t 2] [-p 512] [-n 128] [-r 5]
"""

import argparse
import statistics
import time

from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=5)
    a = ap.parse_args()

    llm = Llama(a.model, n_ctx=max(a.p, a.n) + 8, n_batch=max(a.p, 1), n_ubatch=max(a.p, 1), n_threads=a.t,
                n_threads_batch=a.t, verbose=False)
    n_vocab = llm.n_vocab()

    def run(n, prompt):
        toks = [(i * 2654435761) % n_vocab for i in range(n)]
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        if prompt:
            llm.eval(toks)
        else:
            for tok in toks:
                llm.eval([tok])
        return n / (time.perf_counter() - t0)

    print(f"llama.cpp (llama-cpp-python), {a.model}, {a.t} threads")
    for name, n, prompt in ((f"pp{a.p}", a.p, True), (f"tg{a.n}", a.n, False)):
        if n == 0:
            continue
        run(n, prompt)  # warm-up
        v = sorted(run(n, prompt) for _ in range(a.r))
        print(f"| {name:6} | {a.t:7} | {statistics.median(v):10.2f} | {v[-1] - v[0]:8.2f} | "
              f"{v[0]:8.2f}-{v[-1]:<8.2f} | {statistics.mean(v):8.2f} ± {statistics.pstdev(v):<6.2f} |")


if __name__ == "__main__":
    main()
