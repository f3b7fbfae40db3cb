"""``llava-edge train``: one stage of LLaVA training (stage 1: projector; stage 2: LLM too).

Every option left out comes from the stage preset (LLaVA-1.5's scripts), the recipe, or
``--config FILE``, in that order; see :mod:`llava_edge.trainer.train_config`. For several
GPUs, start the same command with ``accelerate launch`` or ``torchrun``.
"""

from __future__ import annotations

import click

from llava_edge.cli.common import emit_json, json_option
from llava_edge.errors import require_extra


def _list_recipes(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from llava_edge.trainer.train_config import RECIPES

    for recipe in RECIPES.values():
        click.echo(f"{recipe.name}: {recipe.description}")
        for stage, changes in sorted(recipe.stages.items()):
            click.echo(f"  stage {stage}: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
        for note in recipe.notes:
            click.echo(f"  - {note}")
    ctx.exit(0)


def _flag(name: str, help: str):
    """A --name/--no-name switch that is None when not given (so presets apply)."""
    return click.option(f"--{name}/--no-{name}", default=None, help=help)


@click.command()
@click.option("--stage", type=click.IntRange(1, 2), help="1: align (projector); 2: instruct.")
@click.option("--model", type=click.Path(file_okay=False),
              help="Checkpoint to start from: `llava-edge init` output, stage 1's output, or "
                   "any llava-hf LLaVA or LLaVA-NeXT directory or Hub id (org/name[@revision]).")
@click.option("--data", multiple=True, type=click.Path(dir_okay=False),
              help="LLaVA JSON file (repeat to mix several).")
@click.option("--image-folder", type=click.Path(file_okay=False),
              help="Folder the data's image paths are relative to.")
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Where the trained checkpoint, metrics and resumable checkpoints go.")
@click.option("--recipe", help="Named deviation from LLaVA-1.5 (see --list-recipes).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="YAML or JSON file of settings (keys as the options, with underscores).")
@click.option("--template", type=click.Choice(["auto", "plain", "vicuna_v1", "chatml",
                                               "tokenizer"]),
              help="Prompt format. Default: plain in stage 1, the checkpoint's in stage 2.")
@click.option("--image-aspect-ratio", type=click.Choice(["auto", "pad", "square", "anyres"]),
              help="auto (default): pad for LLaVA, anyres for LLaVA-NeXT. pad: to a square in "
                   "the mean colour (LLaVA-1.5); square: the processor's; anyres: NeXT's tiles.")
@click.option("--model-max-length", type=int, help="Tokens per sample (never cuts images).")
@click.option("--learning-rate", "--lr", "learning_rate", type=float)
@click.option("--projector-lr", type=float, help="Projector's own learning rate.")
@click.option("--vision-lr", type=float, help="Vision tower's own learning rate.")
@click.option("--global-batch-size", type=int, help="Samples per optimizer step, all processes.")
@click.option("--micro-batch-size", type=int, help="Samples per forward pass per process.")
@click.option("--epochs", type=float)
@click.option("--max-steps", type=int, help="Optimizer steps (overrides --epochs).")
@click.option("--warmup-ratio", type=float)
@click.option("--lr-scheduler", type=click.Choice(["cosine", "linear", "constant"]))
@click.option("--weight-decay", type=float)
@click.option("--max-grad-norm", type=float, help="Gradient clipping (0: off).")
@_flag("tune-projector", "Train the projector.")
@_flag("tune-llm", "Train the LLM (stage 2 default).")
@_flag("tune-vision", "Train the vision tower too (frozen in LLaVA).")
@_flag("freeze-newline", "LLaVA-NeXT: keep image_newline at its starting value (it learns "
                         "with the projector by default); stage 1 as LLaVA-NeXT's pretraining.")
@click.option("--lora-r", type=int, help="LoRA rank for the LLM (0: full fine-tuning).")
@click.option("--lora-alpha", type=int)
@click.option("--lora-dropout", type=float)
@_flag("save-adapter", "Also keep the LoRA adapter (the model is merged either way).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
              help="auto: bf16 (or fp16) autocast on GPU, fp32 on CPU.")
@_flag("gradient-checkpointing", "Recompute activations to save memory (default: on GPU).")
@click.option("--num-workers", type=int, help="Data loader workers (default: 4 on GPU, 0 on CPU).")
@click.option("--seed", type=int)
@click.option("--save-steps", type=int, help="A resumable checkpoint every N steps (0: none).")
@click.option("--save-total-limit", type=int, help="Resumable checkpoints kept.")
@click.option("--logging-steps", type=int, help="A log line every N steps (off a terminal).")
@_flag("skip-bad-samples", "Count and skip unusable samples instead of stopping.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --output-dir.")
@click.option("--force", is_flag=True, help="Start over in an --output-dir of an earlier run.")
@click.option("--list-recipes", is_flag=True, is_eager=True, expose_value=False,
              callback=_list_recipes, help="List the recipes and exit.")
@json_option
def train(config_file: str | None, resume: bool, force: bool, as_json: bool, **options) -> None:
    """Train one LLaVA stage and write a Hugging Face checkpoint to --output-dir.

    \b
    Stage 1 (feature alignment): projector only, template plain, lr 1e-3, batch 256.
    Stage 2 (instruction tuning): projector + LLM (or LoRA with --lora-r), lr 2e-5,
    batch 128. Vision frozen unless --tune-vision (or --recipe llava-next, which trains it
    at 2e-6 in stage 2). LLaVA-NeXT checkpoints train with tiled images. Multi-GPU: accelerate launch
    -m llava_edge train ... (see README, "Training").
    """
    require_extra("train", "llava-edge train", "torch", "transformers", "accelerate", "peft")
    from llava_edge.trainer.loop import train as run_training
    from llava_edge.trainer.train_config import resolve_config

    options["data"] = list(options["data"]) or None
    config, provenance = resolve_config(options, config_file)
    result = run_training(config, provenance, resume=resume, force=force,
                          show_progress=not as_json)
    if not result.main_process:
        return  # one summary per run, from the main process
    summary = {
        "output_dir": str(result.output_dir), "stage": result.stage, "recipe": config.recipe,
        "steps": result.steps, "samples": result.samples,
        "skipped_samples": result.skipped_samples, "final_loss": result.final_loss,
        "seconds": round(result.seconds, 1), "resumed_from_step": result.resumed_from_step,
    }
    if as_json:
        emit_json(summary)
    else:
        skipped = f", {result.skipped_samples} bad samples skipped" if result.skipped_samples else ""
        click.echo(f"wrote {result.output_dir}: stage {result.stage}, {result.steps} steps, "
                   f"{result.samples} samples{skipped}, final loss {result.final_loss:.4f}, "
                   f"{result.seconds:.0f} s")
