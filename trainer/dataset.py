"""LLaVA JSON data for training, read lazily: one sample is checked, its image loaded and
its conversation encoded only when the data loader asks for it.

As in LLaVA's ``LazySupervisedDataset``, the JSON list is parsed up front (one JSON array
cannot be read piecewise) and everything else happens per sample. A sample that cannot be
used (bad structure, ``<image>`` marker without an image or the reverse, missing or
unreadable image, image tokens past the maximum length) comes back as a
:class:`BadSample` naming the sample, never as an exception from inside a worker
process: the training loop then stops with that message or, with ``skip_bad_samples``,
counts and skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from llava_edge.data.llava_format import LlavaFormatError, check_sample, read_llava_json
from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.preprocess import expand_to_square
from llava_edge.templates import IMAGE_TOKEN

from llava_edge.trainer.conversation import ConversationEncoder, SampleError


class BadSampleError(LlavaEdgeError):
    """A training sample that cannot be used (raised unless bad samples are skipped)."""


@dataclass
class Example:
    """One encoded sample; ``pixel_values`` is ``None`` for a text-only sample.

    LLaVA-NeXT (anyres): ``pixel_values`` is ``[n_views, 3, S, S]`` (the base view and the
    tiles of the image's grid) and ``image_sizes`` the image's ``(height, width)``.
    """

    sample_id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: object  # torch.Tensor [3, H, W] (LLaVA) / [views, 3, S, S] (NeXT), or None
    image_sizes: object = None  # torch.Tensor [2] (NeXT) or None


@dataclass
class BadSample:
    """A sample that failed, with the message that names it."""

    sample_id: str
    message: str


def read_samples(path: str | Path) -> list:
    """Parse a LLaVA JSON file into its list of samples (the samples are checked later)."""
    path = Path(path)
    samples = read_llava_json(path)
    if not isinstance(samples, list):
        raise LlavaFormatError(
            f"{path}: the top level must be a list of samples, got {type(samples).__name__}")
    return samples


def image_tokens_per_image(processor) -> int:
    """How many tokens the processor expands one ``<image>`` into, asked of the processor
    itself on a blank image, so that the training text matches what it does at inference.

    Only for processors with a fixed count (LLaVA-1.5): a LLaVA-NeXT processor's count
    depends on each image's size, which :class:`LlavaDataset` asks per image.
    """
    if getattr(processor.image_processor, "image_grid_pinpoints", None):
        raise LlavaEdgeError("a LLaVA-NeXT (anyres) processor expands <image> into a number "
                             "of tokens that depends on the image's size; count it per image")
    size = processor.image_processor.crop_size or processor.image_processor.size
    side = size.get("height") or size.get("shortest_edge")
    blank = Image.new("RGB", (side, side))
    ids = processor(text=IMAGE_TOKEN, images=blank)["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return sum(1 for token in ids if token == image_id)


class LlavaDataset:
    """Samples of one or more LLaVA JSON files, encoded on access (a map-style dataset)."""

    def __init__(self, files: list[str | Path], image_folder: str | Path | None, processor,
                 encoder: ConversationEncoder, image_aspect_ratio: str = "pad"):
        """``image_aspect_ratio``: ``pad`` (to a square in the mean colour, then the
        processor), ``square`` (the processor's resize and crop) or ``anyres`` (LLaVA-NeXT:
        the processor's tiling, with the image's own count of image tokens)."""
        self.files = [Path(f) for f in files]
        self.image_folder = Path(image_folder) if image_folder is not None else None
        if self.image_folder is not None and not self.image_folder.is_dir():
            raise LlavaEdgeError(f"image folder {self.image_folder} does not exist")
        self.processor = processor
        self.image_processor = processor.image_processor
        self.encoder = encoder
        self.pad = image_aspect_ratio == "pad"
        self.anyres = image_aspect_ratio == "anyres"
        if self.anyres and not getattr(self.image_processor, "image_grid_pinpoints", None):
            raise LlavaEdgeError("image_aspect_ratio anyres needs a LLaVA-NeXT processor "
                                 "(one with image_grid_pinpoints)")
        # (file index, index in file, sample) for every sample, in file order.
        self.entries: list[tuple[int, int, object]] = []
        for k, path in enumerate(self.files):
            self.entries += [(k, i, s) for i, s in enumerate(read_samples(path))]
        if not self.entries:
            raise LlavaEdgeError(f"no samples in {', '.join(map(str, self.files))}")

    def __len__(self) -> int:
        return len(self.entries)

    def sample_id(self, index: int) -> str:
        """How messages name a sample: its ``id`` and where it is."""
        k, i, sample = self.entries[index]
        where = f"{self.files[k]}: sample {i}"
        if isinstance(sample, dict) and "id" in sample:
            where += f" (id {sample['id']!r})"
        return where

    def __getitem__(self, index: int) -> Example | BadSample:
        k, i, sample = self.entries[index]
        name = self.sample_id(index)
        try:
            check_sample(sample, i, str(self.files[k]))
            pixel_values = image_sizes = n_image_tokens = None
            if "image" in sample:
                image = self._load(sample["image"])
                if self.anyres:
                    pixel_values, image_sizes, n_image_tokens = self._anyres(image)
                else:
                    pixel_values = self._pixels(image)
            encoded = self.encoder.encode(sample["conversations"], n_image_tokens)
        except LlavaFormatError as e:
            return BadSample(name, str(e))
        except (SampleError, _ImageError) as e:
            return BadSample(name, f"{name}: {e}")
        return Example(name, encoded.input_ids, encoded.labels, pixel_values, image_sizes)

    def _anyres(self, image):
        """LLaVA-NeXT: the processor's views of ``image``, its size, and the number of
        tokens the processor expands its ``<image>`` into (asked of the processor on this
        image, so the count is the one inference uses)."""
        out = self.processor(text=IMAGE_TOKEN, images=image, return_tensors="pt")
        image_id = self.encoder.image_token_id
        n_tokens = int((out["input_ids"][0] == image_id).sum())
        return out["pixel_values"][0], out["image_sizes"][0], n_tokens

    def _load(self, relative: str):
        if self.image_folder is None:
            raise _ImageError(f"has image {relative!r} but no image folder was given "
                              "(--image-folder)")
        path = self.image_folder / relative
        if not path.is_file():
            raise _ImageError(f"image {relative!r} not found under {self.image_folder}")
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise _ImageError(f"cannot read image {relative!r}: {e}") from e
        return image

    def _pixels(self, image):
        if self.pad:
            image = expand_to_square(image, self.image_processor.image_mean)
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


class _ImageError(Exception):
    """An image that cannot be loaded (reported as a bad sample)."""
