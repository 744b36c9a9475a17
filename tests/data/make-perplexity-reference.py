#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes perplexity-reference.txt: the perplexity of stories260K.gguf over perplexity-text.txt by
llama-perplexity's method (chunks of N_CTX tokens, the first token of each replaced by BOS, the second half
of each chunk scored), with llama.cpp (llama-cpp-python) tokenizing and computing the logits, and the
log-softmax done here in numpy. quantd's engine_perplexity() must agree.

    pip install numpy llama-cpp-python
    python3 tests/data/make-perplexity-reference.py ../shared/models/stories260K.gguf tests/data/perplexity-text.txt \
        64 > tests/data/perplexity-reference.txt
    python3 tests/data/make-perplexity-reference.py $QUANTD_TEST_SMOLLM tests/data/perplexity-text.txt \
        128 > tests/data/perplexity-smollm-reference.txt

Format: "n_tokens <n>", "n_ctx <n>", "chunks <n>", "scored <n>", "ppl <value>" (one per line).
"""

import sys

import numpy as np
from llama_cpp import Llama


def main():
    model, text_path, N_CTX = sys.argv[1], sys.argv[2], int(sys.argv[3])
    llm = Llama(model, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, logits_all=True, verbose=False)
    text = open(text_path, "rb").read()
    tokens = llm.tokenize(text, add_bos=True, special=False)
    n_chunks = len(tokens) // N_CTX
    first = N_CTX // 2
    nll = []
    for c in range(n_chunks):
        chunk = tokens[c * N_CTX:(c + 1) * N_CTX]
        chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:N_CTX], dtype=np.float64)
        for j in range(first, N_CTX - 1):
            row = logits[j]
            m = row.max()
            nll.append(np.log(np.exp(row - m).sum()) - (row[chunk[j + 1]] - m))
    nll = np.array(nll)
    print(f"# made by make-perplexity-reference.py with llama-cpp-python from {model.split('/')[-1]}")
    print(f"n_tokens {len(tokens)}")
    print(f"n_ctx {N_CTX}")
    print(f"chunks {n_chunks}")
    print(f"scored {len(nll)}")
    print(f"ppl {np.exp(nll.mean()):.6f}")


if __name__ == "__main__":
    main()
