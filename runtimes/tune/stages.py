"""The two stages of a request, and a candidate's figures compared on the stage it moves.

A request runs the vision graph, then the LLM (prefill, then decode); the stages run one
after the other and share nothing (ONNX Runtime's threads sleep once the graph has run:
vision_onnx, no spinning). So a setting of the vision graph moves only the vision stage,
and any other setting only the LLM's. Both the search (:mod:`.search`, which keeps or
drops a setting) and the measurement (:mod:`.measure`, which stops a candidate whose first
request is far behind) compare a candidate on its stage, with :func:`on_its_stage`.
"""

from __future__ import annotations

STAGES = ("vision", "llm")
# The settings that move only the vision stage; the others move only the LLM's.
VISION_STAGE = ("vision_precision", "vision_threads", "providers")
TIMED = ("first_token_ms", "vision_ms", "prefill_ms", "ms_per_token", "peak_rss_mb")


def stage_of(setting: str) -> str:
    """The stage a setting moves: "vision" or "llm" (prefill and decode)."""
    return "vision" if setting in VISION_STAGE else "llm"


def on_its_stage(figures: dict, best: dict | None, stage: str, objective: str) -> dict:
    """``figures`` as compared with the best's: ``stage`` (vision, or the LLM's prefill and
    decode: the stage the candidate's setting moves, :func:`stage_of`) from ``figures``, the
    other stage and the rest of the request from ``best`` (the figures the best's score
    was computed from; None for the defaults, which are compared whole).

    Why: a candidate's whole first token carries the other stage's run-to-run noise too.
    On tinyllava-1.1b (an AVX-512 EPYC, 2026-12-06) the int8 graph cut the vision stage
    from 1,392 to 842 ms, but its run's prefill came out 450 ms slower than the defaults'
    by chance (5,209 vs 4,759 ms, the same GGUF and settings), so its first token was only
    1.5% better, under the 3% tolerance, and the int4 graph stayed. Peak memory is not a
    sum of stages: the ``memory`` objective compares whole figures, as does a candidate
    whose stage figures are missing."""
    own = {k: figures.get(k) for k in TIMED}
    moved, other = ("vision_ms", "prefill_ms") if stage == "vision" else ("prefill_ms",
                                                                         "vision_ms")
    if best is None or objective == "memory" or any(
            d.get(k) is None for d in (figures, best) for k in ("first_token_ms", moved)):
        return own
    mixed = dict(own, stage=stage, **{other: best.get(other)},
                 first_token_ms=best["first_token_ms"] + figures[moved] - best[moved])
    if stage == "vision":  # decode is the LLM's
        mixed["ms_per_token"] = best.get("ms_per_token")
    return mixed
