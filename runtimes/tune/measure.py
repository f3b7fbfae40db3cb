"""One candidate's measurement, in a process of its own.

    python -m llava_edge.runtimes.tune.measure '{"bundle": ..., "settings": {...}, ...}'

A fresh process per candidate, because llama.cpp's repacking, flash attention and
threads are fixed when the model loads, and because peak memory (``VmHWM``) is only
meaningful for a process that loaded exactly one configuration. Prints one JSON line.

Each request is cold, as a robot's first question about a new frame is: the KV prefix
and the embedding cache are cleared first, so the figures cover preprocessing, the vision
graph, the whole prefill and the decode. One warm-up request, then ``repeats`` rounds of
the prompts; medians. The greedy tokens of the first round are the fidelity evidence.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

PROMPTS = ("Describe the image in detail.", "What colours and shapes are in the image?")


@dataclass
class Job:
    bundle: str
    settings: dict          # RuntimeSettings.chosen()
    repeats: int = 2
    max_new_tokens: int = 16
    image_size: tuple[int, int] = (640, 480)


def fixed_scene(width: int, height: int) -> np.ndarray:
    """A fixed RGB scene (coloured rectangles on a gradient), the same in every process."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                    np.full_like(x, 128)], axis=-1).astype(np.uint8)
    for k, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 60, 230)]):
        x0, y0 = (k + 1) * width // 5, (k + 1) * height // 5
        img[y0:y0 + height // 6, x0:x0 + width // 6] = colour
    return img


def peak_rss_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 1024)


def measure(job: Job) -> dict:
    from llava_edge.runtimes.pipeline import LlavaEdge

    t0 = time.perf_counter()
    image = fixed_scene(*job.image_size)
    with LlavaEdge.load(job.bundle, tune=False, **job.settings) as model:
        load_s = time.perf_counter() - t0

        def ask(prompt):
            model.clear_cache()
            return model.ask(image, prompt, max_new_tokens=job.max_new_tokens)

        ask(PROMPTS[0])  # warm-up: first-call allocations, page faults, kernel choice
        rows, tokens = [], None
        for r in range(job.repeats):
            answers = [ask(p) for p in PROMPTS]
            if r == 0:
                tokens = [a.tokens for a in answers]
            for a in answers:
                t = a.timings
                decoded = max(0, a.n_tokens - 1)
                rows.append({"first_token_ms": t.first_token_ms, "vision_ms": t.vision_ms,
                             "prefill_ms": t.prefill_ms, "total_ms": t.total_ms,
                             "ms_per_token": (t.decode_ms / decoded) if decoded else None})
    med = {k: statistics.median(v for r in rows if (v := r[k]) is not None)
           if any(r[k] is not None for r in rows) else None for k in rows[0]}
    return {**med, "decode_tokens_per_s": 1000 / med["ms_per_token"] if med["ms_per_token"]
            else None, "peak_rss_mb": peak_rss_mb(), "load_s": load_s, "tokens": tokens,
            "n_requests": len(rows)}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    spec["image_size"] = tuple(spec.get("image_size", (640, 480)))
    try:
        result = measure(Job(**spec))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which names the candidate
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
