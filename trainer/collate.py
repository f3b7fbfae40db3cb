"""Pad encoded examples into a batch for ``LlavaForConditionalGeneration``.

Right padding with the tokenizer's pad token; labels ``-100`` and attention mask 0 on the
padding. ``pixel_values`` stacks the images of the samples that have one, in batch order,
which is the order the model fills the ``<image>`` token runs in; a batch of text-only
samples has ``pixel_values=None``.

LLaVA-NeXT examples carry ``[n_views, 3, S, S]`` per image, the view count depending on
the image's grid; they are padded with all-zero views to the batch's largest count (as
the HF image processor pads a batch) into ``[n_images, max_views, 3, S, S]``, and
``image_sizes`` ``[n_images, 2]`` goes with them: the model takes from each image only
the views its size implies, so the padding views are never read. Bad samples ride along by name so that the training
loop, not a worker process, decides what to do about them.
"""

from __future__ import annotations

from llava_edge.trainer.conversation import IGNORE_INDEX
from llava_edge.trainer.dataset import BadSample, Example


class Collator:
    """Turn a list of :class:`Example` / :class:`BadSample` into a batch dict of tensors."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[Example | BadSample]) -> dict:
        import torch

        examples = [x for x in items if isinstance(x, Example)]
        batch: dict = {
            "bad_samples": [x for x in items if isinstance(x, BadSample)],
            "sample_ids": [x.sample_id for x in examples],
            "n_samples": len(examples),
        }
        if not examples:
            return batch
        length = max(len(x.input_ids) for x in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, x in enumerate(examples):
            n = len(x.input_ids)
            input_ids[row, :n] = torch.tensor(x.input_ids)
            labels[row, :n] = torch.tensor(x.labels)
            attention_mask[row, :n] = 1
        images = [x.pixel_values for x in examples if x.pixel_values is not None]
        sizes = [x.image_sizes for x in examples
                 if x.pixel_values is not None and x.image_sizes is not None]
        if sizes:
            if len(sizes) != len(images):
                raise ValueError("a batch mixes LLaVA-NeXT (tiled) and single-view images")
            batch["image_sizes"] = torch.stack([torch.as_tensor(s) for s in sizes])
            images = _pad_views(images, torch)
        batch.update(
            input_ids=input_ids, labels=labels, attention_mask=attention_mask,
            pixel_values=torch.stack(images) if images else None,
            # Tokens that carry loss; the first one cannot (nothing predicts it).
            n_label_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()),
        )
        return batch


def _pad_views(images: list, torch) -> list:
    """Pad ``[n_views, 3, S, S]`` tensors with zero views to the largest ``n_views``."""
    most = max(x.shape[0] for x in images)
    return [x if x.shape[0] == most else
            torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))]) for x in images]
