"""``llava-edge demo``: train -> export -> run -> bench on the tiny model, on a CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from llava_edge.cli.common import emit_json, json_option
from llava_edge.cli.run_cmd import gpu_layers_option, providers_option
from llava_edge.errors import require_extra


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="demo_out",
              show_default=True, help="Where the checkpoints, data and bundle go.")
@click.option("--n-train", default=2000, show_default=True, help="Training images.")
@click.option("--n-eval", default=200, show_default=True, help="Held-out eval questions.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True,
              help="Inference threads (ONNX Runtime, llama.cpp); 1 suits the tiny model.")
@click.option("--stage0-steps", default=2000, show_default=True, type=click.IntRange(0),
              help="Stage 0 (vision tower pretraining) steps; 0 keeps the random tower.")
@gpu_layers_option
@providers_option
@click.option("--force", is_flag=True, help="Start over in a --workdir of an earlier run.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when a demo bar (accuracy, fidelity, training time) is missed.")
@json_option
def demo(workdir: str, n_train: int, n_eval: int, seed: int, threads: int,
         stage0_steps: int, n_gpu_layers, providers, force: bool, strict: bool,
         as_json: bool) -> int:
    """Run the whole flow on the tiny model: stage 0 (a vision tower pretrained on
    synthetic scenes, cached per machine), synthetic data, stage 1, stage 2, evals (short
    answers, multiple choice), export --int4, eval of the bundle, a picture of answers
    (WORKDIR/answers.png), one answered image and a latency table.

    \b
    Takes about 6 minutes on 2 CPU cores, a few more the first time (stage 0); each
    training stage runs as two processes. The summary (also written to
    WORKDIR/demo_summary.json) has the accuracies of PyTorch and of the bundle, chance,
    the tower's probe figures, the bundle's agreement with PyTorch, seconds per phase and
    the latency figures.
    """
    require_extra("train", "llava-edge demo", "torch", "transformers", "accelerate")
    require_extra("export", "llava-edge demo", "onnx", "gguf")
    from llava_edge.demo import BARS, DemoConfig, run_demo

    config = DemoConfig(workdir=Path(workdir), n_train=n_train, n_eval=n_eval, seed=seed,
                        threads=threads, stage0_steps=stage0_steps, force=force,
                        n_gpu_layers="auto" if n_gpu_layers is None else n_gpu_layers,
                        providers=providers or "auto")
    summary = run_demo(config, say=lambda line: click.echo(line, err=as_json))
    if as_json:
        emit_json(summary.to_dict())
    else:
        _print_summary(summary, BARS)
    return 1 if strict and not all(summary.bars.values()) else 0


def _print_summary(s, bars: dict) -> None:
    from llava_edge.benchmarks.quick_latency import table
    from llava_edge.demo import some_examples

    def kinds(by_kind: dict) -> str:
        return ", ".join(f"{k} {v:.0%}" for k, v in by_kind.items())

    click.echo("\n== summary")
    if s.vision_probe:
        p = s.vision_probe
        click.echo("stage 0, vision tower " + ("(from the cache)" if p["cached"] else
                                               f"({s.stage0_seconds:.0f} s)")
                   + ": linear probe, random -> pretrained: "
                   + ", ".join(f"{k} {p['before'][k]:.0%} -> {v:.0%}"
                               for k, v in p["after"].items()))
    click.echo(f"short answers on {s.workdir}/shapes/eval_short.json (exact match):")
    click.echo(f"  PyTorch checkpoint        {s.short_answer_accuracy:.1%}  "
               f"(by kind: {kinds(s.short_by_kind)})")
    for pair, acc in s.bundle_short_answer_accuracies.items():
        click.echo(f"  bundle {pair:<18} {acc:.1%}")
    click.echo(f"multiple choice on {s.workdir}/shapes/eval_mc.json (chance {s.chance:.1%}):")
    click.echo(f"  PyTorch checkpoint        {s.torch_accuracy:.1%}  "
               f"(by kind: {kinds(s.by_kind)})")
    for pair, acc in s.bundle_accuracies.items():
        click.echo(f"  bundle {pair:<18} {acc:.1%}")
    click.echo(f"  fp32+F16 greedy answers equal to PyTorch's (both evals): "
               f"{s.exact_pair_agreement:.1%}")
    if s.answers_image:
        click.echo(f"answers drawn in {s.answers_image}; a few of them:")
        for e in some_examples(s.examples):
            click.echo(f"  {e['question']}  -> {e['answer']!r} "
                       f"({'right' if e['correct'] else 'wrong'}; truth {e['truth']!r})")
    click.echo(f"training (stages 1 + 2): {s.training_seconds:.0f} s; phases: "
               + ", ".join(f"{k} {v:.0f} s" for k, v in s.seconds.items()))
    click.echo("latency (median ms, one image):")
    click.echo(table(s.latency))
    click.echo("bars: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}"
                                    for k, ok in s.bars.items())
               + f"  (short answers >= {bars['short_answer_accuracy_min']:.0%}, int4 within "
               f"2 points on both evals, stages 1 + 2 <= {bars['training_seconds_max']:.0f} s, "
               f"stage 0 <= {bars['stage0_seconds_max']:.0f} s when built)")
    sys.stdout.flush()
