"""LLaVA-NeXT anyres in numpy + Pillow (runtimes/anyres.py) equals transformers: the
chosen resolution, the number of ``<image>`` positions the processor expands to, the
pixel values of every tile and the packed (unpadded, newline-separated) features, for a
tiny random ``LlavaNextForConditionalGeneration`` with a CLIP tower ("default": CLS
dropped) and with a SigLIP tower ("full"), on images of many aspect ratios."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.anyres import (AnyresPlan, anyres_tiles, fit_size, pack_features,
                                        recipe_from_hf, select_best_resolution)

S, P = 32, 8  # tower input size and patch size: 4x4 patches per tile
# a 1x1 grid, both 1x2 grids, 2x2 and both 1x3 grids, in tile units (height, width)
PINPOINTS = [[S, S], [S, 2 * S], [2 * S, S], [2 * S, 2 * S], [S, 3 * S], [3 * S, S]]
# LLaVA-1.6 (llava-v1.6-vicuna-7b-hf): CLIP ViT-L/14 at 336, no 1x1 grid
PINPOINTS_16 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

# (width, height), as Pillow gives sizes
IMAGES = {
    "tall": (40, 100),
    "wide": (100, 40),
    "square": (64, 64),
    "tiny": (5, 7),
    "huge_wide": (2000, 300),
    "odd": (333, 517),
    "odd_wide_rgba": (517, 333),
    "thin_tall": (9, 250),
}
PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"


def _image(name: str) -> Image.Image:
    w, h = IMAGES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # gradients as well as noise, so every resampling step is exercised on both
    arr[: h // 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    img = Image.fromarray(arr)
    if name.endswith("rgba"):  # transparency is composited on white, as HF does
        alpha = np.full((h, w), 255, np.uint8)
        alpha[:, : w // 3] = 60
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(alpha))
    return img


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from llava_edge.presets import TokenizerSpec
    from llava_edge.trainer.tokenizer_build import build_tokenizer

    return build_tokenizer(TokenizerSpec("sentencepiece", 1000, "vicuna_v1"),
                           tmp_path_factory.mktemp("tok"))


def _image_processor(kind: str, size: int = S, pinpoints=PINPOINTS):
    import transformers

    cls = (getattr(transformers, "LlavaNextImageProcessorPil", None)
           or transformers.LlavaNextImageProcessor)
    if kind == "clip":
        return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                   image_grid_pinpoints=pinpoints)
    # SigLIP: a fixed-size resize, no crop, mean/std 0.5. transformers still cuts the
    # grid at crop_size (224 by default) without a crop: it must be given.
    return cls(size={"height": size, "width": size}, do_center_crop=False,
               crop_size={"height": size, "width": size},
               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
               image_grid_pinpoints=pinpoints)


class Hf:
    """A tiny random LLaVA-NeXT model and its processor, for one tower kind."""

    def __init__(self, kind: str, tokenizer):
        import torch
        from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig,
                                  LlavaNextForConditionalGeneration, LlavaNextProcessor,
                                  SiglipVisionConfig)

        self.kind = kind
        self.strategy = "default" if kind == "clip" else "full"
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=S, patch_size=P)
        vision_config = (CLIPVisionConfig(projection_dim=32, **vision) if kind == "clip"
                         else SiglipVisionConfig(vision_use_head=False, **vision))
        text_config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2,
                                  vocab_size=-(-len(tokenizer) // 64) * 64)
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        config = LlavaNextConfig(vision_config=vision_config, text_config=text_config,
                                 image_grid_pinpoints=PINPOINTS,
                                 image_token_index=self.image_token_id,
                                 vision_feature_select_strategy=self.strategy,
                                 vision_feature_layer=-2)
        torch.manual_seed(0)
        self.model = LlavaNextForConditionalGeneration(config).eval()
        self.image_processor = _image_processor(kind)
        self.recipe = recipe_from_hf(self.image_processor.to_dict())
        self.processor = LlavaNextProcessor(
            image_processor=self.image_processor, tokenizer=tokenizer, patch_size=P,
            vision_feature_select_strategy=self.strategy,
            num_additional_image_tokens=1 if kind == "clip" else 0)
        self.newline = self.model.model.image_newline.detach().numpy()

    def plan(self, img: Image.Image, **kw) -> AnyresPlan:
        return AnyresPlan.for_image(img, pinpoints=PINPOINTS, tile_size=S, patch_size=P,
                                    strategy=self.strategy, **kw)

    def run(self, img: Image.Image):
        """HF's inputs for PROMPT + img, the per-tile projector outputs (captured by a
        hook), the packed features and the model's forward (which checks that the
        number of ``<image>`` tokens equals the number of packed features)."""
        import torch

        inputs = self.processor(images=img, text=PROMPT, return_tensors="pt")
        captured = []
        hook = self.model.model.multi_modal_projector.register_forward_hook(
            lambda module, args, out: captured.append(out.detach().numpy()))
        try:
            with torch.no_grad():
                packed = self.model.model.get_image_features(
                    inputs["pixel_values"], inputs["image_sizes"]).pooler_output
                logits = self.model(**inputs).logits
        finally:
            hook.remove()
        assert len(packed) == 1 and torch.isfinite(logits).all()
        return inputs, captured[0], packed[0].numpy()


@pytest.fixture(scope="module")
def models(tokenizer):
    return {kind: Hf(kind, tokenizer) for kind in ("clip", "siglip")}


@pytest.fixture(params=["clip", "siglip"])
def hf(request, models):
    return models[request.param]


def test_module_does_not_import_torch():
    code = ("import sys, llava_edge.runtimes.anyres; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("pinpoints", [PINPOINTS, PINPOINTS_16, [[2, 5], [5, 2], [3, 3], [4, 4]]])
def test_select_best_resolution_matches_transformers(pinpoints):
    from transformers.image_processing_utils import select_best_resolution as hf_select

    rng = np.random.default_rng(0)
    sizes = [tuple(int(x) for x in np.exp(rng.uniform(0, 7.5, 2))) for _ in range(400)]
    sizes += [(1, 1), (336, 336), (336, 672), (672, 336), (100, 100), (5000, 7)]
    for size in sizes:
        assert select_best_resolution(size, pinpoints) == tuple(hf_select(size, pinpoints)), size


def test_sizes_are_height_width():
    # A tall image (height 100, width 40) takes a tall grid: 3 rows, 1 column.
    plan = AnyresPlan((100, 40), PINPOINTS, S, P)
    assert plan.resolution == (96, 32) and plan.grid == (3, 1)
    assert AnyresPlan.for_image(Image.new("RGB", (40, 100)), pinpoints=PINPOINTS,
                                tile_size=S, patch_size=P) == plan
    # Ties go to the first pinpoint: a small square image fits 336x672 and 672x336
    # equally; transformers reads [336, 672] as height 336, width 672: a 1x2 grid (the
    # original LLaVA, reading pinpoints as (width, height), takes a 2x1 grid here).
    assert select_best_resolution((100, 100), PINPOINTS_16) == (336, 672)
    assert AnyresPlan((100, 100), PINPOINTS_16, 336, 14).grid == (1, 2)
    # ... and so does a small *tall* image, which fits both grids whole
    assert AnyresPlan((151, 34), PINPOINTS_16, 336, 14).grid == (1, 2)
    # the resize keeps the aspect: one side fills, the other is ceil-ed
    assert fit_size((100, 40), (96, 32)) == (80, 32)
    assert fit_size((7, 5), (32, 32)) == (32, 23)


@pytest.mark.parametrize("kind,size,patch,pinpoints", [
    ("clip", S, P, PINPOINTS), ("clip", 336, 14, PINPOINTS_16), ("siglip", S, P, PINPOINTS)])
def test_positions_and_grid_match_transformers_arithmetic(tokenizer, kind, size, patch, pinpoints):
    """Hundreds of sizes through the processor's own count (the one ``<image>``
    expansion uses) and the model's grid / tile-count helpers."""
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape, image_size_to_num_patches)

    strategy = "default" if kind == "clip" else "full"
    processor = LlavaNextProcessor(
        image_processor=_image_processor(kind, size, pinpoints), tokenizer=tokenizer,
        patch_size=patch, vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if kind == "clip" else 0)
    rng = np.random.default_rng(1)
    sizes = [tuple(int(x) for x in np.exp(rng.uniform(0, 8, 2))) for _ in range(300)]
    sizes += [(1, 1), (size, size), (7, 5), (300, 2000), (517, 333), (1, 5000), (5000, 1)]
    counts = processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    for (h, w), count in zip(sizes, counts):
        plan = AnyresPlan((h, w), pinpoints, size, patch, strategy)
        assert plan.n_positions == count, (h, w)
        assert plan.grid == get_anyres_image_grid_shape([h, w], pinpoints, size)
        assert plan.n_tiles == image_size_to_num_patches([h, w], pinpoints, size)


@pytest.mark.parametrize("name", list(IMAGES))
def test_tiles_positions_and_packing_equal_transformers(hf, name):
    img = _image(name)
    inputs, per_tile, hf_packed = hf.run(img)
    plan = hf.plan(img)
    assert plan.image_size == tuple(inputs["image_sizes"][0].tolist())  # (height, width)

    # the <image> expansion of the real processor path
    n_image_tokens = int((inputs["input_ids"] == hf.image_token_id).sum())
    assert plan.n_positions == n_image_tokens == hf_packed.shape[0]

    # pixel values: the same Pillow resizes on uint8, then the same float64 rescale and
    # float32 normalize, so they agree bit for bit (1e-6 leaves room for other numpy builds)
    tiles = anyres_tiles(img, plan, hf.recipe)
    hf_pixels = inputs["pixel_values"][0].numpy()
    assert tiles.dtype == np.float32 and tiles.shape == hf_pixels.shape == (plan.n_tiles, 3, S, S)
    np.testing.assert_allclose(tiles, hf_pixels, rtol=0, atol=1e-6)

    # packing the model's own per-tile features is pure data movement: exact
    assert per_tile.shape == (plan.n_tiles, plan.tokens_per_tile, 32)
    packed = pack_features(per_tile, plan, hf.newline)
    np.testing.assert_array_equal(packed, hf_packed)


def test_pack_drops_the_cls_row_itself(models):
    """With "default", features straight from the tower (CLS first) pack the same."""
    import torch

    hf = models["clip"]
    img = _image("odd")
    inputs, _, hf_packed = hf.run(img)
    m = hf.model.model
    with torch.no_grad():
        tower = m.vision_tower(inputs["pixel_values"][0], output_hidden_states=True)
        hidden = tower.hidden_states[-2]
        with_cls = m.multi_modal_projector(hidden).numpy()
    plan = hf.plan(img)
    assert with_cls.shape[1] == plan.tokens_per_tile + 1
    np.testing.assert_allclose(pack_features(with_cls, plan, hf.newline), hf_packed,
                               rtol=0, atol=1e-6)


def test_max_tiles(hf):
    for name in IMAGES:
        img = _image(name)
        full = hf.plan(img)
        plans = [hf.plan(img, max_tiles=m) for m in range(1, 9)]
        assert plans[-1] == hf.plan(img, max_tiles=8) and plans[-1].n_tiles == full.n_tiles
        assert (plans[-1].n_positions, plans[-1].resolution) == (full.n_positions, full.resolution)
        for m, plan in enumerate(plans, start=1):
            assert plan.n_tiles <= m
        # a lower limit never gives more tiles, nor more positions, but for one case:
        # a grid whose unpadded part is empty (a very long image: transformers cuts
        # every row of a wide one away) adds no position and the single newline of the
        # base view alone is gone, so the base view alone has one position more (a
        # tall one keeps a newline per row, with no feature between them)
        assert [p.n_tiles for p in plans] == sorted(p.n_tiles for p in plans)
        grids = [p.n_positions for p in plans if p.resolution is not None]
        assert grids == sorted(grids)
        assert plans[0].n_positions <= min(grids, default=plans[0].n_positions) + 1
        empty = [p for p in plans[1:] if p.unpadded[2] * p.unpadded[3] == 0]
        assert all(p.n_positions == p.tokens_per_tile + p.unpadded[2] for p in empty)

    # 2000 x 300 in a 1x1 grid: 4x4 patches, of which int(300 * 4 / 2000) = 0 rows remain
    degenerate = hf.plan(_image("huge_wide"), max_tiles=2)
    assert degenerate.grid == (1, 1) and degenerate.unpadded == (2, 0, 0, 4)
    assert degenerate.n_positions == 16 == hf.plan(_image("huge_wide"), max_tiles=1).n_positions - 1
    # the 3-tile limit drops the 2x2 and 1x3 grids
    assert hf.plan(_image("huge_wide"), max_tiles=3).grid == (1, 2)
    # a square image gains nothing from a 1x2 grid over a 1x1 one, which wastes less
    assert hf.plan(_image("square"), max_tiles=4).grid == (1, 1)

    # max_tiles=1: the base view alone, as transformers makes it, then one newline
    img = _image("odd")
    inputs, per_tile, hf_packed = hf.run(img)
    base = hf.plan(img, max_tiles=1)
    assert (base.resolution, base.grid, base.n_tiles) == (None, (0, 0), 1)
    assert base.n_positions == base.tokens_per_tile + 1 < hf.plan(img).n_positions
    tiles = anyres_tiles(img, base, hf.recipe)
    assert tiles.shape == (1, 3, S, S)
    np.testing.assert_allclose(tiles[0], inputs["pixel_values"][0, 0].numpy(), rtol=0, atol=1e-6)
    packed = pack_features(per_tile[:1], base, hf.newline)
    np.testing.assert_array_equal(packed[:-1], hf_packed[: base.tokens_per_tile])
    np.testing.assert_array_equal(packed[-1], hf.newline)

    # a limit that keeps the chosen grid changes nothing
    plan3 = hf.plan(_image("tall"), max_tiles=4)
    assert plan3 == AnyresPlan(plan3.image_size, PINPOINTS, S, P, hf.strategy, max_tiles=4)
    assert plan3.resolution == hf.plan(_image("tall")).resolution


def test_plan_from_hf_config(hf):
    config = hf.model.config.to_dict()
    for name in ("odd", "tiny"):
        img = _image(name)
        plan = AnyresPlan.from_hf_config(config, (img.height, img.width))
        assert plan == hf.plan(img)


def test_bad_inputs_are_refused():
    with pytest.raises(LlavaEdgeError, match="multiples of the tile size"):
        AnyresPlan((10, 10), [[32, 48]], S, P)
    with pytest.raises(LlavaEdgeError, match="has none"):
        AnyresPlan((10, 10), PINPOINTS, S, P, "default", num_additional_image_tokens=0)
    # "full" on a CLS tower: transformers' pack_image_features fails on the grid (its
    # view() folds the CLS row into the feature axis); the base view alone is fine
    with pytest.raises(LlavaEdgeError, match="cannot be laid out"):
        AnyresPlan((10, 10), PINPOINTS, S, P, "full", num_additional_image_tokens=1)
    assert AnyresPlan((10, 10), PINPOINTS, S, P, "full", max_tiles=1,
                      num_additional_image_tokens=1).n_positions == 16 + 1 + 1
    with pytest.raises(ValueError):
        AnyresPlan((10, 10), PINPOINTS, S, P, max_tiles=0)
    plan = AnyresPlan((10, 20), PINPOINTS, S, P)
    recipe = recipe_from_hf(_image_processor("clip").to_dict())
    siglip = _image_processor("siglip").to_dict()
    del siglip["crop_size"]  # back to the class default, 224
    with pytest.raises(LlavaEdgeError, match="crop_size"):
        recipe_from_hf(siglip)
    with pytest.raises(ValueError, match="height, width"):
        anyres_tiles(Image.new("RGB", (10, 20)), plan, recipe)  # a 20 x 10 image
    with pytest.raises(ValueError, match="features"):
        pack_features(np.zeros((plan.n_tiles + 1, 16, 8), np.float32), plan, np.zeros(8))
    with pytest.raises(ValueError, match="per tile"):
        pack_features(np.zeros((plan.n_tiles, 15, 8), np.float32), plan, np.zeros(8))
