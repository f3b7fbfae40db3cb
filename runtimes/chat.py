"""A multi-turn conversation about images, on one :class:`LlavaEdge` model.

    chat = model.chat()
    chat.ask("What is in the image?", image="photo.jpg").text
    chat.ask("And what colour is it?").text       # the history goes with every turn
    chat.add_image(frame, bgr=True)               # goes with the next turn
    for piece in chat.stream("Compare the two images."):
        print(piece, end="")
    chat.reset()

Each turn sends the whole history (:meth:`LlavaEdge.stream_messages`), so an answer is
the one a stateless call with the same history gives; the model's prefix reuse keeps the
history's KV cache, so only the new turn's tokens are evaluated.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from llava_edge.runtimes.images import ImageInput, load_image
from llava_edge.runtimes.pipeline import Answer, LlavaEdge, Stream
from llava_edge.runtimes.prompt import user_message


class ChatSession:
    """Turns (``messages``: user / assistant dicts in the Hugging Face shape) and the
    images they refer to (``images``, in order). ``system`` replaces the template's system
    prompt; ``defaults`` are sampling keyword arguments of :meth:`LlavaEdge.stream`.

    A turn is recorded when its stream ends, also when it was stopped early: the answer
    so far (possibly empty), as the user saw it, becomes the assistant's message.
    """

    def __init__(self, model: LlavaEdge, system: str | None = None, **defaults):
        self.model = model
        self.system = system
        self.defaults = defaults
        self.messages: list[dict] = []
        self.images: list[Image.Image] = []
        self.pending: list[Image.Image] = []  # added with add_image, for the next turn

    def add_image(self, image: ImageInput, bgr: bool = False) -> None:
        """Attach ``image`` to the next turn (it is read now, so a bad file fails here)."""
        self.pending.append(load_image(image, self.model.max_pixels, bgr=bgr))

    def history(self) -> list[dict]:
        """The conversation as messages: the system prompt (if set), then the turns."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def stream(self, prompt: str,
               image: ImageInput | Sequence[ImageInput] | None = None, bgr: bool = False,
               **sampling) -> Stream:
        """Send ``prompt`` (with ``image``, one or several, and any images added with
        :meth:`add_image`) and stream the answer; ``<image>`` markers in ``prompt`` place
        the new images, else they go first."""
        taken = list(self.pending)
        new = taken + [load_image(img, self.model.max_pixels, bgr=bgr)
                       for img in _as_list(image)]
        user = user_message(prompt, len(new))

        def record(answer: Answer, completed: bool) -> None:
            self.messages += [user, {"role": "assistant", "content": answer.text}]
            self.images += new
            # images added while this turn ran go with the next one
            self.pending = [img for img in self.pending if not any(img is t for t in taken)]

        return self.model.stream_messages(self.history() + [user], self.images + new,
                                          **{**self.defaults, **sampling}, on_done=record)

    def ask(self, prompt: str, image: ImageInput | Sequence[ImageInput] | None = None,
            bgr: bool = False, **sampling) -> Answer:
        """:meth:`stream`, run to the end; returns the :class:`Answer`."""
        stream = self.stream(prompt, image, bgr=bgr, **sampling)
        for _ in stream:
            pass
        return stream.answer

    def reset(self) -> None:
        """Forget the turns and the images (also those added for the next turn). The
        system prompt stays, and so does its KV cache, which the next turn reuses."""
        self.messages, self.images, self.pending = [], [], []


def _as_list(image) -> list:
    if image is None:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]
