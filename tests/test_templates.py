"""The chat templates render LLaVA's conversation formats exactly."""

from __future__ import annotations

import jinja2
import pytest

from llava_edge.templates import TEMPLATES, VICUNA_SYSTEM


def _render(name: str, messages, add_generation_prompt=False, eos_token="</s>") -> str:
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])

    # transformers' {% generation %} block marks assistant text; plain jinja2 lacks it.
    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    env.add_extension(Generation)
    return env.from_string(TEMPLATES[name].jinja).render(
        messages=messages, add_generation_prompt=add_generation_prompt, eos_token=eos_token)


CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]},
    {"role": "assistant", "content": "A circle."},
    {"role": "user", "content": "What colour?"},
]


def test_vicuna_v1_matches_llava_conversation_format():
    # LLaVA's conv_vicuna_v1: system + " ", then "ROLE: msg" + sep, seps (" ", "</s>").
    expected = (VICUNA_SYSTEM + " USER: <image>\nWhat shape? ASSISTANT: A circle.</s>"
                "USER: What colour? ASSISTANT:")
    assert _render("vicuna_v1", CONVERSATION, add_generation_prompt=True) == expected


def test_vicuna_v1_custom_system_prompt():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert _render("vicuna_v1", messages, True) == "Be brief. USER: Hi ASSISTANT:"


def test_chatml_matches_llava_interleave_format():
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n<image>\nWhat shape?<|im_end|>\n"
                "<|im_start|>assistant\nA circle.<|im_end|>\n"
                "<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\n")
    assert _render("chatml", CONVERSATION, add_generation_prompt=True) == expected


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_stop_strings_end_assistant_turns(name):
    text = _render(name, CONVERSATION[:2])
    assert any(text.rstrip("\n").endswith(stop) for stop in TEMPLATES[name].stop)
