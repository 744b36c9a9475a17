#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/hf-tiny-spm/, a tiny random Llama with a SentencePiece vocabulary as Llama 2, Mistral and
TinyLlama ship theirs: tokenizer.model (a BPE model with byte fallback, trained here with Google's
`sentencepiece` on the committed test texts), the tokenizer.json and tokenizer_config.json transformers makes
from it, config.json and F16 weights in one model.safetensors. Beside it:

  hf-tiny-spm.vocab   what sentencepiece says of every id: "id<TAB>piece in hex<TAB>score<TAB>type"
                      (type as the model proto numbers it, which GGUF's token_type shares)
  hf-tiny-spm.tokens  sentencepiece's ids for a few strings: "text in hex<TAB>id id ..." (no BOS); where
                      transformers' tokenizer disagrees, the script says so (a leading space)
  hf-tiny-spm.logits  transformers' logits for a few ids, as make-hf-tiny.py writes them
  hf-tiny-spm-unigram.json   a tokenizer.json with a Unigram model (as T5-style and some Llama folders have),
                      built with `tokenizers` from a Unigram sentencepiece model of the same size trained here
  hf-tiny-spm-unigram.vocab  that sentencepiece model's pieces, scores and types, as hf-tiny-spm.vocab

    pip install torch transformers tokenizers safetensors sentencepiece protobuf
    python3 tests/data/make-hf-tiny-spm.py
"""
import os
import shutil
import tempfile

import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "hf-tiny-spm")
TOKENS = [1, 17, 42, 250, 7, 99, 300, 2]

STRINGS = [
    "Hello world",
    "Once upon a time, there was a little fox who lived in the forest.",
    "The fox liked to run and jump.",
    " leading space",
    "two  spaces and   three",
    "trailing space ",
    "line one\nline two\n\nthree",
    "tabs\tand\tmore",
    "café crème brûlée",
    "日本語のテキスト",
    "emoji 😀 and 🎉!",
    "1234567890",
    "3.14159 is pi",
    "x = f(y) + 2 * z;",
    "if (a && b) { return; }",
    "\"quoted\" and 'single'",
    "a",
    " ",
    # A user-defined piece last: after one, llama.cpp's tokenizer (and ours) puts the dummy space in front of
    # the rest of the text again, sentencepiece does not.
    "a story <sep>",
    "Ünïcödé and zebra",
    "mixed 中文 text",
]

CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + "
                 "' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")


def write_vocab(model_file, path):
    sp = spm.SentencePieceProcessor(model_file=model_file)
    proto = pb.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    with open(path, "w") as f:
        for i in range(sp.get_piece_size()):
            f.write("%d\t%s\t%.9g\t%d\n" % (i, sp.id_to_piece(i).encode().hex(), sp.get_score(i),
                                            proto.pieces[i].type))
    return sp, proto


def write_unigram(tmp, lines):
    prefix = "unigram"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, model_type="unigram",
                                   vocab_size=400, byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2)
    sp, proto = write_vocab(os.path.join(tmp, prefix + ".model"), os.path.join(HERE, "hf-tiny-spm-unigram.vocab"))
    tok = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in (0, 1, 2)])
    tok.save(os.path.join(HERE, "hf-tiny-spm-unigram.json"))


def corpus():
    lines = []
    for name in ("perplexity-text.txt", "quant/story.txt"):
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            lines += [line.strip() for line in f if line.strip()]
    lines += ["def add(a, b):\n    return a + b", "Numbers like 12345 and 2026 are split."]
    return lines


def train(tmp, lines):
    # A relative prefix (the script runs in tmp): the proto keeps it, and a random path would change the file.
    prefix = "spm"
    # Llama 2's settings: BPE, byte fallback, digits split, no normalization, whitespace kept as it is.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, model_type="bpe",
                                   vocab_size=400, byte_fallback=True, split_digits=True,
                                   normalization_rule_name="identity", add_dummy_prefix=True,
                                   remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                                   user_defined_symbols=["<sep>"], character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return os.path.join(tmp, prefix + ".model")


def main():
    torch.manual_seed(4321)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        shutil.copy(train(tmp, corpus()), os.path.join(OUT, "tokenizer.model"))
        write_unigram(tmp, corpus())
        os.chdir(cwd)
    sp, _ = write_vocab(os.path.join(OUT, "tokenizer.model"), os.path.join(HERE, "hf-tiny-spm.vocab"))

    # transformers converts tokenizer.model into its tokenizer.json when it loads the folder.
    tok = LlamaTokenizer.from_pretrained(OUT, legacy=True, add_bos_token=True, add_eos_token=False)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(OUT)
    if not os.path.exists(os.path.join(OUT, "tokenizer.model")):
        raise SystemExit("save_pretrained dropped tokenizer.model")
    with open(os.path.join(HERE, "hf-tiny-spm.tokens"), "w") as f:
        for text in STRINGS:
            ids = sp.encode(text)
            hf = tok(text, add_special_tokens=False)["input_ids"]
            if hf != ids:
                # transformers' Metaspace splits a leading space differently; sentencepiece is the reference.
                print("transformers and sentencepiece disagree on %r: %s %s" % (text, hf, ids))
            f.write("%s\t%s\n" % (text.encode().hex(), " ".join(str(i) for i in ids)))

    cfg = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model = model.to(torch.float16)
    model.save_pretrained(OUT, safe_serialization=True)

    ref = LlamaForCausalLM.from_pretrained(OUT, dtype=torch.float32)
    ref.eval()
    with torch.no_grad():
        logits = ref(torch.tensor([TOKENS])).logits[0]
    with open(os.path.join(HERE, "hf-tiny-spm.logits"), "w") as f:
        f.write("tokens %d %s\n" % (len(TOKENS), " ".join(str(t) for t in TOKENS)))
        for row in logits.tolist():
            f.write(" ".join("%.8g" % v for v in row) + "\n")


if __name__ == "__main__":
    main()
