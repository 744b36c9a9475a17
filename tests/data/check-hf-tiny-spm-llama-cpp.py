#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A cross-check by hand (the C tests need no Python): llama.cpp (PyPI llama-cpp-python) reads GGUF files
that qd-convert made from tests/data/hf-tiny-spm/ and tokenizes hf-tiny-spm.tokens' strings into
sentencepiece's ids; with --logits it also runs the model on hf-tiny-spm.logits' ids and prints the worst
error relative to each row's largest transformers logit.

    build/quant/qd-convert --outtype f32 tests/data/hf-tiny-spm /tmp/spm.gguf
    python3 tests/data/check-hf-tiny-spm-llama-cpp.py [--logits] /tmp/spm.gguf ...

With --outtype f32 llama.cpp computes in float and the error is about 6e-7; from the F16 file its matrix
products round activations to F16 and it is about 1e-3.

Exits 1 when a string's ids differ.
"""
import os
import sys

import llama_cpp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    args = sys.argv[1:]
    logits = "--logits" in args
    paths = [a for a in args if a != "--logits"]
    if not paths:
        print(__doc__)
        return 2
    cases = []
    with open(os.path.join(HERE, "hf-tiny-spm.tokens")) as f:
        for line in f:
            text, ids = line.rstrip("\n").split("\t")
            cases.append((bytes.fromhex(text), [int(i) for i in ids.split()]))
    status = 0
    for path in paths:
        # An F32 KV cache (type 0), so that a file converted with --outtype f32 is computed in float.
        m = llama_cpp.Llama(model_path=path, vocab_only=not logits, logits_all=logits, n_ctx=64, n_threads=1,
                            type_k=0, type_v=0, verbose=False)
        bad = [(text, m.tokenize(text, add_bos=False, special=False), ids) for text, ids in cases]
        bad = [b for b in bad if b[1] != b[2]]
        for text, got, want in bad:
            print("%s: %r: llama.cpp %s, sentencepiece %s" % (path, text, got, want))
        print("%s: llama.cpp gives sentencepiece's ids for %d of %d strings" % (path, len(cases) - len(bad),
                                                                              len(cases)))
        status |= bool(bad)
        if logits:
            with open(os.path.join(HERE, "hf-tiny-spm.logits")) as f:
                lines = f.read().splitlines()
            tokens = [int(t) for t in lines[0].split()[2:]]
            want = np.array([[float(v) for v in line.split()] for line in lines[1:]])
            m.eval(tokens)
            got = np.array(m.scores[:len(tokens)])
            err = (np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max()
            print("%s: worst relative logit error against transformers %.3g" % (path, err))
    return status


if __name__ == "__main__":
    sys.exit(main())
