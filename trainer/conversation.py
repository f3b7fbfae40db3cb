"""From a LLaVA conversation to ``input_ids`` and ``labels``: prompt templates and masking.

Three kinds of format:

* ``plain`` (stage 1, LLaVA's feature alignment): the sample is ``<image>`` + caption +
  ``\\n``; the human turn is dropped and the loss is on the caption and its newline.
* a Jinja chat template: ``vicuna_v1`` or ``chatml`` from :mod:`llava_edge.templates`, or
  the tokenizer's own (``tokenizer``). The conversation is rendered once, tokenized once
  with character offsets, and a token carries loss when it lies in an assistant reply or
  its end-of-turn marker (``</s>``, ``<|im_end|>``). System text, every user turn, image
  tokens and padding get ``-100``.

The reply spans come from rendering prefixes of the conversation: the text up to
assistant turn *i* with the generation prompt (``... ASSISTANT:``) is where the reply
starts, and the text through turn *i* (without trailing whitespace) is where it ends. So
any template whose renderings are prefixes of each other works, with no per-template
offsets to maintain.

After tokenizing, each ``<image>`` token is expanded into the model's number of image
tokens (what the HF processor does to the text), and the sample is cut to the maximum
length, never through the image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llava_edge.errors import LlavaEdgeError
from llava_edge.templates import IMAGE_TOKEN, TEMPLATES

IGNORE_INDEX = -100
PLAIN_SEPARATOR = "\n"
LLAMA_FAMILY = ("llama", "mistral")


class SampleError(LlavaEdgeError):
    """A sample that cannot be turned into a training example (the caller adds its id)."""


@dataclass(frozen=True)
class Encoded:
    """One training example: token ids, labels (``-100`` where no loss) and image count."""

    input_ids: list[int]
    labels: list[int]
    n_images: int

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def to_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA turns (``from``/``value``) as chat messages (``role``/``content``).

    As LLaVA does, an ``<image>`` marker is moved to the start of its turn, followed by a
    newline, wherever the data put it.
    """
    messages = []
    for turn in conversations:
        text = turn["value"]
        if IMAGE_TOKEN in text:
            text = IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()
        role = "user" if turn["from"] == "human" else "assistant"
        messages.append({"role": role, "content": text})
    return messages


class ChatFormat(Protocol):
    """How one prompt template renders conversations, for training and for inference."""

    name: str

    def reply_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The full text and the character spans that carry loss."""

    def prompt(self, user_text: str) -> str:
        """The text for one user turn followed by the start of the assistant's reply."""


class PlainFormat:
    """LLaVA's ``plain`` template: ``<image>`` + caption + newline, loss on the caption."""

    name = "plain"

    def reply_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        if len(messages) != 2 or IMAGE_TOKEN not in messages[0]["content"]:
            raise SampleError("the plain (stage 1) template needs an image and exactly one "
                              "human turn and one gpt answer")
        text = IMAGE_TOKEN + messages[1]["content"] + PLAIN_SEPARATOR
        return text, [(len(IMAGE_TOKEN), len(text))]

    def prompt(self, user_text: str) -> str:
        # Stage 1 never sees the question: the caption follows the image directly.
        return IMAGE_TOKEN if IMAGE_TOKEN in user_text else ""


class JinjaFormat:
    """A chat template in Jinja (``vicuna_v1``, ``chatml`` or the tokenizer's own)."""

    def __init__(self, name: str, jinja: str, tokenizer):
        self.name = name
        self.jinja = jinja
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.jinja, tokenize=False,
            add_generation_prompt=add_generation_prompt)

    def reply_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        text = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1]).rstrip()
            if not (through.startswith(before) and text.startswith(through)):
                raise LlavaEdgeError(
                    f"template {self.name!r} does not render conversations as prefixes of "
                    "each other, so replies cannot be located for the loss mask; choose "
                    "--template vicuna_v1 or chatml")
            spans.append((len(before), len(through)))
        return text, spans

    def prompt(self, user_text: str) -> str:
        return self.render([{"role": "user", "content": user_text}], add_generation_prompt=True)


def make_chat_format(name: str, tokenizer, model_config: dict) -> ChatFormat:
    """The format called ``name``; ``auto`` picks the checkpoint's template.

    ``auto``: the ``llava_edge.template`` of ``config.json`` when there is one; else
    ``vicuna_v1`` for a Llama-family LLM (LLaVA-1.5's format); else the tokenizer's own
    chat template (e.g. ChatML for Qwen2).
    """
    if name == "auto":
        name = auto_template_name(tokenizer, model_config)
    if name == "plain":
        return PlainFormat()
    if name in TEMPLATES:
        return JinjaFormat(name, TEMPLATES[name].jinja, tokenizer)
    if name == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise LlavaEdgeError("the checkpoint's tokenizer has no chat template; choose "
                                 "--template vicuna_v1 or chatml")
        return JinjaFormat("tokenizer", tokenizer.chat_template, tokenizer)
    raise LlavaEdgeError(f"unknown template {name!r}; choose plain, vicuna_v1, chatml, "
                         "tokenizer or auto")


def auto_template_name(tokenizer, model_config: dict) -> str:
    """The template ``auto`` stands for (see :func:`make_chat_format`)."""
    ours = (model_config.get("llava_edge") or {}).get("template")
    if ours:
        return ours
    text_type = (model_config.get("text_config") or {}).get("model_type", "llama")
    if text_type in LLAMA_FAMILY or not getattr(tokenizer, "chat_template", None):
        return "vicuna_v1"
    return "tokenizer"


class ConversationEncoder:
    """Turns LLaVA conversations into :class:`Encoded` examples for one model.

    ``n_image_tokens`` is how many tokens the processor expands one ``<image>`` into; for
    LLaVA-NeXT, where the count depends on the image, it is ``None`` and :meth:`encode`
    is given each sample's count.
    """

    def __init__(self, chat_format: ChatFormat, tokenizer, image_token_id: int,
                 n_image_tokens: int | None, max_length: int):
        if not getattr(tokenizer, "is_fast", False):
            raise LlavaEdgeError("training needs a fast (tokenizers) tokenizer for the loss "
                                 "mask; this checkpoint's tokenizer is a slow one")
        self.format = chat_format
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.n_image_tokens = n_image_tokens
        self.max_length = max_length

    def encode(self, conversations: list[dict], n_image_tokens: int | None = None) -> Encoded:
        """Tokenize, mask, expand the image and truncate one conversation.

        ``n_image_tokens``: this sample's image token count (LLaVA-NeXT), else the
        encoder's fixed one.
        """
        text, spans = self.format.reply_spans(to_messages(conversations))
        bos = getattr(self.tokenizer, "bos_token", None)
        # The tokenizer adds BOS (Llama) as it does at inference, unless the template did.
        add_special = not (bos and text.startswith(bos))
        tokens = self.tokenizer(text, add_special_tokens=add_special,
                                return_offsets_mapping=True)
        ids = list(tokens["input_ids"])
        labels = [
            token if _in_spans(start, end, spans) and token != self.image_token_id
            else IGNORE_INDEX
            for token, (start, end) in zip(ids, tokens["offset_mapping"])
        ]
        n_images = ids.count(self.image_token_id)
        n_tokens = n_image_tokens if n_image_tokens is not None else self.n_image_tokens
        if n_images and n_tokens is None:
            raise SampleError("has an <image> marker but no image to count its tokens from")
        ids, labels = self._expand_images(ids, labels, n_tokens)
        return self._truncate(Encoded(ids, labels, n_images))

    def _expand_images(self, ids: list[int], labels: list[int], n_tokens: int | None
                       ) -> tuple[list[int], list[int]]:
        out_ids: list[int] = []
        out_labels: list[int] = []
        for token, label in zip(ids, labels):
            if token == self.image_token_id:
                out_ids += [token] * n_tokens
                out_labels += [IGNORE_INDEX] * n_tokens
            else:
                out_ids.append(token)
                out_labels.append(label)
        return out_ids, out_labels

    def _truncate(self, encoded: Encoded) -> Encoded:
        """Cut to ``max_length`` tokens; refuse when that would cut into the image."""
        if len(encoded.input_ids) <= self.max_length:
            return encoded
        positions = [i for i, t in enumerate(encoded.input_ids) if t == self.image_token_id]
        if positions and positions[-1] >= self.max_length:
            raise SampleError(
                f"its image tokens end at position {positions[-1] + 1}, beyond the maximum "
                f"length {self.max_length}; raise --model-max-length")
        keep = self.max_length
        return Encoded(encoded.input_ids[:keep], encoded.labels[:keep], encoded.n_images)


def _in_spans(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    """Whether the token at characters ``[start, end)`` overlaps a reply span.

    Overlap, not containment: SentencePiece tokens carry their leading space ("▁red"
    covers " red") and the space belongs to the template's text before the reply.
    """
    return end > start and any(end > s and start < e for s, e in spans)
