"""Prompt templates: how a conversation becomes the text the LLM sees.

Two families, each written as a Jinja chat template (the form Hugging Face tokenizers,
processors and llama.cpp's GGUF metadata all carry):

* ``vicuna_v1``: LLaVA-1.5's conversation format for Llama-family models,
  ``SYSTEM USER: <image>\\nQ ASSISTANT: A</s>USER: ...``.
* ``chatml``: the Qwen2 format of llava-interleave / llava-onevision,
  ``<|im_start|>user\\n<image>\\nQ<|im_end|>\\n<|im_start|>assistant\\n``.

Messages follow the Hugging Face shape: ``{"role": "user", "content": "text"}`` or
``{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}``.
An image part renders as ``<image>\\n`` where it stands, as LLaVA puts it before the text.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHATML_SYSTEM = "You are a helpful assistant."

# Renders one message's content (string, or a list of image/text parts) into `text`.
_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

VICUNA_V1_JINJA = (
    _CONTENT
    + "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = render(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + render(message['content']) + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
    "{% generation %}{{- render(message['content']) + eos_token -}}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

CHATML_JINJA = (
    _CONTENT
    + "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\n" + CHATML_SYSTEM + "<|im_end|>\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- render(message['content']) + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\n' -}}"
    "{%- else -%}{{- render(message['content']) + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class Template:
    """A named prompt template and the strings that end an assistant turn."""

    name: str
    jinja: str
    default_system: str
    stop: tuple[str, ...]


TEMPLATES: dict[str, Template] = {
    "vicuna_v1": Template("vicuna_v1", VICUNA_V1_JINJA, VICUNA_SYSTEM, ("</s>",)),
    "chatml": Template("chatml", CHATML_JINJA, CHATML_SYSTEM, ("<|im_end|>",)),
}
