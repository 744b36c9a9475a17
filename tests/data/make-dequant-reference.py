#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes dequant-reference.gguf: random blocks of every ggml type that the engine dequantizes, with the
floats that the PyPI `gguf` package's dequantizer (an independent implementation) makes of them, plus
float32 -> float16 / bfloat16 conversions by numpy and gguf for the rounding tests.

    pip install gguf numpy
    python3 tests/data/make-dequant-reference.py tests/data/dequant-reference.gguf

Tensors, for each type T (lower-case ggml name): "T" the raw blocks (n elements), "T.expected" F32 (n);
Q8_1's blocks are the I8 tensor "q8_1.blocks" (see Q8_1_SIZE).
"fp16.in" F32 and "fp16.out" I16 (the binary16 bits), "bf16.in" F32 and "bf16.out" I16.
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES

N = 512
# ggml's block_q8_1 is two halves and 32 int8 (36 bytes); the gguf package still lists an older 40-byte
# layout, so Q8_1 blocks (which never appear in files) are stored as plain I8 bytes under "q8_1.blocks".
Q8_1_SIZE = (32, 36)
rng = np.random.default_rng(20240611)


def random_half(n, lo=-3.0, hi=3.0, scale=1 / 64):
    return (rng.uniform(lo, hi, n) * scale).astype(np.float16).view(np.uint8).reshape(n, 2)


# Byte offsets of the float16 scale fields in each block, which get finite values; every other byte is random.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q8_1: [0, 2],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.IQ4_NL: [0],
}


def random_blocks(qtype):
    bs, ts = Q8_1_SIZE if qtype == T.Q8_1 else GGML_QUANT_SIZES[qtype]
    nb = N // bs
    blocks = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
    for off in HALF_FIELDS.get(qtype, []):
        blocks[:, off:off + 2] = random_half(nb)
    if qtype == T.Q8_K:
        blocks[:, 0:4] = rng.uniform(-0.05, 0.05, nb).astype(np.float32).view(np.uint8).reshape(nb, 4)
    return blocks


def expected(qtype, blocks):
    if qtype == T.Q8_1:
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        return (blocks[:, 4:].view(np.int8).astype(np.float32) * d).reshape(-1)
    if qtype == T.Q8_K:
        d = blocks[:, 0:4].copy().view(np.float32)
        return (blocks[:, 4:260].view(np.int8).astype(np.float32) * d).reshape(-1)
    return quants.dequantize(blocks, qtype).reshape(-1).astype(np.float32)


def conversion_inputs():
    special = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, np.inf, -np.inf, np.nan,
                        2.0**-14, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 3 * 2.0**-25, 2.0**-26, 1e-10,
                        0.1, 0.2, 1 / 3, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-11 + 2.0**-20],
                       dtype=np.float32)
    bits = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = bits[np.isfinite(bits)]
    around_half = rng.uniform(-70000, 70000, 1000).astype(np.float32)
    small = (rng.uniform(-1, 1, 1000) * 2.0**-13).astype(np.float32)
    # Exact midpoints between neighbouring binary16 values, to check ties to even.
    h = rng.integers(0, 0x7bff, 500, dtype=np.uint16)
    lo = h.view(np.float16).astype(np.float64)
    hi = (h + 1).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    # Midpoints between neighbouring bfloat16 values.
    b = rng.integers(0, 0x7f7f, 500, dtype=np.uint32)
    bmid = ((b << 16) | 0x8000).astype(np.uint32).view(np.float32)
    return np.concatenate([special, bits, around_half, small, mid, bmid]).astype(np.float32)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "dequant-reference.gguf"
    w = GGUFWriter(out, "dequant-reference")
    types = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
             T.Q8_K, T.IQ4_NL]
    for qtype in types:
        name = qtype.name.lower().replace("_k", "_K")
        blocks = random_blocks(qtype)
        if qtype == T.Q8_1:
            w.add_tensor(name + ".blocks", blocks.reshape(-1).view(np.int8))
        else:
            w.add_tensor(name, blocks.reshape(-1), raw_dtype=qtype)
        w.add_tensor(name + ".expected", expected(qtype, blocks))

    f16 = rng.uniform(-100, 100, N).astype(np.float16)
    w.add_tensor("f16", f16)
    w.add_tensor("f16.expected", f16.astype(np.float32))
    bf = rng.uniform(-100, 100, N).astype(np.float32).view(np.uint32)
    bf16 = (bf >> 16).astype(np.uint16)
    w.add_tensor("bf16", bf16.view(np.uint8), raw_dtype=T.BF16)
    w.add_tensor("bf16.expected", (bf16.astype(np.uint32) << 16).view(np.float32))
    f32 = rng.uniform(-100, 100, N).astype(np.float32)
    w.add_tensor("f32", f32)
    w.add_tensor("f32.expected", f32)

    x = conversion_inputs()
    w.add_tensor("fp16.in", x)
    with np.errstate(over="ignore"):
        w.add_tensor("fp16.out", x.astype(np.float16).view(np.int16))
    w.add_tensor("bf16.in", x)
    w.add_tensor("bf16.out", quants.BF16.quantize_blocks(x.copy()).view(np.int16))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
