#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference renderings of GGUF chat templates (Jinja), from the jinja2 library, for the built-in formatters.

Templates: SmolLM2-135M-Instruct's own tokenizer.chat_template (read from the GGUF with the gguf package) and
the published templates of Llama 2 chat, Llama 3 instruct, Mistral 7B instruct v0.1, Gemma 2 it and
Phi-3 mini instruct, rendered as Hugging Face renders them (trim_blocks, lstrip_blocks,
add_generation_prompt). The BOS token that starts a rendering is dropped, since the tokenizer adds it.
Chats a template refuses (a system message where the family has none) are left out.

Output, one line per rendering: template name, then in hex: the template, the chat (role, 0x1f, content,
0x1e per message) and the rendered text.

    pip install gguf jinja2
    tests/data/make-chat-reference.py ~/.cache/quantd-test/SmolLM2-135M-Instruct.Q4_1.gguf > tests/data/chat-reference.tsv
"""

import sys

import gguf
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = {
    "llama2": (
        "<s>",
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    ),
    "llama3": (
        "<|begin_of_text|>",
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    ),
    "mistral": (
        "<s>",
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    ),
    "gemma2": (
        "<bos>",
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
        "{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
    ),
    "phi3": (
        "<s>",
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}",
    ),
}

CHATS = [
    [("user", "Hi")],
    [("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "How are you?")],
    [("user", "  padded  "), ("assistant", " spaced reply\n"), ("user", "multi\nline\n")],
    [("system", "Rules:\n1. be kind"), ("user", "Why?")],
]

EOS = {"<s>": "</s>", "<|begin_of_text|>": "<|eot_id|>", "<bos>": "<eos>"}


def raise_exception(msg):
    raise TemplateError(msg)


def main():
    reader = gguf.GGUFReader(sys.argv[1])
    smollm = reader.fields["tokenizer.chat_template"].contents()
    templates = dict(TEMPLATES, smollm=("<|endoftext|>", smollm))

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    for name, (bos, source) in templates.items():
        t = env.from_string(source)
        for chat in CHATS:
            messages = [{"role": r, "content": c} for r, c in chat]
            try:
                out = t.render(messages=messages, bos_token=bos, eos_token=EOS.get(bos, "<|im_end|>"),
                               add_generation_prompt=True)
            except TemplateError:
                continue
            if out.startswith(bos):
                out = out[len(bos):]
            encoded = "".join(f"{r}\x1f{c}\x1e" for r, c in chat)
            print(f"{name}\t{source.encode().hex()}\t{encoded.encode().hex()}\t{out.encode().hex()}")


if __name__ == "__main__":
    main()
