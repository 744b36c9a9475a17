#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Interoperability data for tests/test-quant-file.c: files the gguf package writes, we quantize, and the
gguf package reads back.

  quant/interop-src.gguf   written by gguf.GGUFWriter: one 2 x 256 F32 tensor per type we write, named after
                           the type, plus a 1-D norm and some metadata
  quant/interop.gguf       qd-quantize --pure with one --tensor-type override per tensor (run by this script)
  quant/interop-values.bin gguf.GGUFReader + gguf.dequantize() of every tensor of interop.gguf, float32 in
                           file order

The C test quantizes interop-src.gguf again and compares bytes with interop.gguf, then reads interop.gguf
with our reader and dequantizer and compares with interop-values.bin bit for bit.

Run: python3 tests/data/make-quant-interop.py build/quant/qd-quantize
"""
import os
import subprocess
import sys

import numpy as np
import gguf

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant")
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
         "iq4_nl"]


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    tool = sys.argv[1]
    src = os.path.join(OUT, "interop-src.gguf")
    dst = os.path.join(OUT, "interop.gguf")

    rng = np.random.default_rng(31337)
    w = gguf.GGUFWriter(src, "llama")
    w.add_name("interop")
    w.add_block_count(1)
    w.add_uint32("interop.answer", 42)
    w.add_array("interop.list", [1, 2, 3])
    for i, t in enumerate(TYPES):
        x = rng.normal(0.0, 0.02 * (i + 1), (2, 256)).astype(np.float32)
        w.add_tensor("blk.0.%s.weight" % t, x)
    w.add_tensor("blk.0.attn_norm.weight", rng.normal(1.0, 0.1, 256).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    args = [tool, "-q", "-t", "2", "--pure"]
    for t in TYPES:
        args += ["--tensor-type", r"blk\.0\.%s\.weight=%s" % (t, t)]
    subprocess.run(args + [src, dst, "Q8_0"], check=True)

    r = gguf.GGUFReader(dst)
    values = []
    for t in r.tensors:
        name = t.name.split(".")[2]
        if name != "attn_norm":
            assert t.tensor_type.name.lower() == name.lower(), (t.name, t.tensor_type.name)
        values.append(gguf.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1))
    assert int(r.fields["general.file_type"].parts[-1][0]) == 7
    assert int(r.fields["interop.answer"].parts[-1][0]) == 42
    np.concatenate(values).tofile(os.path.join(OUT, "interop-values.bin"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
