"""The robot's loop, measured: a video played at its real frame rate into ``watch``.

    llava-edge bench-loop --preset tiny --duration 20            # ~2 minutes
    llava-edge bench-loop --preset tinyllava-1.1b --duration 60 --threads 2

A camera does not wait for the model: frames arrive at 30 per second whatever the answer
time, and the latest-frame policy asks about the newest one. This benchmark writes a test
video (moving coloured boxes, ``--fps``, ``--size``), plays it with
:class:`~llava_edge.runtimes.frame_source.FrameSource` in realtime (looping), and runs
:func:`~llava_edge.runtimes.watch.watch` for ``--duration`` seconds per scenario:

* one question per round;
* two questions per round about the same frame (KV reuse: the second question's prefill
  covers its own tokens only);
* one before/after question about the last two frames (``frames=2``: the older frame's
  embeddings come from the cache);

each with reuse on (the default: KV prefix reuse + embedding cache) and off. Reported per
run: answers per minute, answer age (frame capture to the answer's end) p50 / p95, the
age at the first token, frames read / asked about / dropped. Without ``--bundle`` the
preset is built (RANDOM weights) and exported (int8 vision graph + Q4_K_M GGUF, as a CPU
robot would run it) under ``--work-dir``. Results: ``--out/loop-<preset>-<date>-<time>/``.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import write_json
from llava_edge.benchmarks.machine import machine_info, versions
from llava_edge.benchmarks.reuse_bench import frame, stateless
from llava_edge.errors import require_extra
from llava_edge.runtimes.frame_source import FrameSource
from llava_edge.runtimes.pipeline import LlavaEdge
from llava_edge.runtimes.watch import WatchSummary, watch

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
Q1, Q2 = "What is in the image?", "What colour is the largest object?"
Q_CHANGE = "What changed between the first image and the second?"


Q_CLEAR = "Is the path clear? Answer yes or no."


@dataclass(frozen=True)
class Scenario:
    name: str
    questions: tuple[str, ...]
    frames: int = 1
    choices: tuple[str, ...] = ()  # constrained answers (the grammar's cost is measured)


SCENARIOS = (Scenario("1 question", (Q1,)), Scenario("2 questions", (Q1, Q2)),
             Scenario("before/after, 2 frames", (Q_CHANGE,), frames=2),
             Scenario("yes/no (choices)", (Q_CLEAR,), choices=("yes", "no")))


def write_video(path: Path, seconds: float, fps: float, size: tuple[int, int]) -> Path:
    """An MJPG .avi of moving coloured boxes (every frame different)."""
    import cv2

    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    base = frame(0, size)
    try:
        for i in range(int(seconds * fps)):
            img = base.copy()
            x = (i * 7) % (w - 60)
            img[h // 3:h // 3 + 60, x:x + 60] = (255 * (i % 3 == 0), 255 * (i % 3 == 1), 200)
            writer.write(img[:, :, ::-1])  # OpenCV writes BGR
    finally:
        writer.release()
    return path


def run_scenario(model: LlavaEdge, video: Path, scenario: Scenario, reuse: bool,
                 duration_s: float, max_new_tokens: int, max_fps: float | None = None) -> dict:
    """One scenario for ``duration_s`` on a fresh realtime playback of ``video``."""
    summary = WatchSummary()
    records = []
    with FrameSource(video, realtime=True, loop=True, max_fps=max_fps) as source:
        context = _nothing() if reuse else stateless(model)
        with context:
            for record in watch(model, [source], scenario.questions, frames=scenario.frames,
                                duration_s=duration_s, summary=summary,
                                max_new_tokens=max_new_tokens,
                                **({"choices": list(scenario.choices)} if scenario.choices
                                   else {})):
                records.append(record)
    ages = [r.age_s for r in records]
    first_ages = [r.first_token_at - max(f.captured_at for f in r.frames) for r in records]
    timing = {k: statistics.median(r.timings_ms[k] for r in records)
              for k in ("vision_ms", "prefill_ms", "first_token_ms", "total_ms",
                        "prefill_tokens", "reused_tokens")} if records else {}
    counts = summary.sources[0]
    return {
        "scenario": scenario.name, "reuse": reuse, "questions": list(scenario.questions),
        "frames_per_question": scenario.frames, "seconds": summary.seconds,
        "rounds": summary.rounds, "answers": summary.answers,
        "answers_per_min": 60.0 * summary.answers / summary.seconds if summary.seconds else 0,
        "age_p50_s": _pct(ages, 50), "age_p95_s": _pct(ages, 95),
        "first_token_age_p50_s": _pct(first_ages, 50),
        "frames_read": counts["read"], "frames_taken": counts["taken"],
        "frames_dropped": counts["dropped"],
        "embedding_cache_hits": sum(r.timings_ms["embedding_cache_hits"] for r in records),
        "images_encoded": sum(r.timings_ms["images_encoded"] for r in records),
        "answer_tokens_median": statistics.median(r.n_tokens for r in records) if records
        else None,
        # the grammar's mask + accept per generated token (choices only)
        "constrain_ms_per_token": (statistics.median(
            r.timings_ms["constrain_ms"] / max(r.n_tokens, 1) for r in records)
            if scenario.choices and records else None),
        "median_ms": timing,
    }


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Loop benchmark: {res['preset']} (RANDOM weights)", "",
        f"{res['date']}; {m['cpu']}, {m['logical_cores']} logical cores, "
        f"{m.get('ram_gb', '?')} GB RAM; {res['n_threads']} thread(s); load average "
        f"{res['loadavg_start'][0]:.2f} at start, {res['loadavg_end'][0]:.2f} at end.",
        "",
        f"Command: `{res['command']}`. Bundle: {res['bundle_origin']}; vision "
        f"{res['vision_precision']}, LLM {res['llm_quant']}.",
        "",
        f"Video: {res['video']['size'][0]}x{res['video']['size'][1]} at "
        f"{res['video']['fps']:g} fps played in realtime (looping) into `watch`"
        + (f", at most {res['video']['max_fps']:g} frames/s decoded (--max-fps)"
           if res["video"].get("max_fps") else "") + "; "
        f"{res['duration_s']:g} s per run after a warm-up round; up to "
        f"{res['max_new_tokens']} new tokens per answer (greedy, random weights: answers "
        "are noise, often the whole budget). Age = from the capture of the newest frame "
        "asked about to the answer's end; first-token age likewise to the first token.",
        "",
        *([res["note"], ""] if res.get("note") else []),
        "| scenario | reuse | answers/min | age p50 s | age p95 s | first-token age p50 s | "
        "frames read | asked about | dropped | prefill tokens (median) | vision ms (median) "
        "| embedding cache hits | answer tokens (median) |",
        "| --- | --- |" + " ---: |" * 11,
    ]
    for r in res["runs"]:
        t = r["median_ms"]
        lines.append(
            f"| {r['scenario']} | {'on' if r['reuse'] else 'off'} | "
            f"{r['answers_per_min']:.1f} | {_f(r['age_p50_s'])} | {_f(r['age_p95_s'])} | "
            f"{_f(r['first_token_age_p50_s'])} | {r['frames_read']} | {r['frames_taken']} | "
            f"{r['frames_dropped']} | {t.get('prefill_tokens', 0):.0f} | "
            f"{t.get('vision_ms', 0):.1f} | {r['embedding_cache_hits']} | "
            f"{r['answer_tokens_median']} |")
    grammar = [r for r in res["runs"] if r.get("constrain_ms_per_token") is not None]
    if grammar:
        lines += ["", "Grammar masking (choices), per generated token, median: " + ", ".join(
            f"{g['constrain_ms_per_token']:.2f} ms (reuse {'on' if g['reuse'] else 'off'})"
            for g in grammar) + f", vocabulary of {res['n_vocab']} tokens."]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.",
              ""]
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def run_loop_bench(preset: str = "tiny", bundle: Path | None = None,
                   work_dir: Path = Path("/tmp/llava-edge-loop-bench"),
                   out: Path = RESULTS_ROOT, duration_s: float = 20.0, fps: float = 30.0,
                   size: tuple[int, int] = (640, 480), max_new_tokens: int = 16,
                   threads: int | None = None, max_fps: float | None = None,
                   note: str = "",
                   command: str = "llava-edge bench-loop") -> Path:
    """Every scenario with reuse on and off; writes results.json and results.md to
    ``out/loop-<preset>-<date>-<time>/`` and returns that folder."""
    require_extra("video", "bench-loop (writing and playing its test video)", "cv2")
    load: dict = {}
    origin = "given with --bundle"
    if bundle is None:
        from llava_edge.benchmarks.build import ensure_bundle

        load = {"vision_precision": "int8", "llm_quant": "Q4_K_M"}
        _, bundle = ensure_bundle(preset, work_dir, vision=("int8",), llm=("Q4_K_M",),
                                  purpose="bench-loop (building a preset)")
        origin = (f"built from preset {preset} (random weights) in --work-dir, exported "
                  "without parity gates (int8 vision graph + Q4_K_M GGUF)")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    video = write_video(work / f"loop-{size[0]}x{size[1]}-{fps:g}fps.avi", 10.0, fps, size)
    now = dt.datetime.now(dt.timezone.utc)
    res = {"preset": preset, "weights": "random", "bundle": str(bundle), "bundle_origin": origin,
           "note": note, "date": now.isoformat(timespec="seconds"), "command": command,
           "duration_s": duration_s, "max_new_tokens": max_new_tokens,
           "n_threads": threads or os.cpu_count(), "loadavg_start": os.getloadavg(),
           "video": {"fps": fps, "size": list(size), "seconds": 10.0, "loop": True,
                     "max_fps": max_fps},
           "machine": machine_info(threads or os.cpu_count()), "versions": versions(),
           "scenarios": [asdict(s) for s in SCENARIOS], "runs": []}
    with LlavaEdge.load(bundle, n_threads=threads, tune=False, **load) as model:
        res["vision_precision"], res["llm_quant"] = model.vision_precision, model.llm_quant
        res["n_vocab"] = model.llm.n_vocab
        with FrameSource(video, realtime=False) as warm:  # allocate buffers, load pages
            for _ in watch(model, [warm], [Q1], max_rounds=1, max_new_tokens=max_new_tokens):
                pass
        for scenario in SCENARIOS:
            for reuse in (True, False):
                model.clear_cache()
                run = run_scenario(model, video, scenario, reuse, duration_s, max_new_tokens,
                                   max_fps)
                print(f"{scenario.name}, reuse {'on' if reuse else 'off'}: "
                      f"{run['answers_per_min']:.1f} answers/min, age p50 "
                      f"{_f(run['age_p50_s'])} s, {run['frames_dropped']} of "
                      f"{run['frames_read']} frames dropped", flush=True)
                res["runs"].append(run)
                time.sleep(0.5)
    res["loadavg_end"] = os.getloadavg()
    folder = Path(out) / f"loop-{preset}-{now:%Y%m%d-%H%M}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", res, default=str)
    (folder / "results.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {folder}/results.json and results.md")
    return folder
