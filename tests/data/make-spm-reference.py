#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference token ids for the SentencePiece-style tokenizer, from Google's sentencepiece library.

The vocabulary of stories260K.gguf (pieces, scores, types) is read with the gguf package and turned back into a
SentencePiece BPE model proto (byte fallback on, a dummy "▁" prefix, whitespace kept as it is), which the
sentencepiece library then encodes with. Output: one line per string, the UTF-8 text in hex, a tab, the ids.

    pip install gguf sentencepiece protobuf
    tests/data/make-spm-reference.py ../shared/models/stories260K.gguf > tests/data/spm-stories260K.tsv
"""

import sys

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

STRINGS = [
    "Hello world",
    "Once upon a time, there was a little girl named Lily.",
    "She liked to play in the park with her dog.",
    " leading space",
    "two  spaces and   three",
    "trailing space ",
    "line one\nline two\n\nthree",
    "tabs\tand\tmore",
    "café crème brûlée",
    "naïve façade",
    "日本語のテキスト",
    "emoji 😀 and 🎉!",
    "1234567890",
    "3.14159 is pi",
    "x = f(y) + 2 * z;",
    "if (a && b) { return; }",
    "\"quoted\" and 'single'",
    "a",
    " ",
    "   ",
    "The end.",
    "Ünïcödé",
    "mixed 中文 text",
]


def field(reader, key):
    f = reader.fields[key]
    return [f.contents(i) for i in range(len(f.data))]


def main():
    reader = gguf.GGUFReader(sys.argv[1])
    tokens = field(reader, "tokenizer.ggml.tokens")
    scores = field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id = 0
    m.trainer_spec.bos_id = 1
    m.trainer_spec.eos_id = 2
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, s, ty in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece = t
        p.score = s
        p.type = ty
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())

    for s in STRINGS:
        ids = sp.encode(s)
        print(s.encode().hex() + "\t" + " ".join(map(str, ids)))


if __name__ == "__main__":
    main()
