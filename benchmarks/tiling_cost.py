"""What LLaVA-NeXT's tiling costs before the first token, per grid size.

    llava-edge bench-tiling BUNDLE [--max-tiles 1,3,none] [--repeats 5] [--threads N]
                                   [--images square,panorama] [--warmup 1]

For images of several aspect ratios and each ``max_tiles`` (None: transformers' own
tiling), the cold path of one request (no KV-prefix reuse, no embedding cache): the
views the image becomes, the positions it takes in the prompt, and the medians (after
the warm-ups, one per image by default) of the vision, prefill and first-token times. The images are synthetic;
only their sizes matter to the tiling.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
from PIL import Image

from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.pipeline import LlavaEdge

# name -> (width, height): the aspect ratios LLaVA-1.6's pinpoints distinguish
IMAGE_SIZES = {"square 1:1": (672, 672), "wide 2:1": (1008, 504), "tall 1:2": (504, 1008),
               "panorama 3:1": (1344, 448), "portrait 1:3": (448, 1344)}


@dataclass(frozen=True)
class TilingRow:
    image: str
    size: tuple[int, int]  # (width, height)
    max_tiles: int | None
    views: int
    grid: tuple[int, int]  # (rows, cols); (0, 0): the base view alone
    positions: int
    vision_ms: float
    prefill_ms: float
    first_token_ms: float


def synthetic_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w, 3), 230, np.uint8)
    for _ in range(6):  # a few coloured boxes
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        arr[y:y + h // 4, x:x + w // 4] = rng.integers(0, 256, 3)
    return Image.fromarray(arr)


def pick_images(names: list[str] | None) -> dict[str, tuple[int, int]]:
    """The images of ``IMAGE_SIZES`` named by their first word (``square``, ``wide``,
    ``tall``, ``panorama``, ``portrait``), in that order; all of them for None. A 7B model
    takes minutes per tiled request on a small CPU: a subset keeps the run short."""
    if names is None:
        return dict(IMAGE_SIZES)
    by_word = {name.split()[0]: name for name in IMAGE_SIZES}
    unknown = [n for n in names if n not in by_word]
    if unknown:
        raise LlavaEdgeError(f"unknown image(s) {', '.join(unknown)}; choose from: "
                             f"{', '.join(by_word)}")
    return {by_word[n]: IMAGE_SIZES[by_word[n]] for n in by_word if n in names}


def measure(bundle: str, max_tiles: list[int | None], repeats: int, n_threads: int | None,
            prompt: str = "Describe the image.", vision_precision: str | None = None,
            llm_quant: str | None = None, images: list[str] | None = None,
            warmup: int = 1) -> list[TilingRow]:
    sizes = pick_images(images)
    rows = []
    for limit in max_tiles:
        with LlavaEdge.load(bundle, vision_precision=vision_precision, llm_quant=llm_quant,
                            n_threads=n_threads, verify="none", reuse_prefix=False,
                            embed_cache_size=0, max_tiles=limit, tune=False) as model:
            if model.bundle.manifest.anyres is None:
                raise LlavaEdgeError(f"{bundle} is not a LLaVA-NeXT bundle (no tiling)")
            for name, size in sizes.items():
                image = synthetic_image(size, list(IMAGE_SIZES).index(name))
                plan = model.layout.plan(image)
                for _ in range(warmup):
                    model.ask(image, prompt, max_new_tokens=1)
                runs = [model.ask(image, prompt, max_new_tokens=1).timings
                        for _ in range(repeats)]
                rows.append(TilingRow(
                    image=name, size=size, max_tiles=limit, views=plan.n_tiles, grid=plan.grid,
                    positions=plan.n_positions,
                    vision_ms=statistics.median(t.vision_ms for t in runs),
                    prefill_ms=statistics.median(t.prefill_ms for t in runs),
                    first_token_ms=statistics.median(t.first_token_ms for t in runs)))
    return rows


def table(rows: list[TilingRow]) -> str:
    lines = ["| image | max tiles | views | grid | positions | vision ms | prefill ms | "
             "first token ms |", "|" + " --- |" * 8]
    for r in rows:
        grid = f"{r.grid[0]}x{r.grid[1]}" if r.grid != (0, 0) else "base only"
        lines.append(f"| {r.image} ({r.size[0]}x{r.size[1]}) | {r.max_tiles or 'all'} | "
                     f"{r.views} | {grid} | {r.positions} | {r.vision_ms:.1f} | "
                     f"{r.prefill_ms:.1f} | {r.first_token_ms:.1f} |")
    return "\n".join(lines)
