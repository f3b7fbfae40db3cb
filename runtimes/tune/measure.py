"""One candidate's measurement, in a process of its own.

    python -m llava_edge.runtimes.tune.measure '{"bundle": ..., "settings": {...}, ...}'

A fresh process per candidate, because llama.cpp's repacking, flash attention and
threads are fixed when the model loads, and because peak memory (``VmHWM``) is only
meaningful for a process that loaded exactly one configuration. Prints one JSON line.

Each request is cold, as a robot's first question about a new frame is: the KV prefix
and the embedding cache are cleared first, so the figures cover preprocessing, the vision
graph, the whole prefill and the decode. One warm-up request, then ``repeats`` rounds of
the prompts; medians. The greedy tokens of the first round are the fidelity evidence,
and after the timed rounds (so that they cost no time or memory in the figures) the
logits along a reference answer, fed token by token ("teacher forcing"):
``reference={"write": PATH}`` records them along this candidate's own greedy answers (the
reference of its (graph, GGUF) pair) and measures how far the same answers evaluated in
one batch are from them (the runtime's own noise), ``reference={"against": PATH}`` compares this
candidate's logits along those same tokens with the recorded ones (:func:`compare`).

``give_up``: the search's best so far, as ``{"objective": ..., "above": SCORE, "best":
FIGURES, "stage": "vision" | "llm", ...}`` (:func:`objective_score`'s arguments, and what
:func:`.stages.on_its_stage` needs to score the request on the stage its setting moves,
as the search will). A candidate whose first timed request already scores above it stops
there, with ``gave_up`` in its result and no fidelity pass: one warm request that far
behind cannot come out ahead, and the rounds it would take cost the budget minutes that
the settings after it need (an F16 GGUF's on a 2-core AVX2 machine). On its stage,
because the other stage's noise is not the candidate's: on an AVX2-only EPYC the int8
graph's first request ran its vision stage 24% faster than the defaults' but its prefill
33% slower by chance, and the whole request was stopped.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from llava_edge.runtimes.tune.stages import on_its_stage

PROMPTS = ("Describe the image in detail.", "What colours and shapes are in the image?")


@dataclass
class Job:
    bundle: str
    settings: dict          # RuntimeSettings.chosen()
    repeats: int = 2
    max_new_tokens: int = 16
    image_size: tuple[int, int] = (640, 480)
    reference: dict | None = None  # {"write": path} or {"against": path}, see above
    give_up: dict | None = None    # {"objective": ..., "above": score, ...}, see above


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


def objective_score(figures: dict, objective: str = "first-token", answer_tokens: int = 64,
                    max_first_token_ms: float | None = None) -> float:
    """A candidate's value for an objective (smaller is better; inf when it cannot be
    computed): ``first-token`` ms, ``decode`` ms per token, ``answer`` the first token
    plus ``answer_tokens`` tokens, ``memory`` peak RSS where the first token is within
    ``max_first_token_ms``."""
    inf = float("inf")
    per_token = figures.get("ms_per_token")
    if objective == "first-token":
        return figures["first_token_ms"]
    if objective == "decode":
        return per_token if per_token is not None else inf
    if objective == "answer":
        return figures["first_token_ms"] + answer_tokens * (per_token or 0.0)
    if max_first_token_ms is not None and figures["first_token_ms"] > max_first_token_ms:
        return inf
    return figures["peak_rss_mb"]


def forced_rows(model, image, prompt: str, tokens: list[int], max_new_tokens: int,
                batched: bool = False):
    """Logits ``[n, n_vocab]`` predicting each of ``tokens`` (and the end of the answer
    when it ended before ``max_new_tokens``), with ``tokens`` fed one at a time as the
    greedy decode feeds them, whatever this model would have chosen instead.
    ``batched``: also the same positions evaluated in one batch (the cache cut back to the
    prompt first), returned second: the same computation in another order."""
    model.clear_cache()
    model.ask(image, prompt, max_new_tokens=1)  # the prompt; the last position's logits
    llm = model.llm
    first, prompt_end = llm.logits(), llm.n_past
    feed = tokens if len(tokens) < max_new_tokens else tokens[:-1]
    rows = [first]
    for token in feed:
        llm.eval_tokens([token])
        rows.append(llm.logits())
    one_at_a_time = np.stack(rows).astype(np.float32)
    in_one_batch = None
    if batched:
        if not llm.truncate(prompt_end):  # a memory that cannot drop a tail: prefill again
            model.clear_cache()
            model.ask(image, prompt, max_new_tokens=1)
        in_one_batch = np.concatenate([first[None], llm.eval_tokens(feed, all_logits=True)]
                                      ).astype(np.float32)
    model.clear_cache()  # the KV no longer matches the runtime's bookkeeping
    return (one_at_a_time, in_one_batch) if batched else one_at_a_time


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """How far a candidate's logits along the reference answers are from the
    reference's: top-1 agreement with the reference's choices, KL(reference || this),
    and, for the rule that weighs a flip by how decided it was (``search.Tolerance``),
    ``lead_change_max``, the most this candidate moved the lead of the reference's top-1
    over any other token at any position (in logits), and ``flip_leads``, by how much the
    reference's top-1 led this candidate's choice where the two differ."""
    ref, new = np.concatenate(reference), np.concatenate(got)
    lp, lq = _log_softmax(ref), _log_softmax(new)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    at = np.arange(len(ref))
    top, choice = ref.argmax(-1), new.argmax(-1)
    moved = new.astype(np.float64) - ref
    on_top = moved[at, top]
    lead_change = np.maximum(on_top - moved.min(-1), moved.max(-1) - on_top)
    flipped = np.flatnonzero(top != choice)
    leads = ref[flipped, top[flipped]].astype(np.float64) - ref[flipped, choice[flipped]]
    return {"top1_agreement": float((top == choice).mean()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "positions": len(ref),
            "lead_change_max": float(lead_change.max()),
            "flip_leads": [round(float(v), 6) for v in leads]}


def _fidelity(model, image, job: Job, tokens: list[list[int]]) -> dict | None:
    if not job.reference:
        return None
    if "write" in job.reference:
        saved, batched = {}, []
        for i, (prompt, answer) in enumerate(zip(PROMPTS, tokens)):
            saved[f"tokens{i}"] = np.asarray(answer, dtype=np.int64)
            saved[f"rows{i}"], in_one_batch = forced_rows(
                model, image, prompt, answer, job.max_new_tokens, batched=True)
            batched.append(in_one_batch)
        with open(job.reference["write"], "wb") as f:
            np.savez(f, **saved)
        rows = [saved[f"rows{i}"] for i in range(len(PROMPTS))]
        # The reference against itself, its answers evaluated in one batch: how much the
        # defaults' own results move with llama.cpp's batch split (prompt lengths, n_batch
        # and prefix reuse change it all the time): a lead no larger than it moves them is
        # the runtime's noise, not the model's choice (search.tolerance_for).
        return {"top1_agreement": 1.0, "kl_mean": 0.0, "kl_max": 0.0,
                "positions": sum(len(r) for r in rows), "lead_change_max": 0.0,
                "flip_leads": [], "batched": compare(rows, batched)}
    with np.load(job.reference["against"]) as saved:
        reference = [(saved[f"tokens{i}"].tolist(), saved[f"rows{i}"])
                     for i in range(len(PROMPTS))]
    got = [forced_rows(model, image, prompt, answer, job.max_new_tokens)
           for prompt, (answer, _rows) in zip(PROMPTS, reference)]
    return compare([rows for _answer, rows in reference], got)


def measure(job: Job) -> dict:
    from llava_edge.runtimes.pipeline import LlavaEdge

    t0 = time.perf_counter()
    image = fixed_scene(*job.image_size)
    with LlavaEdge.load(job.bundle, tune=False, **job.settings) as model:
        load_s = time.perf_counter() - t0

        def ask(prompt):
            model.clear_cache()
            a = model.ask(image, prompt, max_new_tokens=job.max_new_tokens)
            t, decoded = a.timings, max(0, a.n_tokens - 1)
            return a, {"first_token_ms": t.first_token_ms, "vision_ms": t.vision_ms,
                       "prefill_ms": t.prefill_ms, "total_ms": t.total_ms,
                       "ms_per_token": (t.decode_ms / decoded) if decoded else None}

        ask(PROMPTS[0])  # warm-up: first-call allocations, page faults, kernel choice
        rows, tokens = [], None
        for r in range(job.repeats):
            answers = []
            for p in PROMPTS:
                answer, row = ask(p)
                answers.append(answer)
                rows.append(row)
                if len(rows) == 1 and (behind := _gives_up(job, row)) is not None:
                    return {**_medians(rows), "peak_rss_mb": peak_rss_mb(), "load_s": load_s,
                            "tokens": None, "n_requests": 1, "fidelity": None,
                            "gave_up": behind}
            if r == 0:
                tokens = [a.tokens for a in answers]
        peak = peak_rss_mb()  # before the fidelity pass: its arrays are not the runtime's
        fidelity = _fidelity(model, image, job, tokens)
    return {**_medians(rows), "peak_rss_mb": peak, "load_s": load_s, "tokens": tokens,
            "n_requests": len(rows), "fidelity": fidelity}


def _gives_up(job: Job, first: dict) -> float | None:
    """The first timed request's score where it is above ``job.give_up``'s bound, else
    None (no bound, or not behind it)."""
    if not job.give_up:
        return None
    rule = {k: v for k, v in job.give_up.items() if k not in ("above", "best", "stage")}
    figures = on_its_stage({**first, "peak_rss_mb": peak_rss_mb()}, job.give_up.get("best"),
                           job.give_up.get("stage", "llm"), rule.get("objective", "first-token"))
    got = objective_score(figures, **rule)
    # inf (a request that cannot be scored alone: no tokens decoded) is not evidence
    return got if math.isfinite(got) and got > job.give_up["above"] else None


def _medians(rows: list[dict]) -> dict:
    med = {k: statistics.median(v for r in rows if (v := r[k]) is not None)
           if any(r[k] is not None for r in rows) else None for k in rows[0]}
    per_token = med["ms_per_token"]
    return {**med, "decode_tokens_per_s": 1000 / per_token if per_token else None}


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
