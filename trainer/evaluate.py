"""Evaluate a model on LLaVA-format questions: multiple-choice accuracy and exact match.

The model is anything with the :class:`Answerer` shape, ``answer(image, prompt) -> str``:
the user's turn in (its text, with the ``<image>`` marker where the image goes, and the
image), the reply out. :class:`TorchAnswerer` is a checkpoint run by transformers (greedy
decoding); a runtime bundle plugs in the same way.

Scoring, per sample (the first human turn and the gpt answer after it):

* **multiple choice** when the sample lists ``choices`` (the shapes eval and ScienceQA
  style) or its prompt has lettered option lines (``A. ...``) and the answer is a letter:
  the letter is parsed from the reply as LLaVA's ScienceQA evaluation does (the reply is
  the letter, starts with ``"B."`` / ``"B)"`` / ``"(B)"``, or says ``"The answer is B"``);
  a reply with no letter counts as wrong and as *unparsed*;
* **exact match** otherwise: the reply equals the answer after lower-casing, trimming
  whitespace and a final full stop.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from llava_edge.errors import LlavaEdgeError
from llava_edge.progress import Progress
from llava_edge.templates import IMAGE_TOKEN

_OPTION_LINE = re.compile(r"^([A-Z])\.\s", re.MULTILINE)
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[.):]|\s|$)")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-Z])\b", re.IGNORECASE)


class Answerer(Protocol):
    def __call__(self, image, prompt: str) -> str:
        """Reply to ``prompt`` (a user turn with ``<image>`` where the image goes) about
        ``image`` (a PIL image, or None for a text-only question)."""


@dataclass
class Prediction:
    sample_id: str
    kind: str  # the sample's "kind", or "multiple_choice" / "short_answer"
    scoring: str  # "multiple_choice" or "exact_match"
    expected: str
    output: str
    parsed: str | None
    correct: bool


@dataclass
class EvalReport:
    n: int
    accuracy: float
    multiple_choice: dict
    exact_match: dict
    by_kind: dict
    unparsed: int
    seconds: float
    predictions: list[Prediction] = field(default_factory=list, repr=False)

    def to_dict(self, with_predictions: bool = False) -> dict:
        out = asdict(self)
        if not with_predictions:
            out.pop("predictions")
        return out


def option_letters(sample: dict, prompt: str) -> str:
    """The option letters of a multiple-choice sample ("" if it is not one)."""
    if isinstance(sample.get("choices"), list):
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(sample["choices"])]
    return "".join(_OPTION_LINE.findall(prompt))


def parse_choice(reply: str, letters: str) -> str | None:
    """The option letter a reply gives, or None (see the module docstring)."""
    text = reply.strip()
    match = _LEADING_LETTER.match(text)
    if match and match.group(1) in letters:
        return match.group(1)
    found = _ANSWER_IS.findall(text)
    if len(found) == 1 and found[0].upper() in letters:
        return found[0].upper()
    return None


def normalize_answer(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def evaluate(samples: list[dict], answer: Answerer, image_folder: str | Path | None = None,
             progress: Progress | None = None) -> EvalReport:
    """Ask ``answer`` every sample's first question and score the replies."""
    from PIL import Image

    folder = Path(image_folder) if image_folder is not None else None
    predictions: list[Prediction] = []
    start = time.perf_counter()
    for index, sample in enumerate(samples):
        sample_id = str(sample.get("id", index))
        turns = sample["conversations"]
        prompt, expected = turns[0]["value"], str(sample.get("answer", turns[1]["value"]))
        image = None
        if "image" in sample:
            if folder is None:
                raise LlavaEdgeError(f"sample {sample_id} has an image; give --image-folder")
            path = folder / sample["image"]
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except OSError as e:
                raise LlavaEdgeError(f"sample {sample_id}: cannot read image {path}: {e}") from e
        output = answer(image, prompt)
        letters = option_letters(sample, prompt)
        if letters and len(expected) == 1 and expected in letters:
            parsed = parse_choice(output, letters)
            scoring, correct = "multiple_choice", parsed == expected
        else:
            parsed = normalize_answer(output)
            scoring, correct = "exact_match", parsed == normalize_answer(expected)
        kind = str(sample.get("kind") or scoring)
        predictions.append(Prediction(sample_id, kind, scoring, expected, output, parsed,
                                      correct))
        if progress is not None:
            progress(index + 1, len(samples))
    return _report(predictions, time.perf_counter() - start)


def _score(predictions: list[Prediction]) -> dict:
    n = len(predictions)
    correct = sum(p.correct for p in predictions)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None}


def _report(predictions: list[Prediction], seconds: float) -> EvalReport:
    by_kind: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_kind[p.kind].append(p)
    overall = _score(predictions)
    return EvalReport(
        n=len(predictions),
        accuracy=overall["accuracy"] if predictions else 0.0,
        multiple_choice=_score([p for p in predictions if p.scoring == "multiple_choice"]),
        exact_match=_score([p for p in predictions if p.scoring == "exact_match"]),
        by_kind={k: _score(v) for k, v in sorted(by_kind.items())},
        unparsed=sum(1 for p in predictions if p.scoring == "multiple_choice" and p.parsed is None),
        seconds=round(seconds, 3),
        predictions=predictions,
    )


class TorchAnswerer:
    """A checkpoint answering through transformers: its template, processor, greedy decoding.

    The prompt template is the one the checkpoint was trained in (``auto``: see
    :func:`llava_edge.trainer.conversation.make_chat_format`); images are padded to a
    square in the mean colour when the checkpoint's training did so (LLaVA-1.5's ``pad``).
    LLaVA-NeXT checkpoints (``llava_next``) take the image as is: their processor tiles it.
    """

    def __init__(self, checkpoint: str | Path, *, template: str = "auto",
                 max_new_tokens: int = 32, device: str | None = None):
        import torch
        from transformers import AutoProcessor
        from transformers.utils import logging as hf_logging

        from llava_edge.checkpoint_info import image_aspect_ratio, read_json
        from llava_edge.trainer.architectures import check_model_type, model_class
        from llava_edge.trainer.conversation import make_chat_format

        hf_logging.disable_progress_bar()
        path = Path(checkpoint)
        config = read_json(path / "config.json", "config.json")
        model_type = check_model_type(config, path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = model_class(model_type).from_pretrained(path, dtype=dtype)
        self.model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.format = make_chat_format(template, self.processor.tokenizer, config)
        self.pad = image_aspect_ratio(config) == "pad"
        self.max_new_tokens = max_new_tokens
        tokenizer = self.processor.tokenizer
        stops = {tokenizer.eos_token_id} | {
            tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",)
            if t in tokenizer.get_vocab()}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self._torch = torch

    def __call__(self, image, prompt: str) -> str:
        from llava_edge.trainer.conversation import to_messages
        from llava_edge.runtimes.preprocess import expand_to_square

        user = to_messages([{"from": "human", "value": prompt}])[0]["content"]
        text = self.format.prompt(user)
        if image is not None and self.pad:
            image = expand_to_square(image, self.processor.image_processor.image_mean)
        if image is None and IMAGE_TOKEN in text:
            raise LlavaEdgeError("the prompt has an <image> marker but no image was given")
        inputs = self.processor(text=text, images=image, return_tensors="pt").to(
            self.device, dtype=self.model.dtype)
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, eos_token_id=self.stop_ids,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
