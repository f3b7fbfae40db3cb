"""The benchmarks beside ``llava-edge bench``: ``bench-vision``, ``bench-reuse``,
``bench-serve-load``, ``bench-soak``, ``bench-quick`` and ``bench-int8-schemes prepare|measure``.

Each is a thin shell over its module in :mod:`llava_edge.benchmarks` (the options in,
the function called). They are top-level commands rather than subcommands of ``bench``:
a click group there would change ``llava-edge bench``'s usage and help, and would take
the main benchmark's options before a subcommand's name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from llava_edge.cli.common import command_line, emit_json, json_option
from llava_edge.errors import LlavaEdgeError

_WORK = Path(tempfile.gettempdir()) / "llava-edge-bench"
_PATH = click.Path(file_okay=False, path_type=Path)


def _one_of(preset: str | None, other: str | None, other_flag: str) -> None:
    if bool(preset) == bool(other):
        raise click.UsageError(f"give one of --preset and {other_flag}")


def _names(value: str, choices: tuple[str, ...], what: str) -> tuple[str, ...]:
    from llava_edge.benchmarks.configs import parse_list

    return parse_list(value, choices, what) or choices


def _ints(value: str, what: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise LlavaEdgeError(f"{what}: give positive integers separated by commas, "
                             f"got {value!r}")
    return out


@click.command("bench-vision")
@click.option("--preset", default=None, metavar="NAME",
              help="Build this preset (random weights) in --work-dir, or reuse the one built "
                   "there before.")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An existing LLaVA checkpoint folder.")
@click.option("--out", type=_PATH,
              help="Results folder (default: benchmarks/results/vision-<preset>-<date>).")
@click.option("--work-dir", type=_PATH, default=_WORK, show_default=True,
              help="Where presets are built and graphs exported (reused between runs).")
@click.option("--batches", default="1,8", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=os.cpu_count() or 1, show_default=True,
              type=click.IntRange(1), help="Intra-op threads for torch and ONNX Runtime.")
@click.option("--precisions", default="fp32,fp16,int8,int4", show_default=True,
              help="Graph precisions, comma-separated.")
@click.option("--int8-methods", default="dynamic,static", show_default=True,
              help="int8 quantization methods, comma-separated.")
@click.option("--parity-images", default=4, show_default=True, type=click.IntRange(1))
@click.option("--gemm-size", default=4096, show_default=True, type=click.IntRange(64))
@click.option("--kernel-floor/--no-kernel-floor", default=True, show_default=True,
              help="Also time ONNX Runtime's GEMM and attention kernels alone at the graph's "
                   "shapes (see kernel_floor.py).")
def bench_vision(preset, checkpoint, out, work_dir, batches, warmup, repeats, threads,
                 precisions, int8_methods, parity_images, gemm_size, kernel_floor):
    """Vision benchmark: PyTorch eager fp32 against every ONNX Runtime variant (fp32,
    fp16, int8 dynamic and static, int4), at each batch size, with the machine's fp32
    GEMM ceiling and ONNX Runtime's kernels alone measured in the same run. Writes
    results.json and results.md; targets are reported, not asserted.

    \b
    llava-edge bench-vision --preset tinyllava-1.1b
    llava-edge bench-vision --checkpoint /tmp/ckpt/tinyllava-1.1b --repeats 3
    """
    from llava_edge.benchmarks import vision_bench as vb

    _one_of(preset, checkpoint, "--checkpoint")
    options = vb.VisionBenchOptions(
        preset=preset, checkpoint=checkpoint, out=out, work_dir=work_dir,
        batches=_ints(batches, "--batches"), warmup=warmup, repeats=repeats, threads=threads,
        precisions=_names(precisions, vb.VARIANTS, "precision"),
        int8_methods=_names(int8_methods, vb.INT8_METHODS, "int8 method"),
        parity_images=parity_images, gemm_size=gemm_size, kernel_floor=kernel_floor,
        command=command_line(click.get_current_context()))
    vb.run_vision_bench(options)


@click.command("bench-reuse")
@click.option("--preset", default="tiny", show_default=True, metavar="NAME")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use this bundle instead of building the preset's.")
@click.option("--work-dir", type=_PATH, default=Path("/tmp/llava-edge-reuse-bench"),
              show_default=True, help="Where the preset is built (and reused).")
@click.option("--out", type=_PATH, default=None,
              help="Results root; the run writes reuse-<preset>-<date>/ in it "
                   "(default: benchmarks/results).")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--max-new-tokens", default=8, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--note", default="", help="A line for the report (e.g. load).")
def bench_reuse(preset, bundle, work_dir, out, repeats, max_new_tokens, threads, note):
    """What reuse saves: KV prefix reuse and the image-embedding cache, on a preset's
    bundle (built with random weights unless --bundle): a second question about the same
    frame, chat turn 3 against a stateless call, and a frame seen before.

    \b
    llava-edge bench-reuse --preset tiny                     # a minute
    llava-edge bench-reuse --preset tinyllava-1.1b --threads 2 --work-dir /tmp/w
    llava-edge bench-reuse --preset tiny --bundle BUNDLE     # skip the build
    """
    from llava_edge.benchmarks import reuse_bench

    reuse_bench.run_reuse_bench(
        preset=preset, bundle=bundle, work_dir=work_dir, out=out or reuse_bench.RESULTS_ROOT,
        repeats=repeats, max_new_tokens=max_new_tokens, threads=threads, note=note,
        command=command_line(click.get_current_context()))


@click.command("bench-serve-load")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A bundle directory to serve.")
@click.option("--preset", default=None, metavar="NAME",
              help="Build this preset (random weights) in --work-dir and serve it.")
@click.option("--work-dir", type=_PATH, default=Path(tempfile.gettempdir())
              / "llava-edge-serve-load", show_default=True,
              help="Where --preset is built (and reused).")
@click.option("--clients", default=8, show_default=True, type=click.IntRange(1))
@click.option("--duration", default=60.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds of load.")
@click.option("--max-tokens", default=16, show_default=True, type=click.IntRange(1))
@click.option("--stream-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--max-queue", default=4, show_default=True, type=click.IntRange(0))
@click.option("--backoff", default=0.2, show_default=True, type=click.FloatRange(0),
              help="Seconds after a 429.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1),
              help="Server CPU threads.")
@click.option("--request-timeout", default=120.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="A request with no answer after this is counted as hung.")
@click.option("--warmup", default=None, type=click.FloatRange(0),
              help="Seconds before the memory baseline (default: a tenth of --duration).")
@click.option("--out", type=_PATH, default=None,
              help="Results folder (default: benchmarks/results/serve-load-<preset>-<date>).")
def bench_serve_load(bundle, preset, work_dir, clients, duration, max_tokens, stream_fraction,
                     max_queue, backoff, threads, request_timeout, warmup, out):
    """Load test for `llava-edge serve`: N concurrent clients on loopback for a bounded
    time. Checks that every request was answered or refused with 429 (none lost or hung),
    that the server's counters agree and that its memory stays flat; records requests/s
    and latency percentiles. Exits 1 when a check fails.

    \b
    llava-edge bench-serve-load --preset tiny --clients 8 --duration 60
    llava-edge bench-serve-load --bundle path/to/bundle --clients 4 --duration 120
    """
    from llava_edge.benchmarks.serve_load import ServeLoadOptions, run_serve_load

    _one_of(preset, bundle, "--bundle")
    result = run_serve_load(ServeLoadOptions(
        bundle=bundle, preset=preset, work_dir=work_dir, clients=clients, duration=duration,
        max_tokens=max_tokens, stream_fraction=stream_fraction, max_queue=max_queue,
        backoff=backoff, threads=threads, request_timeout=request_timeout, warmup=warmup,
        out=out, command=command_line(click.get_current_context())))
    if not result["summary"]["passed"]:
        raise LlavaEdgeError("the load test failed a check (see the summary above)")


@click.command("bench-soak")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A bundle directory to serve.")
@click.option("--preset", default=None, metavar="NAME",
              help="Build this preset (random weights) in --work-dir and serve it.")
@click.option("--work-dir", type=_PATH, default=Path(tempfile.gettempdir())
              / "llava-edge-soak", show_default=True,
              help="Where --preset is built (and reused).")
@click.option("--duration", default=1800.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds of traffic.")
@click.option("--clients", default=6, show_default=True, type=click.IntRange(1),
              help="Concurrent clients (more than the queue holds, so some get 429).")
@click.option("--max-queue", default=2, show_default=True, type=click.IntRange(0))
@click.option("--max-tokens", default=24, show_default=True, type=click.IntRange(1),
              help="Each valid request asks for 1 to this many tokens.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1),
              help="Server CPU threads.")
@click.option("--server-timeout", default=20.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="The server's --timeout.")
@click.option("--embed-cache-mb", default=None, type=click.FloatRange(0),
              help="The server's --embed-cache-mb (default: four images' embeddings, so "
                   "that the cache evicts by bytes).")
@click.option("--request-timeout", default=120.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="A request with no answer after this is counted as hung.")
@click.option("--warmup", default=None, type=click.FloatRange(0),
              help="Seconds before the memory baseline (default: a tenth of --duration).")
@click.option("--window", default=60.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds per row of the over-time table.")
@click.option("--out", type=_PATH, default=None,
              help="Results folder (default: benchmarks/results/soak-<preset>-<date>).")
def bench_soak(bundle, preset, work_dir, duration, clients, max_queue, max_tokens, threads,
               server_timeout, embed_cache_mb, request_timeout, warmup, window, out):
    """Soak test for `llava-edge serve`: mixed traffic (images of many sizes and formats,
    streamed or not, remote images from a loopback server, client cancels, bad requests)
    from more clients than the queue holds, for --duration seconds. Checks that nothing
    was lost, hung or answered with an unexpected status, that the server's counters
    agree, and that its memory and open descriptors stay flat after the warm-up; records
    latency percentiles over time. Exits 1 when a check fails.

    \b
    llava-edge bench-soak --preset tiny --duration 1800
    llava-edge bench-soak --bundle path/to/bundle --duration 600 --clients 4
    """
    from llava_edge.benchmarks.soak import SoakOptions, run_soak

    _one_of(preset, bundle, "--bundle")
    result = run_soak(SoakOptions(
        bundle=bundle, preset=preset, work_dir=work_dir, duration=duration, clients=clients,
        max_queue=max_queue, max_tokens=max_tokens, threads=threads,
        server_timeout=server_timeout, embed_cache_mb=embed_cache_mb,
        request_timeout=request_timeout, warmup=warmup, window=window, out=out,
        command=command_line(click.get_current_context())))
    if not result["summary"]["passed"]:
        raise LlavaEdgeError("the soak test failed a check (see the summary above)")


@click.command("bench-quick")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt", default="Describe the image.", show_default=True)
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=None, type=click.IntRange(1),
              help="CPU threads (default: all).")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(1))
def bench_quick(bundle, image, prompt, repeats, threads, max_new_tokens):
    """A short latency table for a bundle: every (vision, LLM) pair it holds, one image,
    warm-up once, then the median of the repeats per stage (the demo's table; the full
    suite is `llava-edge bench`).

    \b
    llava-edge bench-quick BUNDLE IMAGE --repeats 5 --threads 2
    """
    from llava_edge.benchmarks.quick_latency import measure, table

    rows = measure(bundle, image, prompt, repeats, threads, max_new_tokens)
    click.echo(f"median of {repeats} runs after one warm-up, {threads or 'all'} thread(s)")
    click.echo(table(rows))


def _max_tiles_list(_ctx, _param, value: str) -> list[int | None]:
    try:
        limits = [None if v.strip().lower() in ("none", "all") else int(v)
                  for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: a comma-separated list of integers and 'none'")
    if any(v is not None and v < 1 for v in limits):
        raise click.BadParameter("max tiles must be at least 1")
    return limits


@click.command("bench-tiling")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--max-tiles", "max_tiles", default="1,3,none", show_default=True,
              callback=_max_tiles_list, help="Comma-separated limits ('none': no limit).")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0),
              help="Untimed requests per image first.")
@click.option("--images", default=None, metavar="LIST",
              help="Comma-separated subset: square, wide, tall, panorama, portrait "
                   "(default: all five).")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="CPU threads (default: all).")
@click.option("--vision-precision", default=None, help="Which vision graph of the bundle.")
@click.option("--llm-quant", default=None, help="Which GGUF of the bundle.")
@json_option
def bench_tiling(bundle, max_tiles, repeats, warmup, images, threads, vision_precision,
                 llm_quant, as_json):
    """What LLaVA-NeXT's tiling costs before the first token: for images of five aspect
    ratios and each --max-tiles limit, the views, prompt positions, and the median vision,
    prefill and first-token times of cold requests (after one warm-up).

    \b
    llava-edge bench-tiling BUNDLE --max-tiles 1,3,none --repeats 5 --threads 2
    """
    from dataclasses import asdict

    from llava_edge.benchmarks.tiling_cost import measure, table

    names = [n.strip() for n in images.split(",")] if images else None
    rows = measure(bundle, max_tiles, repeats, threads, vision_precision=vision_precision,
                   llm_quant=llm_quant, images=names, warmup=warmup)
    if as_json:
        emit_json({"repeats": repeats, "warmup": warmup, "threads": threads,
                   "rows": [asdict(r) for r in rows]})
        return
    click.echo(f"median of {repeats} cold requests after {warmup} warm-up(s) per image, "
               f"{threads or 'all'} thread(s)")
    click.echo(table(rows))


@click.group("bench-int8-schemes")
def bench_int8_schemes() -> None:
    """int8 / int4 vision-graph schemes compared on this CPU, or on an emulated one:
    `prepare` (torch) builds the graphs and PyTorch's reference once; `measure` (ONNX
    Runtime and numpy only, no torch) scores and times them, also under
    `qemu-x86_64 -cpu MODEL`.

    \b
    llava-edge bench-int8-schemes prepare --preset tiny-qwen2 --work-dir /tmp/schemes
    llava-edge bench-int8-schemes measure --work-dir /tmp/schemes
    qemu-x86_64 -cpu Nehalem .venv/bin/python -m llava_edge bench-int8-schemes measure \\
        --work-dir /tmp/schemes --label "qemu Nehalem"
    """


_work_option = click.option("--work-dir", "--work", "work", type=_PATH, required=True,
                            help="The folder `prepare` fills and `measure` reads.")


@bench_int8_schemes.command("prepare")
@click.option("--preset", default="tiny-qwen2", show_default=True, metavar="NAME")
@click.option("--images", default=8, show_default=True, type=click.IntRange(1),
              help="Parity images (synthetic).")
@_work_option
def int8_prepare(preset, images, work):
    """Build the preset (random weights), its fp32 vision graph, one graph per scheme and
    PyTorch's embeddings of the parity images (needs torch)."""
    from llava_edge.benchmarks.int8_schemes import prepare

    prepare(work, preset=preset, n_images=images)


@bench_int8_schemes.command("measure")
@_work_option
@click.option("--label", default=None, help="What CPU this is (default: its ISA class).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0))
@click.option("--repeats", default=7, show_default=True, type=click.IntRange(1))
def int8_measure(work, label, threads, warmup, repeats):
    """Score every graph against PyTorch's embeddings and time it at batch 1 (no torch);
    prints the result as JSON and appends it to WORK/results.jsonl."""
    from llava_edge.benchmarks.int8_schemes import measure

    measure(work, label=label, threads=threads, warmup=warmup, repeats=repeats)


@click.command("bench-loop")
@click.option("--preset", default="tiny", show_default=True, metavar="NAME")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use this bundle instead of building the preset's.")
@click.option("--work-dir", type=_PATH, default=Path(tempfile.gettempdir())
              / "llava-edge-loop-bench", show_default=True,
              help="Where the preset and the test video are built (and reused).")
@click.option("--out", type=_PATH, default=None,
              help="Results root; the run writes loop-<preset>-<date>-<time>/ in it "
                   "(default: benchmarks/results).")
@click.option("--duration", "duration_s", default=20.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds per run.")
@click.option("--fps", default=30.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="The test video's frame rate (played in realtime).")
@click.option("--max-new-tokens", default=16, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=None, type=click.IntRange(1),
              help="CPU threads (default: all cores).")
@click.option("--max-fps", default=None, type=click.FloatRange(0, min_open=True),
              help="Decode at most this many frames/s of the video (as watch --max-fps).")
@click.option("--note", default="", help="A line for the report (e.g. load).")
def bench_loop(preset, bundle, work_dir, out, duration_s, fps, max_new_tokens, threads, max_fps,
               note):
    """The robot's loop: a test video played at its real frame rate into `watch`;
    answers per minute, answer age p50/p95, frames dropped, with reuse on and off, for
    one question, two questions and a before/after question about two frames.

    \b
    llava-edge bench-loop --preset tiny --duration 20            # ~2 minutes
    llava-edge bench-loop --preset tinyllava-1.1b --duration 60 --threads 2
    """
    from llava_edge.benchmarks import loop_bench

    loop_bench.run_loop_bench(
        preset=preset, bundle=bundle, work_dir=work_dir, out=out or loop_bench.RESULTS_ROOT,
        duration_s=duration_s, fps=fps, max_new_tokens=max_new_tokens, threads=threads,
        max_fps=max_fps, note=note, command=command_line(click.get_current_context()))
