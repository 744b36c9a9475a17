#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/hf-tiny-llama/, a tiny random Llama in Hugging Face's layout (F16 safetensors in two
shards with their index, config.json, a byte-level BPE tokenizer trained here with `tokenizers`), and
hf-tiny-llama.logits: transformers' logits for a few token ids, which test-quant-convert compares with ours.
Likewise hf-tiny-qwen2/ (one BF16 model.safetensors, q/k/v biases, the same tokenizer) and its .logits, and
hf-tiny.tokens: the tokenizer's ids for a few texts ("text<TAB>id id ..."), text escaped as a C string.

    pip install torch transformers tokenizers safetensors
    python3 tests/data/make-hf-tiny.py

Output format (text): "tokens N id..." then N lines of n_vocab logits (float32, %.9g), one per position.
"""
import os
import shutil

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "hf-tiny-llama")
OUT_QWEN2 = os.path.join(HERE, "hf-tiny-qwen2")
TOKEN_TEXTS = ["Once upon a time the fox ran.", "def add(a, b):\n    return 12345", "spaces   and\ttabs!",
               "<|im_start|>user hi<|im_end|>"]
TOKENS = [1, 17, 42, 250, 7, 99, 3]

TEXT = [
    "Once upon a time there was a little fox who lived in the forest.",
    "The fox liked to run and jump and play with the other animals.",
    "One day the fox found a shiny stone near the river and took it home.",
    "def add(a, b):\n    return a + b\n",
    "Numbers like 12345 and 2026 are split, and spaces   too.",
] * 4

CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")


def randomize_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Not all ones, so that a norm weight in the wrong place shows.
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.uniform_(-0.5, 0.5)


def write_logits(out, cls, path):
    # The reference: the saved weights, computed in float32.
    ref = cls.from_pretrained(out, torch_dtype=torch.float32)
    ref.eval()
    with torch.no_grad():
        logits = ref(torch.tensor([TOKENS])).logits[0]
    with open(path, "w") as f:
        f.write("tokens %d %s\n" % (len(TOKENS), " ".join(str(t) for t in TOKENS)))
        for row in logits.tolist():
            f.write(" ".join("%.8g" % v for v in row) + "\n")


def c_escape(s):
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def main():
    torch.manual_seed(1234)
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.rmtree(OUT_QWEN2, ignore_errors=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(TEXT, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(OUT)
    tok.save_pretrained(OUT_QWEN2)
    with open(os.path.join(HERE, "hf-tiny.tokens"), "w") as f:
        for text in TOKEN_TEXTS:
            f.write("%s\t%s\n" % (c_escape(text), " ".join(str(i) for i in bpe.encode(text).ids)))

    cfg = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.15,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    randomize_norms(model)
    model = model.to(torch.float16)
    model.save_pretrained(OUT, max_shard_size="100KB", safe_serialization=True)
    write_logits(OUT, LlamaForCausalLM, os.path.join(HERE, "hf-tiny-llama.logits"))

    # qwen2: untied head, biases, BF16, one file, a different RoPE theta and norm epsilon.
    cfg = Qwen2Config(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                      rope_theta=50000.0, tie_word_embeddings=False, initializer_range=0.2,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    randomize_norms(model)
    model = model.to(torch.bfloat16)
    model.save_pretrained(OUT_QWEN2, safe_serialization=True)
    write_logits(OUT_QWEN2, Qwen2ForCausalLM, os.path.join(HERE, "hf-tiny-qwen2.logits"))


if __name__ == "__main__":
    main()
