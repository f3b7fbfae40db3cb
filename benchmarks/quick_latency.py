"""A short latency table for a bundle: every (vision, LLM) pair it holds, one image.

    llava-edge bench-quick BUNDLE IMAGE [--repeats 5] [--threads N]

Warm-up once, then the median of the repeats per stage. This is the demo's table; the
full benchmark suite (peers, memory, roofline) is ``llava-edge bench``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict

from llava_edge.bundle import open_bundle
from llava_edge.runtimes.pipeline import LlavaEdge

STAGES = ("preprocess_ms", "vision_ms", "prefill_ms", "first_token_ms", "decode_ms", "total_ms")


def measure(bundle: str, image: str, prompt: str, repeats: int, n_threads: int | None,
            max_new_tokens: int, n_gpu_layers: int | str = "auto",
            providers: str = "auto") -> list[dict]:
    manifest = open_bundle(bundle).manifest
    rows = []
    for v in manifest.vision:
        for lm in manifest.llm:
            # The cold path: no embedding cache, no KV prefix kept between the repeats
            # (those are measured by benchmarks/reuse_bench.py).
            with LlavaEdge.load(bundle, vision_precision=v.precision, llm_quant=lm.quant,
                                n_threads=n_threads, verify="none", reuse_prefix=False,
                                embed_cache_size=0, tune=False, n_gpu_layers=n_gpu_layers,
                                providers=providers) as model:
                model.ask(image, prompt, max_new_tokens=max_new_tokens)  # warm-up
                runs = [model.ask(image, prompt, max_new_tokens=max_new_tokens)
                        for _ in range(repeats)]
            timings = [asdict(r.timings) for r in runs]
            row = {"vision": v.precision, "llm": lm.quant,
                   "tokens": statistics.median(r.n_tokens for r in runs)}
            row.update({s: statistics.median(t[s] for t in timings) for s in STAGES})
            decode_tokens = max(1, row["tokens"] - 1)
            row["decode_tok_s"] = 1000 * decode_tokens / row["decode_ms"] if row["decode_ms"] else 0
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = "| vision | llm | preprocess ms | vision ms | prefill ms | first token ms | decode tok/s | total ms |"
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        lines.append(f"| {r['vision']} | {r['llm']} | {r['preprocess_ms']:.1f} | "
                     f"{r['vision_ms']:.1f} | {r['prefill_ms']:.1f} | {r['first_token_ms']:.1f} "
                     f"| {r['decode_tok_s']:.0f} | {r['total_ms']:.1f} |")
    return "\n".join(lines)
