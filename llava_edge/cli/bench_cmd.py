"""``llava-edge bench``: latency, throughput and memory of a bundle against its peers.

Measures each selected configuration (vision backend x GGUF, plus transformers and stock
llama.cpp as peers) in a fresh process, measures the machine's memory bandwidth and GEMM
throughput in the same run, and writes JSON + markdown + PNG charts. The modules doing
the work live in :mod:`llava_edge.benchmarks`.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from llava_edge.cli.common import emit_json, json_option
from llava_edge.errors import BundleError, LlavaEdgeError
from llava_edge.manifest import Manifest

# Presets that only run quantized: their fp32 PyTorch model does not fit a small machine.
QUANTIZED_ONLY = {"llava-1.5-7b": {"vision": ("int8", "int4"), "llm": ("Q4_K_M", "Q4_0")}}
IMAGE_SIZE = 480  # the request's image; every pipeline resizes it to its tower's size


@click.command()
@click.option("--preset", "preset_name", default=None, metavar="NAME",
              help="tiny, tinyllava-1.1b, qwen2-0.5b-siglip, llava-1.5-7b: built with random "
                   "weights in --work-dir unless --bundle is given.")
@click.option("--bundle", "bundle_dir", type=click.Path(exists=True, file_okay=False),
              help="An exported bundle to measure (default: build the preset's).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False),
              help="The checkpoint behind --bundle, for the PyTorch runs (default: the one "
                   "its manifest names, if it is still there).")
@click.option("--vision", default="all", show_default=True,
              help="Vision backends: torch,fp32,fp16,int8,int4,trt (comma-separated) or all.")
@click.option("--llm", default="all", show_default=True,
              help="Language models: torch,torch-bf16,F16,Q8_0,Q4_K_M,Q4_0 or all (torch: "
                   "transformers fp32; torch-bf16: transformers in bf16, where the machine "
                   "has native bf16).")
@click.option("--matrix", type=click.Choice(["axes", "full"]), default="axes",
              show_default=True, help="axes: vary vision, then the LLM, around the default "
                                      "pair; full: every (vision, LLM) pair.")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Also run transformers, llama.cpp's LLaVA path and raw llama.cpp.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1),
              help="Measured runs per configuration (median and p90 are reported).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0),
              help="Unmeasured runs first.")
@click.option("--threads", default=os.cpu_count() or 1, show_default=True,
              type=click.IntRange(1), help="Threads for every backend.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(2))
@click.option("--prompt", default="Describe the image.", show_default=True)
@click.option("--n-batch", default=512, show_default=True, type=click.IntRange(1))
@click.option("--n-ubatch", default=None, type=click.IntRange(1),
              help="llama.cpp physical batch (default: min(n_batch, 512)).")
@click.option("--flash-attn", is_flag=True, help="llama.cpp flash attention.")
@click.option("--repack/--no-repack", default=True, show_default=True,
              help="llama.cpp's load-time weight repacking for llava-edge's rows (the peers "
                   "keep llama.cpp's default, on).")
@click.option("--reuse/--no-reuse", default=False, show_default=True,
              help="Let llava-edge reuse its KV prefix and image embeddings between the "
                   "repeats (default: cold requests, as the peers run).")
@click.option("--gemm-size", default=2048, show_default=True, type=click.IntRange(64),
              help="Matrix size of the fp32 GEMM probe.")
@click.option("--bandwidth-mb", default=512, show_default=True, type=click.IntRange(8),
              help="Array size of the memory-bandwidth probe.")
@click.option("--work-dir", type=click.Path(file_okay=False),
              default=str(Path(tempfile.gettempdir()) / "llava-edge-bench"), show_default=True,
              help="Where presets are built (and reused) and per-run logs go.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Results folder (default: benchmarks/results/<preset>-<date>).")
@click.option("--note", default=None, help="A remark recorded with the results, e.g. that "
                                           "the machine was shared.")
@json_option
def bench(preset_name, bundle_dir, checkpoint, vision, llm, matrix, peers, repeats, warmup,
          threads, max_new_tokens, prompt, n_batch, n_ubatch, flash_attn, repack, reuse,
          gemm_size,
          bandwidth_mb, work_dir, out_dir, note, as_json):
    """Benchmark a bundle: load time, preprocess / vision / prefill, time to first token,
    decode tokens/s, end-to-end latency, peak RSS and size on disk per configuration,
    against transformers and stock llama.cpp, with the machine's bandwidth and GEMM
    limits measured in the same run. Writes results.json, results.md, latency.png and
    roofline.png; figures are reported, never asserted.

    \b
    llava-edge bench --preset tiny --threads 1 --repeats 5
    llava-edge bench --preset tinyllava-1.1b --vision int4,fp32 --llm Q4_K_M,F16
    llava-edge bench --bundle out/bundle --no-peers
    """
    from llava_edge.benchmarks import analysis, configs, machine, report as rep
    from llava_edge.benchmarks.measure import Job, measure_config
    from llava_edge.bundle import open_bundle

    if not preset_name and not bundle_dir:
        raise click.UsageError("give --preset or --bundle")
    vision_sel = configs.parse_list(vision, configs.VISION_CHOICES, "vision backend")
    llm_sel = configs.parse_list(llm, configs.LLM_CHOICES, "language model")
    limits = QUANTIZED_ONLY.get(preset_name or "")
    if limits:
        vision_sel = vision_sel or limits["vision"]
        llm_sel = llm_sel or limits["llm"]
    work = Path(work_dir)
    started = datetime.now(timezone.utc)
    load_start = _load_average()

    if bundle_dir:
        bundle = open_bundle(bundle_dir, verify="size")
        ckpt = Path(checkpoint) if checkpoint else _manifest_checkpoint(bundle.manifest)
    else:
        ckpt, bundle_path = _build(preset_name, work, vision_sel, llm_sel, peers)
        bundle = open_bundle(bundle_path, verify="size")
    src = bundle.manifest.source
    preset = preset_name or src.preset or bundle.path.name
    has_torch = ckpt is not None and _torch_available()
    chosen, skipped = configs.select(
        bundle.manifest, vision_sel, llm_sel, peers, matrix, has_checkpoint=has_torch,
        trt_provider=_trt_available(), bf16=has_torch and _bf16_available())
    if limits:
        kept = [c for c in chosen if c.kind != "transformers"]
        skipped += [configs.Skipped(c, "quantized only: the PyTorch model does not fit")
                    for c in chosen if c.kind == "transformers"]
        chosen = kept
    if not chosen:
        raise LlavaEdgeError("nothing to measure: " + "; ".join(
            f"{s.config.name}: {s.reason}" for s in skipped))

    stamp = started.strftime("%Y%m%d-%H%M")
    out = Path(out_dir) if out_dir else _results_root() / f"{preset}-{stamp}"
    logs = work / "logs" / f"{preset}-{stamp}"
    image = _request_image(work)
    n_ctx = bundle.manifest.prompt.n_ctx
    _say(f"bench {preset}: {len(chosen)} configuration(s), {warmup} warm-up + {repeats} "
         f"repeats each, {threads} thread(s); logs in {logs}")
    for s in skipped:
        _say(f"  not measured: {s.config.name}: {s.reason}")

    # The limits first, so that every partial report below already has them.
    _say("measuring memory bandwidth and fp32 GEMM ...")
    measured = machine.probe_in_subprocess(threads, gemm_size, bandwidth_mb)
    measured["vision_flops_per_image"] = _vision_flops(ckpt)
    random = src.random_init
    info = machine.machine_info(threads)
    info["load_average"] = load_start
    settings = {"warmup": warmup, "repeats": repeats, "threads": threads,
                "max_new_tokens": max_new_tokens, "prompt": prompt,
                "image_size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "n_ctx": n_ctx, "n_batch": n_batch,
                "n_ubatch": n_ubatch, "flash_attn": flash_attn, "repack": repack,
                "reuse": reuse,
                "matrix": matrix, "vision": list(vision_sel or ["all"]),
                "llm": list(llm_sel or ["all"]), "peers": peers,
                "statistic": "median and p90 of the repeats"}

    def assemble(results: list[dict], pending: list) -> dict:
        """The report so far; written after every configuration, so a run stopped early
        still leaves its figures (the configurations not reached are listed)."""
        analysis.add_derived(results, measured, bundle, measured["vision_flops_per_image"],
                             max_new_tokens)
        info["load_average_end"] = _load_average()
        return {
            "schema": rep.SCHEMA, "preset": preset, "complete": not pending,
            "weights": (f"random (llava-edge preset {src.preset}, seeded): latency "
                        "only, answers are noise" if random else "trained checkpoint"),
            "weights_short": "random weights" if random else "trained weights",
            "date_utc": stamp, "command": _command_line(click.get_current_context()),
            "machine": info, "machine_note": note, "versions": machine.versions(),
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

    results: list[dict] = []
    runs_total = len(chosen) * (warmup + repeats)
    with _progress(runs_total) as advance:
        for i, c in enumerate(chosen):
            context = None
            if c.kind == "llama.cpp-raw" and results and results[0].get("samples"):
                context = results[0]["samples"][0].get("n_prompt_tokens")
            job = Job(config=c.to_dict(), bundle=str(bundle.path),
                      checkpoint=str(ckpt) if ckpt else None, image=str(image), prompt=prompt,
                      max_new_tokens=max_new_tokens, warmup=warmup, repeats=repeats,
                      threads=threads, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                      flash_attn=flash_attn, repack=repack, context_tokens=context,
                      reuse=reuse)
            base = i * (warmup + repeats)
            result = measure_config(job, logs, lambda done, _t, b=base, n=c.name:
                                    advance(b + done, n))
            advance(base + warmup + repeats, c.name)
            results.append(result)
            _say(f"  [{i + 1}/{len(chosen)}] {_one_line(result)}")
            report = assemble(results, chosen[i + 1:])
            rep.write_report(out, report)

    failed = [r for r in results if "error" in r]
    if as_json:
        emit_json({"out": str(out), "results": [
            {"config": r["config"], "error": r.get("error"), "summary": r.get("summary"),
             "load_ms": r.get("load_ms"), "peak_rss_mb": r.get("peak_rss_mb"),
             "disk_mb": r.get("disk_mb"), "derived": r.get("derived")} for r in results],
            "skipped": report["skipped"], "targets": report["targets"],
            "limits": {k: v for k, v in measured.items() if k != "bandwidth"}
            | {"bandwidth_gb_s": measured["bandwidth"]["gb_s"]}})
    else:
        click.echo(rep.table(report))
        click.echo(f"\nwrote {out}")
    if failed:
        raise LlavaEdgeError(f"{len(failed)} configuration(s) failed: " + "; ".join(
            f"{r['config']['name']}: {r['error']}" for r in failed))
    rep.check_report(report)


def _say(message: str) -> None:
    """Progress lines go to stderr, so stdout stays the table (or the JSON)."""
    click.echo(message, err=True)


def _command_line(ctx: click.Context) -> str:
    """``llava-edge bench`` with the options that were given (defaults left out)."""
    from click.core import ParameterSource

    parts = ["llava-edge", "bench"]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        flag = param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            if param.secondary_opts and not value:
                flag = param.secondary_opts[0]
            parts.append(flag)
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _one_line(r: dict) -> str:
    name = r["config"]["name"]
    if "error" in r:
        return f"{name}: FAILED ({r['error']})"
    s = r["summary"]
    tok = s.get("decode_tok_s")
    return (f"{name}: load {r['load_ms']:.0f} ms, first token "
            f"{s['first_token_ms']['median']:.1f} ms, decode "
            f"{tok['median'] if tok else float('nan'):.1f} tok/s, peak RSS "
            f"{r.get('peak_rss_mb')} MB ({r.get('wall_s')} s)")


class _progress:
    """A progress bar over every run of every configuration, on stderr (TTY only; the
    per-configuration lines above it are printed everywhere)."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        from llava_edge.cli.common import progress_bar

        self._cm = progress_bar("bench")
        update = self._cm.__enter__()

        def advance(done: int, _name: str) -> None:
            update(done, self.total)
        return advance

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _results_root() -> Path:
    from llava_edge import benchmarks

    return Path(benchmarks.__file__).resolve().parent / "results"


def _manifest_checkpoint(manifest: Manifest) -> Path | None:
    path = manifest.source.checkpoint
    return Path(path) if path and (Path(path) / "config.json").is_file() else None


def _torch_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


def _trt_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "TensorrtExecutionProvider" in ort.get_available_providers()


def _bf16_available() -> bool:
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


def _request_image(work: Path) -> Path:
    """The request's image: a fixed scene of coloured shapes, written once."""
    import numpy as np

    from llava_edge.data.shapes import render_scene, sample_scene

    path = work / f"bench-image-{IMAGE_SIZE}.png"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        render_scene(sample_scene(np.random.default_rng(0)), IMAGE_SIZE).convert("RGB").save(path)
    return path


def _vision_flops(ckpt: Path | None) -> int | None:
    """FLOPs per image of the vision graph, counted from the checkpoint's config."""
    if ckpt is None or not _torch_available():
        return None
    from transformers import AutoConfig

    from llava_edge.export.vision_graph import graph_spec, vision_flops

    return vision_flops(graph_spec(AutoConfig.from_pretrained(ckpt)))["total"]


def _build(preset: str, work: Path, vision_sel, llm_sel, peers: bool) -> tuple[Path, Path]:
    """Build (or reuse) the preset's checkpoint and a bundle with what will be measured."""
    from llava_edge.benchmarks.configs import (DEFAULT_LLM, DEFAULT_VISION, GGUF_QUANTS,
                                               ONNX_PRECISIONS)
    from llava_edge.errors import require_extra
    from llava_edge.presets import get_preset

    spec = get_preset(preset)
    root = work / preset
    ckpt, bundle = root / "checkpoint", root / "bundle"
    vision = tuple(v for v in (vision_sel or ONNX_PRECISIONS) if v in ONNX_PRECISIONS)
    quants = tuple(q for q in (llm_sel or GGUF_QUANTS) if q in GGUF_QUANTS)
    mmproj = peers and _mmproj_possible(spec)
    if (ckpt / "config.json").is_file() and _bundle_has(bundle, vision, quants, mmproj):
        return ckpt, bundle
    require_extra("export", "llava-edge bench (building a preset)", "torch", "transformers",
                  "onnx", "gguf")
    from llava_edge.export.bundle_export import ExportOptions, export_bundle
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    if not (ckpt / "config.json").is_file():
        click.echo(f"building preset {preset} (random weights) in {ckpt} ...", err=True)
        build_checkpoint(spec, ckpt, overwrite=True)
    click.echo(f"exporting the bundle to {bundle} ...", err=True)
    options = ExportOptions(
        vision_precisions=tuple(dict.fromkeys((DEFAULT_VISION, *vision))),
        llm_quants=tuple(dict.fromkeys((DEFAULT_LLM, *quants))),
        mmproj=mmproj, allow_degraded=True, parity=False)
    export_bundle(ckpt, bundle, options, overwrite=True)
    return ckpt, bundle


def _mmproj_possible(spec) -> bool:
    """llama.cpp's LLaVA graph has no equivalent for SigLIP + ``default`` or CLIP +
    ``full`` (see export/mmproj.py); such presets run without that peer."""
    return (spec.vision.kind, spec.vision_feature_select_strategy) in (
        ("clip", "default"), ("siglip", "full"))


def _bundle_has(bundle: Path, vision, quants, mmproj: bool) -> bool:
    """Whether a bundle built before holds every graph, GGUF (and mmproj) needed (an
    incomplete or altered one is built again)."""
    from llava_edge.bundle import open_bundle

    try:
        m = open_bundle(bundle, verify="size").manifest
    except BundleError:
        return False
    return (set(vision) <= set(m.vision_precisions) and set(quants) <= set(m.llm_quants)
            and (m.mmproj is not None or not mmproj))
