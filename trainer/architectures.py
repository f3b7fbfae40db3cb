"""The LLaVA architectures the trainer takes, by ``config.json`` ``model_type``.

* ``llava``: ``LlavaForConditionalGeneration`` (LLaVA-1.5): one fixed-size view per image,
  a fixed number of image tokens; images padded to a square by default (``pad``).
* ``llava_next``: ``LlavaNextForConditionalGeneration`` (LLaVA-NeXT / 1.6, "anyres"): the
  processor cuts each image into a base view plus a grid of tiles chosen from the image's
  size, so ``pixel_values`` is ``[n_images, n_views, 3, S, S]`` with ``image_sizes`` and
  the number of image tokens depends on each image's size. The tiling handles the aspect
  ratio, so images are never padded to a square (``anyres``).

Parameter names of both tell the parts apart the same way (``vision_tower``,
``multi_modal_projector``, ``language_model`` / ``lm_head``); NeXT adds
``image_newline``, the learned embedding put after each row of tile features, which the
trainer counts with the projector (see :mod:`llava_edge.trainer.freezing`).
"""

from __future__ import annotations

from llava_edge.errors import LlavaEdgeError

MODEL_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
}
#: ``image_aspect_ratio`` ``auto`` per model type.
DEFAULT_ASPECT = {"llava": "pad", "llava_next": "anyres"}
#: The ``image_aspect_ratio`` values each model type accepts.
ASPECTS = {"llava": ("pad", "square"), "llava_next": ("anyres",)}


def check_model_type(config: dict, where) -> str:
    """The checkpoint's ``model_type``; raise unless the trainer takes it."""
    model_type = config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise LlavaEdgeError(
            f"{where}: model_type {model_type!r} is not a LLaVA checkpoint the trainer takes "
            "(llava: LlavaForConditionalGeneration, llava_next: "
            "LlavaNextForConditionalGeneration)")
    return model_type


def model_class(model_type: str):
    import transformers

    return getattr(transformers, MODEL_CLASSES[model_type])


def is_anyres(model_type: str) -> bool:
    return model_type == "llava_next"


def resolve_aspect_ratio(value: str, model_type: str) -> str:
    """``auto`` as the model type's default; refuse a value the model type cannot use."""
    if value == "auto":
        return DEFAULT_ASPECT[model_type]
    if value not in ASPECTS[model_type]:
        if model_type == "llava_next":
            reason = ("LLaVA-NeXT tiles each image by its aspect ratio (anyres); padding "
                      "to a square (LLaVA-1.5's pad) or a single square view does not apply")
        else:
            reason = "anyres tiling needs a LLaVA-NeXT checkpoint (llava_next)"
        raise LlavaEdgeError(f"image_aspect_ratio {value!r} cannot be used with a "
                             f"{model_type} checkpoint: {reason}; use auto or one of "
                             f"{', '.join(ASPECTS[model_type])}")
    return value
