"""``llava-edge demo``: train -> export -> run -> bench on the tiny model, on a CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from llava_edge.cli.common import emit_json, json_option
from llava_edge.errors import require_extra


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="demo_out",
              show_default=True, help="Where the checkpoints, data and bundle go.")
@click.option("--n-train", default=2000, show_default=True, help="Training images.")
@click.option("--n-eval", default=200, show_default=True, help="Held-out eval questions.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True,
              help="Inference threads (ONNX Runtime, llama.cpp); 1 suits the tiny model.")
@click.option("--force", is_flag=True, help="Start over in a --workdir of an earlier run.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when a demo bar (accuracy, fidelity, training time) is missed.")
@json_option
def demo(workdir: str, n_train: int, n_eval: int, seed: int, threads: int, force: bool,
         strict: bool, as_json: bool) -> int:
    """Run the whole flow on the tiny model: synthetic data, stage 1, stage 2, eval,
    export --int4, eval of the bundle, one answered image and a latency table.

    \b
    Takes about 5 minutes on 2 CPU cores (each training stage runs as two processes).
    The summary (also written to WORKDIR/demo_summary.json) has the accuracies of PyTorch
    and of the bundle, chance, the bundle's agreement with PyTorch, seconds per phase and
    the latency figures.
    """
    require_extra("train", "llava-edge demo", "torch", "transformers", "accelerate")
    require_extra("export", "llava-edge demo", "onnx", "gguf")
    from llava_edge.demo import BARS, DemoConfig, run_demo

    config = DemoConfig(workdir=Path(workdir), n_train=n_train, n_eval=n_eval, seed=seed,
                        threads=threads, force=force)
    summary = run_demo(config, say=lambda line: click.echo(line, err=as_json))
    if as_json:
        emit_json(summary.to_dict())
    else:
        _print_summary(summary, BARS)
    return 1 if strict and not all(summary.bars.values()) else 0


def _print_summary(s, bars: dict) -> None:
    from llava_edge.benchmarks.quick_latency import table

    click.echo("\n== summary")
    click.echo(f"multiple-choice accuracy on {s.workdir}/shapes/eval_mc.json "
               f"(chance {s.chance:.1%}):")
    click.echo(f"  PyTorch checkpoint        {s.torch_accuracy:.1%}  "
               f"(by kind: {', '.join(f'{k} {v:.0%}' for k, v in s.by_kind.items())})")
    for pair, acc in s.bundle_accuracies.items():
        click.echo(f"  bundle {pair:<18} {acc:.1%}")
    click.echo(f"  fp32+F16 greedy answers equal to PyTorch's: {s.exact_pair_agreement:.1%}")
    click.echo(f"training (both stages): {s.training_seconds:.0f} s; phases: "
               + ", ".join(f"{k} {v:.0f} s" for k, v in s.seconds.items()))
    click.echo("latency (median ms, one image):")
    click.echo(table(s.latency))
    click.echo("bars: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}"
                                    for k, ok in s.bars.items())
               + f"  (torch >= {bars['torch_accuracy_min']:.0%}, int4 within 2 points, "
               f"training <= {bars['training_seconds_max']:.0f} s)")
    sys.stdout.flush()
