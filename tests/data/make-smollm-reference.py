#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes smollm-reference.txt: for 3 prompts, the prompt token ids, 64 greedy token ids and the top-5 logits at
3 positions, from an independent float32 numpy implementation of the llama forward pass over the weights of
SmolLM2-135M-Instruct.Q4_1.gguf dequantized by the PyPI gguf package. Prompts are tokenized by llama.cpp
(llama-cpp-python, vocab only), another independent implementation.

    pip install gguf numpy llama-cpp-python
    QUANTD_TEST_SMOLLM=.../SmolLM2-135M-Instruct.Q4_1.gguf python3 tests/data/make-smollm-reference.py \
        tests/data/smollm-reference.txt

Format, one record per line: "prompt <ids>", "greedy <ids>", "top5 <position> <id>:<logit> x5"; a position is
an index into prompt + greedy (the logits there predict the next token).
"""

import os
import sys

import numpy as np
from gguf import GGUFReader, quants

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
]
N_GEN = 64


def main():
    path = os.environ["QUANTD_TEST_SMOLLM"]
    out = sys.argv[1] if len(sys.argv) > 1 else "smollm-reference.txt"
    r = GGUFReader(path)
    kv = {f.name: f for f in r.fields.values()}

    def scalar(key):
        f = kv[key]
        return f.parts[f.data[0]][0]

    n_layer = int(scalar("llama.block_count"))
    n_embd = int(scalar("llama.embedding_length"))
    n_head = int(scalar("llama.attention.head_count"))
    n_kv = int(scalar("llama.attention.head_count_kv"))
    base = float(scalar("llama.rope.freq_base"))
    eps = float(scalar("llama.attention.layer_norm_rms_epsilon"))
    hd = n_embd // n_head
    W = {t.name: quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
        [int(x) for x in reversed(t.shape)]) for t in r.tensors}
    emb = W["token_embd.weight"]
    out_w = W.get("output.weight", emb)

    def rmsnorm(x, w):
        return (x / np.sqrt(np.mean(x * x, dtype=np.float32) + np.float32(eps))).astype(np.float32) * w

    inv = (base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd))

    def rope(x, pos):  # x: (heads, hd), adjacent pairs
        ang = pos * inv
        c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        a, b = x[:, 0::2], x[:, 1::2]
        y = np.empty_like(x)
        y[:, 0::2] = a * c - b * s
        y[:, 1::2] = a * s + b * c
        return y

    def run(ids, K, V):
        """Appends ids to the cache K, V (lists per layer) and returns the logits of each."""
        logits_all = []
        for tok in ids:
            pos = len(K[0])
            x = emb[tok].copy()
            for l in range(n_layer):
                p = f"blk.{l}."
                h = rmsnorm(x, W[p + "attn_norm.weight"])
                q = rope((W[p + "attn_q.weight"] @ h).reshape(n_head, hd), pos)
                k = rope((W[p + "attn_k.weight"] @ h).reshape(n_kv, hd), pos)
                v = (W[p + "attn_v.weight"] @ h).reshape(n_kv, hd)
                K[l].append(k)
                V[l].append(v)
                Ks, Vs = np.stack(K[l]), np.stack(V[l])  # (pos+1, n_kv, hd)
                att = np.empty((n_head, hd), dtype=np.float32)
                for hh in range(n_head):
                    g = hh // (n_head // n_kv)
                    sc = Ks[:, g, :] @ q[hh] / np.float32(np.sqrt(hd))
                    sc = np.exp(sc - sc.max())
                    sc /= sc.sum()
                    att[hh] = sc @ Vs[:, g, :]
                x = x + W[p + "attn_output.weight"] @ att.reshape(-1)
                h = rmsnorm(x, W[p + "ffn_norm.weight"])
                gt = W[p + "ffn_gate.weight"] @ h
                up = W[p + "ffn_up.weight"] @ h
                x = x + W[p + "ffn_down.weight"] @ ((gt / (1 + np.exp(-gt))) * up)
            logits_all.append(out_w @ rmsnorm(x, W["output_norm.weight"]))
        return logits_all

    from llama_cpp import Llama
    tok = Llama(path, vocab_only=True, verbose=False)

    lines = []
    for text in PROMPTS:
        prompt = tok.tokenize(text.encode(), add_bos=False, special=True)
        K = [[] for _ in range(n_layer)]
        V = [[] for _ in range(n_layer)]
        hist = run(prompt, K, V)
        gen = []
        for _ in range(N_GEN):
            nxt = int(np.argmax(hist[-1]))
            gen.append(nxt)
            hist += run([nxt], K, V)
        lines.append("prompt " + " ".join(map(str, prompt)))
        lines.append("greedy " + " ".join(map(str, gen)))
        for p in (len(prompt) - 1, len(prompt) + 20, len(prompt) + N_GEN - 2):
            top = np.argsort(-hist[p])[:5]
            lines.append(f"top5 {p} " + " ".join(f"{i}:{hist[p][i]:.6f}" for i in top))
        print(lines[-5:], flush=True)
    with open(out, "w") as f:
        f.write("# made by make-smollm-reference.py from SmolLM2-135M-Instruct.Q4_1.gguf\n")
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
