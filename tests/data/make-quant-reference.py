#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference outputs of the PyPI gguf package's quantizers, for tests/test-quant-rows.c.

Writes into tests/data/quant/:
  input.bin            16 rows of 256 float32 (little-endian): varied distributions and awkward blocks
  specials.bin         256 float32: values at the edges of binary16 and bfloat16 (overflow, subnormals, ties)
  <type>.bin           gguf.quantize(input) for q8_0 q4_0 q4_1 q5_0 q5_1 f16 bf16 (f16 and bf16 also get
                       the specials appended)
  deq-blocks-<type>.bin / deq-<type>.bin
                       random but valid blocks of every type we dequantize and gguf.dequantize() of them
                       (float32), so that our dequantizers can be checked bit for bit

Run: pip install gguf numpy; python3 tests/data/make-quant-reference.py
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant")
ROW = 256


def make_input():
    rng = np.random.default_rng(20261127)
    rows = []
    for scale in (0.02, 1.0, 100.0):
        rows.append(rng.normal(0.0, scale, ROW))
    rows.append(rng.uniform(-1.0, 1.0, ROW))
    rows.append(rng.standard_t(3, ROW) * 0.05)          # heavy tails, like real weights
    rows.append(rng.normal(0.3, 0.1, ROW))               # positive offset: exercises the minimum of q4_1/q5_1
    rows.append(-np.abs(rng.normal(0.0, 1.0, ROW)))      # all negative
    rows.append(rng.normal(0.0, 1e-6, ROW))              # scales that are binary16 subnormals
    rows.append(rng.normal(0.0, 3e3, ROW))               # large
    awkward = np.zeros(ROW)
    awkward[32:64] = 0.75                                # constant block
    awkward[64:96] = np.arange(-8, 8).repeat(2)          # exact integers: ties at .5 after scaling
    awkward[96:128] = np.arange(-16, 16)
    awkward[128] = 5.0                                   # a single non-zero value
    awkward[160:192] = np.where(np.arange(32) % 2, 1.0, -1.0)  # +-1: the first maximum decides the sign
    awkward[192:224] = rng.normal(0.0, 1.0, 32).round(1)
    awkward[224:256] = np.linspace(-2.5, 2.5, 32)
    rows.append(awkward)
    for _ in range(6):
        rows.append(rng.normal(0.0, 1.0, ROW) * rng.uniform(0.001, 10.0))
    return np.asarray(rows, dtype=np.float32)


def make_specials():
    v = [0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 65519.0, 65520.0, 70000.0, 1e30, -1e30,
         np.inf, -np.inf, 6.103515625e-05, 6.0e-05, 5.9604645e-08, 2.9802322e-08, 2.98e-08, 2.99e-08,
         1e-10, -1e-10, 1.00048828125, 1.0009765625, 1.00146484375, 3.14159265, -2.7182818,
         1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.4028235e38, -3.4028235e38, 1e-40, -1e-40]
    rng = np.random.default_rng(7)
    rest = ROW - len(v)
    v += list(rng.normal(0.0, 1.0, rest // 2) * 10.0 ** rng.integers(-9, 6, rest // 2))
    v += list(rng.uniform(-70000, 70000, rest - rest // 2))
    return np.asarray(v, dtype=np.float32)


def random_blocks(qtype, n_blocks, rng):
    """Random bytes with every binary16 scale replaced by a finite, moderate value."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    # byte offsets of the binary16 scales in each layout
    halves = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.IQ4_NL: [0],
              T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}[qtype]
    for off in halves:
        h = (rng.normal(0.0, 1.0, n_blocks) * 10.0 ** rng.integers(-6, 2, n_blocks)).astype(np.float16)
        b[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return b


def main():
    os.makedirs(OUT, exist_ok=True)
    x = make_input()
    specials = make_specials()
    x.tofile(os.path.join(OUT, "input.bin"))
    specials.tofile(os.path.join(OUT, "specials.bin"))
    for name, qtype in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q5_0", T.Q5_0),
                        ("q5_1", T.Q5_1)):
        gguf.quantize(x, qtype).tofile(os.path.join(OUT, name + ".bin"))
    with np.errstate(over="ignore"):
        both = np.concatenate([x, specials[None, :]])
        gguf.quantize(both, T.F16).tofile(os.path.join(OUT, "f16.bin"))
        gguf.quantize(both, T.BF16).tofile(os.path.join(OUT, "bf16.bin"))

    rng = np.random.default_rng(4242)
    for qtype in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL):
        name = qtype.name.lower().replace("_k", "_K")
        n_blocks = 64 if gguf.GGML_QUANT_SIZES[qtype][0] == 32 else 16
        b = random_blocks(qtype, n_blocks, rng)
        b.tofile(os.path.join(OUT, "deq-blocks-%s.bin" % name))
        gguf.dequantize(b, qtype).astype(np.float32).tofile(os.path.join(OUT, "deq-%s.bin" % name))
    h = rng.integers(0, 65536, 512, dtype=np.uint16)
    h.tofile(os.path.join(OUT, "deq-blocks-f16.bin"))
    with np.errstate(invalid="ignore"):
        gguf.dequantize(h.view(np.uint8), T.F16).astype(np.float32).tofile(os.path.join(OUT, "deq-f16.bin"))
        gguf.dequantize(h.view(np.uint8), T.BF16).astype(np.float32).tofile(os.path.join(OUT, "deq-bf16.bin"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
