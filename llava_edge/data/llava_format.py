"""Check that data is in the LLaVA JSON format before training on it.

The format (as in LLaVA's ``llava_v1_5_mix665k.json`` and ``blip_laion_cc_sbu_558k.json``)
is a JSON list of samples::

    {"id": "000001", "image": "train/000001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat color is the circle?"},
                       {"from": "gpt", "value": "red"}]}

Rules enforced here:

* the top level is a list, and each sample is an object;
* ``conversations`` is a non-empty list of ``{"from": "human"|"gpt", "value": str}`` turns
  that starts with human, alternates, and ends with a gpt answer;
* ``id`` is optional, a string or an integer (and, with ``unique_ids``, unique);
* ``image`` is optional, a non-empty string; with it, exactly one ``<image>`` marker appears
  in the conversation and it is in the first human turn; without it, there is no marker;
* with ``check_images``, every image exists under ``image_folder``.

Errors are :class:`LlavaFormatError`, whose message names the file, the sample (index and
id) and what is wrong, and stops at the first problem found.
"""

from __future__ import annotations

import json
from pathlib import Path

from llava_edge.errors import LlavaEdgeError

IMAGE_MARKER = "<image>"
ROLES = ("human", "gpt")


class LlavaFormatError(LlavaEdgeError, ValueError):
    """Data that is not in the LLaVA JSON format."""


def _where(source: str, index: int, sample: object) -> str:
    """How errors name a sample: "data.json: sample 3 (id 'train-000003')"."""
    where = f"{source}: sample {index}"
    if isinstance(sample, dict) and "id" in sample:
        where += f" (id {sample['id']!r})"
    return where


def _check_turns(conversations: object, where: str) -> list[dict]:
    """Check the turn structure; return the turns."""
    if not isinstance(conversations, list) or not conversations:
        raise LlavaFormatError(f"{where}: 'conversations' must be a non-empty list")
    for j, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise LlavaFormatError(f"{where}: turn {j} must be an object with 'from' and 'value'")
        expected = ROLES[j % 2]
        role = turn.get("from")
        if role not in ROLES:
            raise LlavaFormatError(
                f"{where}: turn {j} has 'from' {role!r}; expected 'human' or 'gpt'"
            )
        if role != expected:
            raise LlavaFormatError(
                f"{where}: turn {j} is from {role!r} but should be from {expected!r} "
                "(turns start with human and alternate human, gpt)"
            )
        if not isinstance(turn.get("value"), str):
            raise LlavaFormatError(f"{where}: turn {j} 'value' must be a string")
    if len(conversations) % 2:
        raise LlavaFormatError(f"{where}: the last human turn has no gpt answer")
    return conversations


def _check_image_marker(turns: list[dict], has_image: bool, where: str) -> None:
    """With an image: one ``<image>``, in the first human turn. Without: none."""
    counts = [turn["value"].count(IMAGE_MARKER) for turn in turns]
    total = sum(counts)
    if not has_image:
        if total:
            raise LlavaFormatError(f"{where}: has an {IMAGE_MARKER} marker but no 'image'")
        return
    if total == 0:
        raise LlavaFormatError(
            f"{where}: has an 'image' but no {IMAGE_MARKER} marker in the first human turn"
        )
    for j, n in enumerate(counts):
        if n and turns[j]["from"] == "gpt":
            raise LlavaFormatError(f"{where}: {IMAGE_MARKER} marker in gpt turn {j}")
    if total > 1:
        raise LlavaFormatError(
            f"{where}: {IMAGE_MARKER} marker appears {total} times; expected once"
        )
    if counts[0] != 1:
        j = counts.index(1)
        raise LlavaFormatError(
            f"{where}: {IMAGE_MARKER} marker is in turn {j}, not in the first human turn"
        )


def _check_sample(
    sample: object, where: str, image_folder: Path | None, check_images: bool
) -> None:
    if not isinstance(sample, dict):
        raise LlavaFormatError(f"{where}: must be an object, got {type(sample).__name__}")
    if "conversations" not in sample:
        raise LlavaFormatError(f"{where}: missing 'conversations'")
    turns = _check_turns(sample["conversations"], where)
    sample_id = sample.get("id")
    # bool is an int subclass in Python; an id of true is not meant.
    if "id" in sample and (not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool)):
        raise LlavaFormatError(f"{where}: 'id' must be a string or an integer")
    has_image = "image" in sample
    if has_image and (not isinstance(sample["image"], str) or not sample["image"]):
        raise LlavaFormatError(
            f"{where}: 'image' must be a non-empty string (a path relative to the image folder)"
        )
    _check_image_marker(turns, has_image, where)
    if check_images and has_image:
        assert image_folder is not None  # checked by validate_samples
        if not (image_folder / sample["image"]).is_file():
            raise LlavaFormatError(
                f"{where}: image {sample['image']!r} not found under {image_folder}"
            )


def validate_samples(
    samples: list,
    source: str = "<data>",
    image_folder: Path | None = None,
    check_images: bool = False,
    *,
    unique_ids: bool = False,
) -> None:
    """Raise :class:`LlavaFormatError` unless ``samples`` is valid LLaVA data.

    ``source`` names the data in messages (usually the file path). With ``check_images``,
    every ``image`` must be a file under ``image_folder``. With ``unique_ids``, no two
    samples may share an ``id`` (off by default: LLaVA's own training code does not need
    unique ids, and some published mixes reuse them).
    """
    if check_images and image_folder is None:
        raise ValueError("check_images=True needs an image_folder")
    folder = Path(image_folder) if image_folder is not None else None
    if not isinstance(samples, list):
        raise LlavaFormatError(
            f"{source}: the top level must be a list of samples, got {type(samples).__name__}"
        )
    first_index_of_id: dict[object, int] = {}
    for index, sample in enumerate(samples):
        where = _where(source, index, sample)
        _check_sample(sample, where, folder, check_images)
        if unique_ids and "id" in sample:
            # Keyed by (type, value): "1" and 1 are different ids.
            key = (type(sample["id"]).__name__, sample["id"])
            if key in first_index_of_id:
                raise LlavaFormatError(
                    f"{where}: duplicate id (first used by sample {first_index_of_id[key]})"
                )
            first_index_of_id[key] = index


def check_sample(
    sample: object,
    index: int,
    source: str = "<data>",
    image_folder: Path | None = None,
    check_images: bool = False,
) -> None:
    """Raise :class:`LlavaFormatError` unless sample number ``index`` of ``source`` is valid.

    The one-sample form of :func:`validate_samples`, for loaders that check each sample
    when they read it.
    """
    if check_images and image_folder is None:
        raise ValueError("check_images=True needs an image_folder")
    folder = Path(image_folder) if image_folder is not None else None
    _check_sample(sample, _where(source, index, sample), folder, check_images)


def load_llava_json(
    path: str | Path,
    image_folder: Path | None = None,
    check_images: bool = False,
    *,
    unique_ids: bool = False,
) -> list[dict]:
    """Read a LLaVA JSON file, validate it with :func:`validate_samples`, and return it."""
    path = Path(path)
    samples = read_llava_json(path)
    validate_samples(
        samples,
        source=str(path),
        image_folder=image_folder,
        check_images=check_images,
        unique_ids=unique_ids,
    )
    return samples


def read_llava_json(path: str | Path):
    """Parse a LLaVA JSON file without checking its samples; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LlavaFormatError(f"{path}: cannot read: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LlavaFormatError(f"{path}: not valid JSON: {e}") from e
