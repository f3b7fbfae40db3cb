"""The benchmark behind ``llava-edge bench``: every selected configuration (vision backend
x GGUF, plus transformers and stock llama.cpp as peers) in a fresh process, the machine's
memory bandwidth and GEMM throughput measured in the same run, JSON + markdown + PNG
charts written after each configuration. :func:`run_bench` does the run;
:mod:`llava_edge.cli.bench_cmd` only turns the command line into :class:`BenchOptions`
and prints what comes back.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from llava_edge.errors import LlavaEdgeError
from llava_edge.manifest import Manifest
from llava_edge.progress import Progress

# Presets whose fp32 PyTorch model does not fit a small machine (28-30 GB): quantized
# llava-edge and llama.cpp rows by default; transformers only in bfloat16 (half that) and
# only when asked (--llm torch-bf16 --vision torch).
QUANTIZED_ONLY = {"llava-1.5-7b": {"vision": ("int8", "int4"), "llm": ("Q4_K_M", "Q4_0")},
                  "llava-1.6-mistral-7b": {"vision": ("int8", "int4"), "llm": ("Q4_K_M", "Q4_0")}}
IMAGE_SIZE = 480  # the request's image; every pipeline resizes it to its tower's size
RESULTS_ROOT = Path(__file__).resolve().parent / "results"

Say = Callable[[str], None]


def drop_fp32_torch(chosen: list) -> tuple[list, list]:
    """For a QUANTIZED_ONLY preset: the configurations without transformers in fp32, and
    those rows as skipped, with the reason (a bf16 transformers row stays)."""
    from llava_edge.benchmarks import configs

    unfit = [c for c in chosen if c.kind == "transformers" and c.llm == "torch"]
    return ([c for c in chosen if c not in unfit],
            [configs.Skipped(c, "quantized only: the fp32 PyTorch model does not fit")
             for c in unfit])


@dataclass
class BenchOptions:
    """What ``llava-edge bench`` measures, and how (its options, one field each)."""

    work_dir: Path
    preset: str | None = None
    bundle: Path | None = None
    checkpoint: Path | None = None
    vision: str = "all"
    llm: str = "all"
    matrix: str = "axes"
    peers: bool = True
    repeats: int = 5
    warmup: int = 1
    threads: int = os.cpu_count() or 1
    max_new_tokens: int = 32
    prompt: str = "Describe the image."
    n_batch: int = 512
    n_ubatch: int | None = None
    flash_attn: bool = False
    repack: bool = True
    #: llama.cpp layers on the GPU for every llama.cpp row, peers included ("auto": every
    #: layer where llama.cpp has a GPU, else none); transformers runs on CUDA when they do.
    n_gpu_layers: int | str = "auto"
    providers: str = "auto"  # ONNX Runtime provider of llava-edge's vision rows
    reuse: bool = False
    tuned: bool = True  # add a row with this machine's tune profile for the bundle, if any
    gemm_size: int = 2048
    bandwidth_mb: int = 512
    out_dir: Path | None = None
    note: str | None = None
    command: str = "llava-edge bench"  # recorded in the report


@dataclass
class BenchRun:
    """What a run left: the results folder and the report written there."""

    out: Path
    report: dict

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.report["results"] if "error" in r]


def run_bench(options: BenchOptions, say: Say, progress: Progress | None = None) -> BenchRun:
    """Measure every configuration ``options`` selects and write the report after each one
    (a run stopped early still leaves its figures). ``say`` gets the progress lines,
    ``progress`` the count of runs done. Raises :class:`LlavaEdgeError` when nothing can
    be measured; configurations that fail are in the report with their error."""
    from llava_edge.benchmarks import analysis, configs, machine, report as rep
    from llava_edge.benchmarks.build import ensure_bundle, mmproj_possible
    from llava_edge.benchmarks.measure import Job, measure_config
    from llava_edge.bundle import open_bundle

    o = options
    if not o.preset and not o.bundle:
        raise LlavaEdgeError("give a preset or a bundle")
    vision_sel = configs.parse_list(o.vision, configs.VISION_CHOICES, "vision backend")
    llm_sel = configs.parse_list(o.llm, configs.LLM_CHOICES, "language model")
    limits = QUANTIZED_ONLY.get(o.preset or "")
    if limits:
        vision_sel = vision_sel or limits["vision"]
        llm_sel = llm_sel or limits["llm"]
    work = Path(o.work_dir)
    started = datetime.now(timezone.utc)
    load_start = load_average()

    if o.bundle:
        bundle = open_bundle(o.bundle, verify="size")
        ckpt = Path(o.checkpoint) if o.checkpoint else manifest_checkpoint(bundle.manifest)
    else:
        vision = tuple(v for v in (vision_sel or configs.ONNX_PRECISIONS)
                       if v in configs.ONNX_PRECISIONS)
        quants = tuple(q for q in (llm_sel or configs.GGUF_QUANTS) if q in configs.GGUF_QUANTS)
        ckpt, bundle_path = ensure_bundle(
            o.preset, work, vision=(configs.DEFAULT_VISION, *vision),
            llm=(configs.DEFAULT_LLM, *quants), mmproj=o.peers and mmproj_possible(o.preset),
            say=say, purpose="llava-edge bench (building a preset)")
        bundle = open_bundle(bundle_path, verify="size")
    src = bundle.manifest.source
    preset = o.preset or src.preset or bundle.path.name
    has_torch = ckpt is not None and torch_available()
    chosen, skipped = configs.select(
        bundle.manifest, vision_sel, llm_sel, o.peers, o.matrix, has_checkpoint=has_torch,
        trt_provider=trt_available(), bf16=has_torch and bf16_available())
    if limits:
        chosen, unfit = drop_fp32_torch(chosen)
        skipped += unfit
    tuned = _tuned_row(bundle.path, say) if o.tuned else None
    if tuned is not None:
        chosen.insert(1 if chosen and chosen[0].default else 0, tuned[0])
        # The tuned row's decode is held to raw llama.cpp on its own GGUF and settings
        # (the default row's raw peer runs the default GGUF at the bench's options).
        if any(c.kind == "llama.cpp-raw" for c in chosen):
            chosen.append(configs.Config("llama.cpp-raw", "-", tuned[0].llm, tuned=True))
    if not chosen:
        raise LlavaEdgeError("nothing to measure: " + "; ".join(
            f"{s.config.name}: {s.reason}" for s in skipped))

    stamp = started.strftime("%Y%m%d-%H%M")
    out = Path(o.out_dir) if o.out_dir else RESULTS_ROOT / f"{preset}-{stamp}"
    logs = work / "logs" / f"{preset}-{stamp}"
    image = request_image(work)
    n_ctx = bundle.manifest.prompt.n_ctx
    say(f"bench {preset}: {len(chosen)} configuration(s), {o.warmup} warm-up + {o.repeats} "
        f"repeats each, {o.threads} thread(s); logs in {logs}")
    for s in skipped:
        say(f"  not measured: {s.config.name}: {s.reason}")

    # The limits first, so that every partial report below already has them.
    say("measuring memory bandwidth and fp32 GEMM ...")
    measured = machine.probe_in_subprocess(o.threads, o.gemm_size, o.bandwidth_mb)
    measured["vision_flops_per_image"] = vision_flops(ckpt)
    random = src.random_init
    info = machine.machine_info(o.threads)
    info["load_average"] = load_start
    settings = {"warmup": o.warmup, "repeats": o.repeats, "threads": o.threads,
                "max_new_tokens": o.max_new_tokens, "prompt": o.prompt,
                "image_size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "n_ctx": n_ctx,
                "n_batch": o.n_batch, "n_ubatch": o.n_ubatch, "flash_attn": o.flash_attn,
                "repack": o.repack, "reuse": o.reuse, "n_gpu_layers": o.n_gpu_layers,
                "providers": o.providers,
                "tuned_profile": tuned and {"path": str(tuned[1].path),
                                            "settings": tuned[1].profile.settings.chosen(),
                                            "objective": tuned[1].profile.objective},
                "matrix": o.matrix, "vision": list(vision_sel or ["all"]),
                "llm": list(llm_sel or ["all"]), "peers": o.peers,
                "statistic": "median and p90 of the repeats"}

    def assemble(results: list[dict], pending: list) -> dict:
        """The report so far; written after every configuration, so a run stopped early
        still leaves its figures (the configurations not reached are listed)."""
        analysis.add_derived(results, measured, bundle, measured["vision_flops_per_image"],
                             o.max_new_tokens)
        info["load_average_end"] = load_average()
        return {
            "schema": rep.SCHEMA, "preset": preset, "complete": not pending,
            "weights": (f"random (llava-edge preset {src.preset}, seeded): latency "
                        "only, answers are noise" if random else "trained checkpoint"),
            "weights_short": "random weights" if random else "trained weights",
            "date_utc": stamp, "command": o.command,
            "machine": info, "machine_note": o.note, "versions": machine.versions(),
            "settings": settings | {"wall_s": round(time.time() - started.timestamp(), 1)},
            "bundle": str(bundle.path), "checkpoint": str(ckpt) if ckpt else None,
            "limits": measured, "results": results,
            "skipped": [s.to_dict() for s in skipped] + [
                c.to_dict() | {"reason": "not reached: the run was stopped before it"}
                for c in pending],
            "targets": analysis.targets(results),
            "notes": ["each configuration runs in a fresh process: load time and peak RSS "
                      "(VmHWM) are its own",
                      "decode tok/s = (new tokens - 1) / time from the first new token to "
                      "the last; first token includes preprocess, vision and prefill"],
        }

    def advance(done: int) -> None:
        if progress:
            progress(done, runs_total)

    results: list[dict] = []
    runs_total = len(chosen) * (o.warmup + o.repeats)
    advance(0)
    for i, c in enumerate(chosen):
        context = None
        if c.kind == "llama.cpp-raw" and results and results[0].get("samples"):
            context = results[0]["samples"][0].get("n_prompt_tokens")
        job = Job(config=c.to_dict(), bundle=str(bundle.path),
                  checkpoint=str(ckpt) if ckpt else None, image=str(image), prompt=o.prompt,
                  max_new_tokens=o.max_new_tokens, warmup=o.warmup, repeats=o.repeats,
                  threads=o.threads, n_ctx=n_ctx, n_batch=o.n_batch, n_ubatch=o.n_ubatch,
                  flash_attn=o.flash_attn, repack=o.repack, context_tokens=context,
                  n_gpu_layers=o.n_gpu_layers, providers=o.providers,
                  reuse=o.reuse, tuned_settings=(tuned[1].profile.settings.chosen()
                                                 if c.tuned else None))
        base = i * (o.warmup + o.repeats)
        result = measure_config(job, logs, lambda done, _t, b=base: advance(b + done))
        advance(base + o.warmup + o.repeats)
        results.append(result)
        say(f"  [{i + 1}/{len(chosen)}] {one_line(result)}")
        report = assemble(results, chosen[i + 1:])
        rep.write_report(out, report)
    return BenchRun(out=out, report=report)


def _tuned_row(bundle: Path, say: Say):
    """(the tuned row's Config, the Lookup) when this machine has a tune profile for the
    bundle; None (said why) otherwise."""
    from llava_edge.benchmarks import configs
    from llava_edge.runtimes.tune.profile import lookup

    found = lookup(bundle)
    if found.profile is None:
        say(f"  no tuned row: {found.note}")
        return None
    s = found.profile.settings
    say(f"  tuned row: {found.note}")
    return configs.Config("llava-edge", s.vision_precision, s.llm_quant, tuned=True), found


def summary_json(run: BenchRun) -> dict:
    """The short JSON ``llava-edge bench --json`` prints (the full report is on disk)."""
    report = run.report
    measured = report["limits"]
    return {"out": str(run.out), "results": [
        {"config": r["config"], "error": r.get("error"), "summary": r.get("summary"),
         "load_ms": r.get("load_ms"), "peak_rss_mb": r.get("peak_rss_mb"),
         "disk_mb": r.get("disk_mb"), "derived": r.get("derived")} for r in report["results"]],
        "skipped": report["skipped"], "targets": report["targets"],
        "limits": {k: v for k, v in measured.items() if k != "bandwidth"}
        | {"bandwidth_gb_s": measured["bandwidth"]["gb_s"]}}


def one_line(r: dict) -> str:
    name = r["config"]["name"]
    if "error" in r:
        return f"{name}: FAILED ({r['error']})"
    s = r["summary"]
    tok = s.get("decode_tok_s")
    return (f"{name}: load {r['load_ms']:.0f} ms, first token "
            f"{s['first_token_ms']['median']:.1f} ms, decode "
            f"{tok['median'] if tok else float('nan'):.1f} tok/s, peak RSS "
            f"{r.get('peak_rss_mb')} MB ({r.get('wall_s')} s)")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def manifest_checkpoint(manifest: Manifest) -> Path | None:
    path = manifest.source.checkpoint
    return Path(path) if path and (Path(path) / "config.json").is_file() else None


def torch_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


def trt_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "TensorrtExecutionProvider" in ort.get_available_providers()


def bf16_available() -> bool:
    """Whether this CPU computes bfloat16 natively (the PyTorch rows run on the CPU):
    x86 with AVX512-BF16 or AMX-BF16, Arm with the BF16 extension. Elsewhere PyTorch
    emulates bf16, slower than fp32, and a bf16 row would only mislead."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap, reliable way to tell
        return False
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def request_image(work: Path) -> Path:
    """The request's image: a fixed scene of coloured shapes, written once."""
    import numpy as np

    from llava_edge.data.shapes import render_scene, sample_scene

    path = work / f"bench-image-{IMAGE_SIZE}.png"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        render_scene(sample_scene(np.random.default_rng(0)), IMAGE_SIZE).convert("RGB").save(path)
    return path


def vision_flops(ckpt: Path | None, image_size: int = IMAGE_SIZE) -> int | None:
    """FLOPs of the vision graph for the request's image (``image_size`` square), counted
    from the checkpoint's config: one pass of the tower per view, so a LLaVA-NeXT image
    costs its base view plus each grid tile (5 passes for 480 px on LLaVA-1.6's grid)."""
    if ckpt is None or not torch_available():
        return None
    from transformers import AutoConfig

    from llava_edge.export.vision_graph import graph_spec, vision_flops as count
    from llava_edge.runtimes.anyres import AnyresPlan

    config = AutoConfig.from_pretrained(ckpt)
    per_view = count(graph_spec(config))["total"]
    if not getattr(config, "image_grid_pinpoints", None):
        return per_view
    plan = AnyresPlan.from_hf_config(config.to_dict(), (image_size, image_size))
    return per_view * plan.n_tiles
