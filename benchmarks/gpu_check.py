"""The GPU check: one run that shows what llava-edge does on a machine with an NVIDIA GPU.

    python -m llava_edge.benchmarks.gpu_check OUT.json [--cpu-only] [--work DIR]

(``scripts/gpu_check.sh`` builds llama.cpp with CUDA and installs the project first, then
runs this.) Each step is timed and recorded, a failed step with its error, and the whole
run ends in one JSON file:

1. ``environment``: what ``llava-edge doctor`` sees (GPUs, llama.cpp's GPU offload, ONNX
   Runtime's providers, torch's CUDA);
2. ``train_step``: stage-2 steps (projector + LLM) with gradient checkpointing on the
   ``tinyllava-1.1b`` preset in bf16 (``tiny`` in fp32 with ``--cpu-only``): samples/s of
   the last step, peak GPU memory;
3. ``export``: ``tiny``, ``tiny-qwen2`` (a SigLIP tower, which llama.cpp's own vision
   path encodes exactly) and ``tinyllava-1.1b`` exported (``--int4`` plus the fp16 graph a
   GPU provider takes, and an mmproj for llama.cpp's own path);
4. ``answer``: each bundle answers one image with every layer on the GPU and with none:
   first token, decode speed, where each stage ran, whether the tokens agree;
5. ``vision_backends``: each vision backend the bundle can run here, timed on one image
   (ONNX graphs on ONNX Runtime's best provider, llama.cpp's mtmd on the GPU where its
   parity allows, TensorRT engines), with its agreement with the fp32 graph;
6. ``bench``: ``llava-edge bench`` rows for each bundle beside its peers.

``--cpu-only`` (what CI runs, so that the script does not rot): the ``tiny`` preset only,
fp32 training, no offload expected; every step still runs the same code.

Models are random-weight presets, built here: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

# tiny-qwen2: a SigLIP tower, the one kind llama.cpp's mtmd encodes exactly (its GPU vision path)
GPU_PRESETS = ("tiny", "tiny-qwen2", "tinyllava-1.1b")
CPU_PRESETS = ("tiny",)
PROMPT = "Describe the image."


def llava_edge(*args: str, timeout: float = 900) -> dict:
    """Run a ``llava-edge`` command with ``--json`` in its own process (as a user would;
    its memory is its own); return its JSON."""
    cmd = [sys.executable, "-m", "llava_edge", *args, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


class Check:
    """The run's record: steps in order, each with its seconds, figures or error."""

    def __init__(self, out: Path, cpu_only: bool, setup: dict | None = None):
        self.out, self.cpu_only, self.setup, self.steps = out, cpu_only, setup, []
        self.started = time.perf_counter()

    def step(self, name: str, fn, *args) -> dict | None:
        """Run ``fn(*args)`` as step ``name``; its dict of figures, or None if it failed."""
        print(f"gpu_check: {name} {' '.join(map(str, args))}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        record = {"name": name, "args": [str(a) for a in args]}
        try:
            figures = fn(*args)
            record.update(ok=True, figures=figures)
        except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
            record.update(ok=False, error=f"{type(e).__name__}: {e}",
                          traceback=traceback.format_exc()[-3000:])
            figures = None
        record["seconds"] = round(time.perf_counter() - t0, 2)
        self.steps.append(record)
        self.write()  # what ran so far survives a kill
        return figures

    def write(self) -> None:
        from llava_edge.atomic_dir import write_json

        write_json(self.out, {
            "check": "llava-edge gpu check", "mode": "cpu-only" if self.cpu_only else "gpu",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(), "platform": platform.platform(),
            "setup": self.setup,  # scripts/gpu_check.sh's build of llama.cpp, when it ran one
            "total_seconds": round(time.perf_counter() - self.started, 2),
            "ok": all(s["ok"] for s in self.steps), "steps": self.steps})


# -- the steps ------------------------------------------------------------------------------

def environment() -> dict:
    from llava_edge.doctor import diagnose

    r = diagnose()
    return {"gpus": [g.name for g in r.gpus], "cuda": r.cuda and r.cuda.__dict__,
            "llama_cpp": {"version": r.llama_cpp.version, "gpu_offload": r.llama_cpp.gpu_offload,
                          "gpu_backends": r.llama_cpp.gpu_backends,
                          "system_info": r.llama_cpp.system_info},
            "onnxruntime": {"version": r.onnxruntime.version,
                            "providers": r.onnxruntime.providers},
            "torch": r.torch and r.torch.__dict__, "tensorrt": r.tensorrt,
            "cpu": r.cpu.model, "warnings": [w.what for w in r.warnings]}


def make_checkpoint(preset: str, work: Path) -> Path:
    ckpt = work / f"ckpt-{preset}"
    if not (ckpt / "config.json").is_file():
        llava_edge("init", "--preset", preset, str(ckpt))
    return ckpt


def make_data(work: Path) -> dict:
    return llava_edge("data", "shapes", str(work / "data"), "--n-train", "64", "--n-eval", "8",
                      "--force")


def train_step(preset: str, work: Path, data: dict, cpu_only: bool) -> dict:
    """Stage 2 (projector + LLM), gradient checkpointing, 3 optimizer steps of 8 samples."""
    from llava_edge.trainer.loop import train
    from llava_edge.trainer.train_config import resolve_config

    import torch

    on_gpu = torch.cuda.is_available() and not cpu_only
    config, _ = resolve_config({
        "stage": 2, "model": str(make_checkpoint(preset, work)), "data": [data["stage2"]],
        "image_folder": data["image_folder"], "output_dir": str(work / f"train-{preset}"),
        "max_steps": 3, "global_batch_size": 8, "micro_batch_size": 4 if on_gpu else 2,
        "precision": "bf16" if on_gpu else "fp32", "gradient_checkpointing": True,
        "save_steps": 0, "num_workers": 0})
    steps = []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    result = train(config, show_progress=False, force=True, on_step=steps.append)
    return {"preset": preset, "precision": config.precision, "device": "cuda" if on_gpu else "cpu",
            "gradient_checkpointing": config.gradient_checkpointing,
            "steps": result.steps, "samples_per_s_last_step": round(steps[-1].samples_per_s, 2),
            "samples_per_s_per_step": [round(s.samples_per_s, 2) for s in steps],
            "final_loss": result.final_loss,
            "peak_gpu_memory_mib": (round(torch.cuda.max_memory_allocated() / 2**20)
                                    if on_gpu else None)}


def export(preset: str, work: Path) -> dict:
    bundle = work / f"bundle-{preset}"
    t0 = time.perf_counter()
    out = llava_edge("export", str(make_checkpoint(preset, work)), "-o", str(bundle), "--int4",
                     "--vision-precision", "fp16", "--mmproj", "--force", timeout=1800)
    return {"preset": preset, "bundle": str(bundle), "seconds": round(time.perf_counter() - t0, 1),
            "file_mb": {name: round(f["size"] / 2**20, 2) for name, f in out["files"].items()},
            "defaults": out["defaults"], "vision_gates": out["parity"].get("vision_gates")}


def answer(preset: str, work: Path) -> dict:
    """One image, greedy, 24 tokens: every layer on the GPU ('auto') and none (0)."""
    import numpy as np
    from PIL import Image

    from llava_edge.runtimes.pipeline import LlavaEdge

    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (240, 320, 3), np.uint8))
    rows = {}
    for layers in ("auto", 0):
        # No reuse: the measured request encodes its image and prefills its prompt again.
        with LlavaEdge.load(work / f"bundle-{preset}", n_gpu_layers=layers, tune=False,
                            reuse_prefix=False, embed_cache_size=0) as model:
            model.ask(image, PROMPT, max_new_tokens=4)  # warm-up: first-call allocations
            a = model.ask(image, PROMPT, max_new_tokens=24)
            t = a.timings
            rows[str(layers)] = {
                "tokens": a.tokens, "text": a.text, "first_token_ms": round(t.first_token_ms, 1),
                "decode_tok_s": round(1000 * (a.n_tokens - 1) / t.decode_ms, 1)
                if t.decode_ms and a.n_tokens > 1 else None,
                "vision_ms": round(t.vision_ms, 1), "vision_on": t.vision_on, "llm_on": t.llm_on,
                "vision_backend": model.vision_choice.backend,
                "vision_file": model.vision_choice.file,
                "vision_passed_over": list(model.vision_choice.passed_over)}
    rows["same_tokens"] = rows["auto"]["tokens"] == rows["0"]["tokens"]
    return rows


def vision_backends(preset: str, work: Path) -> dict:
    from llava_edge.benchmarks.vision_backends import bench_vision_backends

    report = bench_vision_backends(work / f"bundle-{preset}", warmup=2, repeats=10)
    return {"preset": preset, "exact_graph": report["exact_graph"],
            "auto_choice": report["auto_choice"], "rows": report["rows"]}


def bench(preset: str, work: Path) -> dict:
    out = llava_edge("bench", "--bundle", str(work / f"bundle-{preset}"),
                     "--checkpoint", str(make_checkpoint(preset, work)),
                     "--repeats", "3", "--warmup", "1", "--max-new-tokens", "16",
                     "--threads", str(min(os.cpu_count() or 1, 8)),
                     "--out", str(work / f"bench-{preset}"), timeout=1800)
    rows = []
    for r in out["results"]:
        s = r.get("summary") or {}
        rows.append({"config": r["config"]["name"], "error": r.get("error"),
                     "first_token_ms": (s.get("first_token_ms") or {}).get("median"),
                     "decode_tok_s": (s.get("decode_tok_s") or {}).get("median"),
                     "peak_rss_mb": r.get("peak_rss_mb")})
    return {"preset": preset, "out": out["out"], "rows": rows, "skipped": out["skipped"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="The JSON file to write.")
    parser.add_argument("--cpu-only", action="store_true",
                        help="The tiny preset, fp32, no GPU expected (what CI runs).")
    parser.add_argument("--work", type=Path, default=None,
                        help="Where checkpoints and bundles go (default: next to OUT).")
    parser.add_argument("--setup", type=Path, default=None,
                        help="A JSON file of what was set up first (scripts/gpu_check.sh writes "
                             "its llama.cpp build's flags and seconds there); copied into OUT.")
    args = parser.parse_args(argv)
    work = args.work or args.out.parent / "gpu-check-work"
    work.mkdir(parents=True, exist_ok=True)
    setup = json.loads(args.setup.read_text()) if args.setup and args.setup.is_file() else None
    check = Check(args.out, args.cpu_only, setup)
    check.step("environment", environment)
    data = check.step("data", make_data, work)
    presets = CPU_PRESETS if args.cpu_only else GPU_PRESETS
    if data:
        check.step("train_step", train_step, presets[-1], work, data, args.cpu_only)
    for preset in presets:
        if check.step("export", export, preset, work):
            check.step("answer", answer, preset, work)
            check.step("vision_backends", vision_backends, preset, work)
            check.step("bench", bench, preset, work)
    check.write()
    print(f"gpu_check: wrote {args.out} ({'ok' if all(s['ok'] for s in check.steps) else 'with failed steps'})",
          file=sys.stderr)
    return 0 if all(s["ok"] for s in check.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
