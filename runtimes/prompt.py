"""From a user's question and images to the text the LLM sees, and where the images go.

The bundle carries the model's chat template (Jinja, as in Hugging Face tokenizers).
We render it exactly as ``processor.apply_chat_template`` would, then the LLM backend
tokenizes the whole string once (special tokens parsed), so the ids equal the HF
processor's except that each image is one ``<image>`` id instead of N copies; the
runtime puts the N image embeddings where that id stands.

Image placement: ``<image>`` markers in the prompt are filled in order and must match
the number of images given; a prompt without markers gets its images in front, one
``<image>\\n`` each, as LLaVA does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from llava_edge.errors import PromptError
from llava_edge.templates import IMAGE_TOKEN


@lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """``{% generation %}`` marks assistant text for HF's mask; it renders as-is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    # HF renders chat templates with trim_blocks / lstrip_blocks in a sandbox.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, "jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def user_message(prompt: str, n_images: int) -> dict:
    """A user message in the HF shape, with the images placed (see module docstring)."""
    if not prompt.strip():
        raise PromptError("the prompt is empty")
    n_markers = prompt.count(IMAGE_TOKEN)
    if n_markers:
        if n_markers != n_images:
            raise PromptError(f"the prompt has {n_markers} {IMAGE_TOKEN} marker(s) but "
                              f"{n_images} image(s) were given")
        return {"role": "user", "content": prompt}
    return {"role": "user",
            "content": [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]}


def check_messages(messages: object) -> None:
    """Raise :class:`PromptError` naming the first message that is not in the Hugging
    Face shape: ``{"role": str, "content": str | [{"type": "text", "text": str} |
    {"type": "image"}, ...]}``. Templates assume that shape; without this check a
    malformed list would fail inside Jinja with a TypeError or render garbage."""
    if not isinstance(messages, (list, tuple)):
        raise PromptError(f"messages must be a list, not {type(messages).__name__}")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise PromptError(f"{where} must be a dict, not {type(m).__name__}")
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise PromptError(f"{where}.role must be a non-empty string")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)):
            raise PromptError(f"{where}.content must be a string or a list of parts")
        for j, part in enumerate(content):
            ok = isinstance(part, dict) and (
                part.get("type") == "image"
                or (part.get("type") == "text" and isinstance(part.get("text"), str)))
            if not ok:
                raise PromptError(f"{where}.content[{j}] must be {{'type': 'image'}} or "
                                  "{'type': 'text', 'text': str}")


def render(template: str, messages: list[dict], special_tokens: dict[str, str],
           add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with the chat ``template`` as transformers would. A message
    list of the wrong shape, or one the template refuses (``raise_exception``, e.g. roles
    that do not alternate), is a :class:`PromptError`."""
    import jinja2

    check_messages(messages)
    try:
        return _compile(template).render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         **special_tokens)
    except jinja2.exceptions.TemplateError as e:  # raise_exception, undefined, syntax
        raise PromptError(f"the chat template refused the messages: {e}") from None
    except (TypeError, ValueError) as e:  # a custom template meeting unexpected values
        raise PromptError(f"the chat template failed on the messages: {e}") from None


@dataclass(frozen=True)
class Segment:
    """A run of text token ids, or the place of one image (``image_index``)."""

    tokens: tuple[int, ...] = ()
    image_index: int | None = None


def split_at_images(ids: list[int], image_token_id: int) -> list[Segment]:
    """Split tokenized prompt ``ids`` into text runs and image places, in order."""
    segments, run, n_img = [], [], 0
    for t in ids:
        if t == image_token_id:
            if run:
                segments.append(Segment(tokens=tuple(run)))
                run = []
            segments.append(Segment(image_index=n_img))
            n_img += 1
        else:
            run.append(t)
    if run:
        segments.append(Segment(tokens=tuple(run)))
    return segments
