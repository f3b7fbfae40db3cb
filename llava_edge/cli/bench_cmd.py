"""``llava-edge bench``: latency, throughput and memory of a bundle against its peers.

Measures each selected configuration (vision backend x GGUF, plus transformers and stock
llama.cpp as peers) in a fresh process, measures the machine's memory bandwidth and GEMM
throughput in the same run, and writes JSON + markdown + PNG charts. The run itself is
:func:`llava_edge.benchmarks.run.run_bench`; this module only reads the options and prints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from llava_edge.cli.common import command_line, emit_json, json_option, progress_bar
from llava_edge.cli.run_cmd import gpu_layers_option, providers_option
from llava_edge.errors import LlavaEdgeError


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
@gpu_layers_option
@providers_option
@click.option("--reuse/--no-reuse", default=False, show_default=True,
              help="Let llava-edge reuse its KV prefix and image embeddings between the "
                   "repeats (default: cold requests, as the peers run).")
@click.option("--tuned/--no-tuned", default=True, show_default=True,
              help="Add a row with this machine's `llava-edge tune` profile for the bundle "
                   "(its pair and settings), when there is one.")
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
          threads, max_new_tokens, prompt, n_batch, n_ubatch, flash_attn, repack,
          n_gpu_layers, providers, reuse, tuned, gemm_size, bandwidth_mb, work_dir, out_dir, note, as_json):
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
    from llava_edge.benchmarks import report as rep
    from llava_edge.benchmarks.run import BenchOptions, run_bench, summary_json

    if not preset_name and not bundle_dir:
        raise click.UsageError("give --preset or --bundle")
    options = BenchOptions(
        work_dir=Path(work_dir), preset=preset_name,
        bundle=Path(bundle_dir) if bundle_dir else None,
        checkpoint=Path(checkpoint) if checkpoint else None, vision=vision, llm=llm,
        matrix=matrix, peers=peers, repeats=repeats, warmup=warmup, threads=threads,
        max_new_tokens=max_new_tokens, prompt=prompt, n_batch=n_batch, n_ubatch=n_ubatch,
        flash_attn=flash_attn, repack=repack, reuse=reuse, tuned=tuned, gemm_size=gemm_size,
        n_gpu_layers="auto" if n_gpu_layers is None else n_gpu_layers,
        providers=providers or "auto",
        bandwidth_mb=bandwidth_mb, out_dir=Path(out_dir) if out_dir else None, note=note,
        command=command_line(click.get_current_context()))
    with progress_bar("bench") as update:
        result = run_bench(options, _say, update)
    if as_json:
        emit_json(summary_json(result))
    else:
        click.echo(rep.table(result.report))
        click.echo(f"\nwrote {result.out}")
    if result.failed:
        raise LlavaEdgeError(f"{len(result.failed)} configuration(s) failed: " + "; ".join(
            f"{r['config']['name']}: {r['error']}" for r in result.failed))
    rep.check_report(result.report)


def _say(message: str) -> None:
    """Progress lines go to stderr, so stdout stays the table (or the JSON)."""
    click.echo(message, err=True)
