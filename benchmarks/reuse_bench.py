"""What reuse saves: KV prefix reuse and the image-embedding cache, on a preset's bundle.

    llava-edge bench-reuse --preset tiny                     # a minute
    llava-edge bench-reuse --preset tinyllava-1.1b --threads 2 --work-dir /tmp/w
    llava-edge bench-reuse --preset tiny --bundle BUNDLE     # skip the build

Without ``--bundle`` the preset's checkpoint is built (RANDOM weights) and exported (fp32
vision + F16 LLM, :func:`llava_edge.benchmarks.build.ensure_bundle`) under ``--work-dir``,
or taken from there if it was built before. After a warm-up round, three scenarios,
each ``--repeats`` times on fresh frames, medians reported:

* same frame: the first question about a new frame (stateless, and with reuse) vs a
  second question about the same frame (its prefill should cover only its own tokens);
* chat: turn 3 of a chat (history kept in the KV cache) vs a stateless call with the
  same history, answers checked token for token;
* embedding cache: a frame seen before (its embeddings cached, but the KV cache has
  moved on) vs a new frame.

Results go to ``--out/reuse-<preset>-<date>/`` as results.json and results.md, with the
machine, the versions and the command. Random weights: latencies are real (the shapes
are the preset's), answers are meaningless.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import write_json
from llava_edge.runtimes.pipeline import LlavaEdge

FIELDS = ("prefill_tokens", "reused_tokens", "prefill_ms", "vision_ms", "preprocess_ms",
          "first_token_ms", "total_ms", "images_encoded", "embedding_cache_hits")
Q1, Q2 = "What is in the image?", "What colour is the largest object?"
ASIDE = "Say hello."  # a text-only request: moves the KV cache on past the system prompt
CHAT = ("What is in the image?", "Describe the colours.", "Which object is on the left?")
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def frame(seed: int, size=(320, 240)) -> np.ndarray:
    """A camera-sized RGB frame with a few coloured boxes; every seed a different one."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8) + 180
    for _ in range(4):
        w, h = rng.integers(20, size[0] // 3), rng.integers(20, size[1] // 3)
        x, y = rng.integers(0, size[0] - w), rng.integers(0, size[1] - h)
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return img


@contextmanager
def stateless(model: LlavaEdge):
    """Within: no KV reuse, no embedding cache (what the model does without reuse)."""
    reuse, capacity = model.reuse_prefix, model.embed_cache.capacity
    model.reuse_prefix, model.embed_cache.capacity = False, 0
    model.embed_cache.clear()
    try:
        yield model
    finally:
        model.reuse_prefix, model.embed_cache.capacity = reuse, capacity


def medians(timings: list) -> dict:
    return {f: statistics.median(getattr(t, f) for t in timings) for f in FIELDS}


def same_frame(model: LlavaEdge, repeats: int, n: int, seed0: int) -> dict:
    cold, first, second = [], [], []
    for r in range(repeats):
        img = frame(seed0 + r)
        with stateless(model):
            cold.append(model.ask(img, Q1, max_new_tokens=n).timings)
        model.ask(None, ASIDE, max_new_tokens=n)  # the KV cache moves on
        first.append(model.ask(img, Q1, max_new_tokens=n).timings)
        second.append(model.ask(img, Q2, max_new_tokens=n).timings)
    out = {"first_stateless": medians(cold), "first_reuse": medians(first),
           "second_same_frame": medians(second)}
    out["prefill_tokens_ratio"] = (out["first_stateless"]["prefill_tokens"]
                                   / max(1, out["second_same_frame"]["prefill_tokens"]))
    out["prefill_ms_ratio"] = (out["first_stateless"]["prefill_ms"]
                               / max(1e-9, out["second_same_frame"]["prefill_ms"]))
    return out


def chat(model: LlavaEdge, repeats: int, n: int, seed0: int) -> dict:
    kept, fresh, identical = [], [], True
    for r in range(repeats):
        session = model.chat(max_new_tokens=n)
        session.ask(CHAT[0], image=frame(seed0 + r))
        session.ask(CHAT[1])
        history, images = session.history(), list(session.images)
        third = session.ask(CHAT[2])
        with stateless(model):
            ref = model.ask_messages(history + [session.messages[-2]], images,
                                     max_new_tokens=n)
        identical &= third.tokens == ref.tokens
        kept.append(third.timings)
        fresh.append(ref.timings)
    out = {"turn3_chat": medians(kept), "turn3_stateless": medians(fresh),
           "tokens_identical": identical}
    out["first_token_ms_ratio"] = (out["turn3_stateless"]["first_token_ms"]
                                   / max(1e-9, out["turn3_chat"]["first_token_ms"]))
    return out


def embedding_cache(model: LlavaEdge, repeats: int, n: int, seed0: int) -> dict:
    miss, hit = [], []
    for r in range(repeats):
        a = frame(seed0 + r)
        miss.append(model.ask(a, Q1, max_new_tokens=n).timings)
        model.ask(None, ASIDE, max_new_tokens=n)  # the KV cache moves on, the image is gone
        hit.append(model.ask(a, Q1, max_new_tokens=n).timings)
    return {"new_frame": medians(miss), "cached_frame": medians(hit)}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo")
                if line.startswith("MemTotal")), None)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": mem,
            "platform": platform.platform(), "loadavg_start": os.getloadavg()}


def versions() -> dict:
    import llama_cpp
    import onnxruntime

    import llava_edge

    return {"python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "llama_cpp_python": llama_cpp.__version__,
            "llava_edge": llava_edge.__version__}


def markdown(res: dict) -> str:
    sf, ch, ec = res["same_frame"], res["chat"], res["embedding_cache"]

    def row(name, m):
        return (f"| {name} | {m['prefill_tokens']:.0f} | {m['reused_tokens']:.0f} | "
                f"{m['prefill_ms']:.1f} | {m['preprocess_ms']:.1f} | {m['vision_ms']:.1f} | "
                f"{m['first_token_ms']:.1f} |")

    head = ("| request | prefill tokens | reused tokens | prefill ms | preprocess ms | "
            "vision ms | first token ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    m = res["machine"]
    return "\n".join([
        f"# Reuse benchmark: {res['preset']} (RANDOM weights)",
        "",
        f"{res['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB; "
        f"n_threads={res['n_threads']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end (shared machine: absolute times are noisy, "
        "the token counts are exact). Median of "
        f"{res['repeats']} repeats after a warm-up; {res['max_new_tokens']} new tokens each.",
        "",
        f"Command: `{res['command']}`. Bundle: {res.get('bundle_origin', '')}; vision "
        f"{res['vision_precision']}, LLM {res['llm_quant']}, {res['n_image_tokens']} image "
        "tokens per image.",
        "",
        *([res["note"], ""] if res.get("note") else []),
        "## Second question about the same frame", "", head,
        row("first question, stateless", sf["first_stateless"]),
        row("first question, reuse on (system prefix)", sf["first_reuse"]),
        row("second question, same frame", sf["second_same_frame"]),
        "",
        f"Prefill: {sf['prefill_tokens_ratio']:.1f}x fewer tokens, "
        f"{sf['prefill_ms_ratio']:.1f}x less time than the stateless first question.",
        "",
        "## Chat turn 3 vs a stateless call with the same history", "", head,
        row("turn 3, chat (KV kept)", ch["turn3_chat"]),
        row("turn 3, stateless", ch["turn3_stateless"]),
        "",
        f"First token {ch['first_token_ms_ratio']:.1f}x sooner; answers token-identical: "
        f"{ch['tokens_identical']}.",
        "",
        "## Image embedding cache (a frame seen before; the KV cache has moved on)", "",
        head,
        row("new frame (encoded)", ec["new_frame"]),
        row("frame seen before (cache hit)", ec["cached_frame"]),
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.",
        "",
    ])


def run_reuse_bench(preset: str = "tiny", bundle: Path | None = None,
                    work_dir: Path = Path("/tmp/llava-edge-reuse-bench"),
                    out: Path = RESULTS_ROOT, repeats: int = 5, max_new_tokens: int = 8,
                    threads: int = 1, note: str = "",
                    command: str = "llava-edge bench-reuse") -> Path:
    """Run the three scenarios on ``bundle`` (default: the preset's, built once under
    ``work_dir``), write results.json and results.md to ``out/reuse-<preset>-<date>/``,
    print the markdown; returns that folder."""
    load = {}
    if bundle is None:
        from llava_edge.benchmarks.build import ensure_bundle

        vision, llm = "fp32", "F16"
        _, bundle = ensure_bundle(preset, work_dir, vision=(vision,), llm=(llm,),
                                  purpose="bench-reuse (building a preset)")
        load = {"vision_precision": vision, "llm_quant": llm}
    now = dt.datetime.now(dt.timezone.utc)
    built = (f"from --work-dir, built from preset {preset} (random weights) and exported "
             "without parity (fp32 vision graph + F16 GGUF)" if load else
             "given with --bundle")
    res = {"preset": preset, "weights": "random", "bundle": str(bundle),
           "bundle_origin": built, "note": note,
           "date": now.isoformat(timespec="seconds"), "repeats": repeats,
           "max_new_tokens": max_new_tokens, "n_threads": threads,
           "command": command, "machine": machine(), "versions": versions()}
    n, r = max_new_tokens, repeats
    with LlavaEdge.load(bundle, n_threads=threads, tune=False, **load) as model:
        res["vision_precision"], res["llm_quant"] = model.vision_precision, model.llm_quant
        res["n_image_tokens"] = model.n_image_tokens
        same_frame(model, 1, n, 900)  # warm-up: first calls allocate buffers
        res["same_frame"] = same_frame(model, r, n, 0)
        res["chat"] = chat(model, r, n, 100)
        res["embedding_cache"] = embedding_cache(model, r, n, 200)
    res["machine"]["loadavg_end"] = os.getloadavg()

    out = Path(out) / f"reuse-{preset}-{now:%Y%m%d}"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res, default=str)
    (out / "results.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out}/results.json and results.md")
    return out
