"""numpy + Pillow preprocessing equals the Hugging Face image processors, and bad images
are refused with a clear message."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from llava_edge.errors import ImageError
from llava_edge.runtimes.images import load_image
from llava_edge.runtimes.preprocess import PreprocessRecipe, expand_to_square, preprocess


def _recipe(checkpoint, pad=False) -> PreprocessRecipe:
    cfg = json.loads((checkpoint / "processor_config.json").read_text())
    return PreprocessRecipe.from_hf(cfg["image_processor"], pad_to_square=pad)


def _hf_pixels(checkpoint, img: Image.Image) -> np.ndarray:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    return processor.image_processor(images=img, return_tensors="np")["pixel_values"][0]


def _noise(w, h, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # smooth gradients as well as noise, so resampling is exercised on both
    arr[: h // 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    img = Image.fromarray(arr)
    return img if mode == "RGB" else img.convert(mode)


def _modes():
    rgba = _noise(50, 40).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((50, 40)))
    palette_t = _noise(45, 45).convert("P")
    palette_t.info["transparency"] = 0
    i16 = Image.fromarray((np.arange(60 * 30, dtype=np.uint16).reshape(30, 60) * 37))
    return {
        "L": _noise(33, 70, "L"), "LA": _noise(70, 33).convert("LA"), "RGBA": rgba,
        "P": _noise(64, 64, "P"), "P-transparency": palette_t, "CMYK": _noise(40, 41, "CMYK"),
        "1": _noise(37, 29, "1"), "I;16": i16,
    }


SIZES = [(64, 64), (97, 71), (71, 97), (1, 300), (300, 2), (640, 480), (33, 64), (500, 499)]


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_qwen2_checkpoint"])
def test_matches_hf_processor_over_sizes_and_modes(fixture, request):
    ckpt = request.getfixturevalue(fixture)
    recipe = _recipe(ckpt)
    images = [_noise(w, h, seed=i) for i, (w, h) in enumerate(SIZES)] + list(_modes().values())
    for img in images:
        ours = preprocess(load_image(img), recipe)
        hf = _hf_pixels(ckpt, img)
        assert ours.shape == hf.shape == (3, *recipe.output_size)
        assert ours.dtype == np.float32
        assert np.abs(ours - hf).max() <= 1e-5, (img.mode, img.size)


def test_exif_orientation_applied_like_transformers_load_image(tiny_checkpoint, tmp_path):
    from transformers.image_utils import load_image as hf_load_image

    img = _noise(90, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    ours = load_image(path)
    assert ours.size == (50, 90)  # height and width swapped by the orientation tag
    recipe = _recipe(tiny_checkpoint)
    hf = _hf_pixels(tiny_checkpoint, hf_load_image(str(path)))
    assert np.abs(preprocess(ours, recipe) - hf).max() <= 1e-5


def test_pad_to_square_is_llava_expand2square(tiny_checkpoint):
    recipe = _recipe(tiny_checkpoint, pad=True)
    img = _noise(120, 40)
    square = expand_to_square(img, recipe.image_mean)
    assert square.size == (120, 120)
    mean_rgb = tuple(int(x * 255) for x in recipe.image_mean)
    assert square.getpixel((0, 0)) == mean_rgb and square.getpixel((60, 60)) == img.getpixel((60, 20))
    hf = _hf_pixels(tiny_checkpoint, square)
    assert np.abs(preprocess(img, recipe) - hf).max() <= 1e-5


def test_inputs_of_every_kind_give_the_same_pixels(tmp_path, tiny_checkpoint):
    recipe = _recipe(tiny_checkpoint)
    img = _noise(80, 60)
    path = tmp_path / "x.png"
    img.save(path)
    arr = np.asarray(img)
    variants = [load_image(img), load_image(path), load_image(str(path)),
                load_image(path.read_bytes()), load_image(arr),
                load_image(np.ascontiguousarray(arr[:, :, ::-1]), bgr=True)]
    ref = preprocess(variants[0], recipe)
    for v in variants[1:]:
        assert np.array_equal(preprocess(v, recipe), ref)


def test_bad_images_are_refused_with_the_reason(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png at all")
    good = io.BytesIO()
    _noise(200, 200).save(good, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    cases = [
        (tmp_path / "missing.png", "no such image file"),
        (empty, "image file is empty"),
        (corrupt, "not a readable image"),
        (truncated, "not a readable image"),
        (b"", "image bytes are empty"),
        (np.zeros((10, 10, 3), np.float32), "must be uint8"),
        (np.zeros((10, 10, 2), np.uint8), "HxW, HxWx3 or HxWx4"),
        (12345, "unsupported image type int"),
    ]
    for image, message in cases:
        with pytest.raises(ImageError, match=message):
            load_image(image)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    # PNGs of one colour are tiny on disk but large once decoded.
    path = tmp_path / "bomb.png"
    Image.new("L", (6000, 5000)).save(path, optimize=True)
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match="6000x5000 = 30,000,000 pixels is over the limit"):
        load_image(path, max_pixels=10_000_000)
    huge = tmp_path / "huge.png"  # 400 M pixels: over Pillow's own bomb limit too
    Image.new("L", (20000, 20000)).save(huge, optimize=True)
    with pytest.raises(ImageError, match="image too large"):
        load_image(huge)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)
