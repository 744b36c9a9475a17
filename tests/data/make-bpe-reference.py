#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference token ids for the byte-level BPE tokenizer, from Hugging Face's tokenizers library.

The vocabulary and merges of SmolLM2-135M-Instruct's GGUF are read with the gguf package and handed to
tokenizers' BPE model with a byte-level pre-tokenizer. Four pre-tokenizers are built the way each family's
tokenizer.json does: smollm (digits split one by one, then GPT-2's byte-level regex), gpt2, llama3 (its split
regex, and ignore_merges) and qwen2. The control tokens (token type 3) are added as special tokens for the
parse_special=1 rows and left out for the parse_special=0 rows, so that their text is tokenized as text.

Output, one line per case: pre-tokenizer, parse_special (0/1), the UTF-8 text in hex, the ids.

    pip install gguf tokenizers
    tests/data/make-bpe-reference.py ~/.cache/quantd-test/SmolLM2-135M-Instruct.Q4_1.gguf > tests/data/bpe-smollm.tsv
"""

import sys

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")

STRINGS = [
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "two  spaces,   three,    four",
    "line one\nline two\n\nthree\n\n\n",
    "\ttabbed\t\tline\r\nwindows",
    "   \n   \n",
    "café crème brûlée, naïve façade, Ångström",
    "Straße, Ärger, Öl, Übermut",
    "日本語のテキストです。",
    "中文文本，还有标点！",
    "한국어 텍스트",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "emoji 😀 and 🎉 and 👩‍👩‍👧‍👦!",
    "1234567890",
    "3.14159 and 1,000,000 and 2024-11-27",
    "def f(x):\n    return x ** 2  # square\n",
    "int main(void) { printf(\"%d\\n\", 42); }",
    "for (i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    "I'm sure you've seen it; they'll say we'd done it. IT'S DONE, YOU'RE RIGHT",
    "don't won't can't shouldn't",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "text<|endoftext|>more text",
    "<|im_end|><|im_end|>",
    "<|im_start",
    "a<b>c</b> & \"quotes\" 'single'",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.org, +1 (555) 123-4567",
    "~!@#$%^&*()_+-=[]{}|;:,./<>?",
    "ⅷ ½ ² ³ ٣ ๓",
    "x",
    "",
    "                                ",
    "word" * 20,
    "\u00a0non-breaking\u2003em space\u200bzero width",
]


def field(reader, key):
    f = reader.fields[key]
    return [f.contents(i) for i in range(len(f.data))]


def build(tokens, merges, types, pre, specials):
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=(pre == "llama3")))
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif pre == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3 if pre == "llama3" else QWEN2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == 3])
    return tok


def main():
    reader = gguf.GGUFReader(sys.argv[1])
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    types = field(reader, "tokenizer.ggml.token_type")

    for pre in ("smollm", "gpt2", "llama3", "qwen2"):
        for special in (1, 0):
            if special == 0 and pre != "smollm":
                continue
            tok = build(tokens, merges, types, pre, special)
            for s in STRINGS:
                ids = tok.encode(s, add_special_tokens=False).ids
                print(f"{pre}\t{special}\t{s.encode().hex()}\t{' '.join(map(str, ids))}")


if __name__ == "__main__":
    main()
