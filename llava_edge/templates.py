"""Prompt templates: how a conversation becomes the text the LLM sees.

Each is written as a Jinja chat template (the form Hugging Face tokenizers,
processors and llama.cpp's GGUF metadata all carry):

* ``vicuna_v1``: LLaVA-1.5's conversation format for Llama-family models,
  ``SYSTEM USER: <image>\\nQ ASSISTANT: A</s>USER: ...``.
* ``chatml``: the Qwen2 format of llava-interleave / llava-onevision,
  ``<|im_start|>user\\n<image>\\nQ<|im_end|>\\n<|im_start|>assistant\\n``.

Three more reproduce the original LLaVA repository's conversation formats
(``llava/conversation.py``, ``Conversation.get_prompt``) for ``llava-edge convert``:

* ``llava_llama_2``: ``[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nQ [/INST] A </s><s>[INST] ...``
  (LLaVA on Llama-2-chat).
* ``mistral_instruct``: the same without a system block or ``<s>`` between turns
  (LLaVA-1.6 on Mistral-7B-Instruct).
* ``chatml_direct``: ChatML with no newline after ``<|im_end|>``, as the original's
  ``MPT`` separator style writes it (LLaVA-1.6-34B).

None of them writes the leading ``<s>``: the tokenizer adds BOS, as LLaVA's own
``tokenizer_image_token`` does (``get_prompt`` strips it from the text).

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
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the "
    "visual content that the user provides, and assist the user with a variety of tasks "
    "using natural language."
)
CHATML_DIRECT_SYSTEM = "Answer the questions."

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


def _system_or(default: str) -> str:
    """Jinja that sets ``system`` (a leading system message, else ``default``) and
    ``loop_messages`` (the messages after it)."""
    return ("{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = render(messages[0]['content']) -%}"
            "{%- set loop_messages = messages[1:] -%}"
            "{%- else -%}{%- set system = '" + default.replace("'", "\\'") + "' -%}"
            "{%- set loop_messages = messages -%}{%- endif -%}")


def _llama_2_jinja(default_system: str, between_turns: str) -> str:
    """LLaVA's ``LLAMA_2`` separator style. A user turn is ``[INST] Q [/INST]``, the
    first one with the system prompt in ``<<SYS>>`` (left out when the system prompt is
    empty); a reply is `` A </s>``. ``between_turns`` (Jinja) goes before every user turn
    but the first: the original's ``sep``, whose first copy ``get_prompt`` strips."""
    return (
        _CONTENT + _system_or(default_system)
        + "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if not loop.first -%}{{- " + between_turns + " -}}{%- endif -%}"
        "{%- if loop.first and system -%}"
        "{{- '[INST] <<SYS>>\n' + system + '\n<</SYS>>\n\n' + render(message['content'])"
        " + ' [/INST]' -}}"
        "{%- else -%}{{- '[INST] ' + render(message['content']) + ' [/INST]' -}}{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}{{- ' ' -}}"
        "{% generation %}{{- render(message['content']) + ' ' + eos_token -}}{% endgeneration %}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )  # no generation prompt: the model answers straight after "[/INST]"


# sep "<s>" (BOS) between turns; Mistral's variant has sep "".
LLAVA_LLAMA_2_JINJA = _llama_2_jinja(LLAVA_LLAMA_2_SYSTEM, "bos_token")
MISTRAL_INSTRUCT_JINJA = _llama_2_jinja("", "''")

# LLaVA's MPT separator style: system + sep, then role + message + sep, no newlines.
CHATML_DIRECT_JINJA = (
    _CONTENT + _system_or(CHATML_DIRECT_SYSTEM)
    + "{{- '<|im_start|>system\n' + system + '<|im_end|>' -}}"
    "{%- for message in loop_messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- render(message['content']) + '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}{{- render(message['content']) + '<|im_end|>' -}}{%- endif -%}"
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
    "llava_llama_2": Template("llava_llama_2", LLAVA_LLAMA_2_JINJA, LLAVA_LLAMA_2_SYSTEM,
                              ("</s>",)),
    "mistral_instruct": Template("mistral_instruct", MISTRAL_INSTRUCT_JINJA, "", ("</s>",)),
    "chatml_direct": Template("chatml_direct", CHATML_DIRECT_JINJA, CHATML_DIRECT_SYSTEM,
                              ("<|im_end|>",)),
}
