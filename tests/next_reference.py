"""What the LLaVA-NeXT tests compare against: images of many aspect ratios and
transformers' own answers and features for them."""

from __future__ import annotations

import numpy as np
from PIL import Image

# (width, height): tall, wide, square, tiny, huge, odd, and a very long one
SIZES = {"tall": (40, 120), "wide": (150, 50), "square": (64, 64), "tiny": (5, 7),
         "huge": (2000, 300), "odd": (333, 517), "long": (250, 9)}


def two_block_image(size, seed=0) -> Image.Image:
    """A light image of ``size`` (width, height) with two blocks of random colours, one in
    the top-left sixth and one in the bottom right: content in several tiles."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w, 3), 235, np.uint8)
    arr[: max(1, h // 3), : max(1, w // 2)] = rng.integers(0, 256, 3)
    arr[h // 2:, w // 3:] = rng.integers(0, 256, 3)
    return Image.fromarray(arr)


def load_hf(checkpoint):
    """``LlavaNextForConditionalGeneration`` and its processor from ``checkpoint``."""
    import torch
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration.from_pretrained(checkpoint).eval()
    return model, AutoProcessor.from_pretrained(checkpoint)


def hf_inputs(processor, image, prompt):
    """The processor's tensors for one user turn (the image, then ``prompt``), rendered
    with the checkpoint's own chat template."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=image, text=text, return_tensors="pt")


def hf_greedy(hf, image, prompt, n):
    """transformers' greedy answer (``n`` tokens exactly) and the prompt's length."""
    import torch

    model, processor = hf
    inputs = hf_inputs(processor, image, prompt)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    n_prompt = inputs["input_ids"].shape[1]
    return out[0, n_prompt:].tolist(), n_prompt


def hf_packed_features(hf, image):
    """The image rows transformers injects for ``image``: tiles unpadded, newlines added."""
    import torch

    model, processor = hf
    inputs = hf_inputs(processor, image, "x")
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                             image_sizes=inputs["image_sizes"])
    ref = getattr(ref, "pooler_output", ref)
    return (torch.cat(list(ref)) if isinstance(ref, (list, tuple)) else ref).float().numpy()
