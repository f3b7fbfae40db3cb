"""``llava-edge init``: write a preset checkpoint offline."""

from __future__ import annotations

import click

from llava_edge.cli.common import emit_json, human_count, json_option, progress_bar
from llava_edge.errors import LlavaEdgeError, require_extra
from llava_edge.presets import PRESETS, get_preset


def _list_presets(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for spec in PRESETS.values():
        click.echo(f"{spec.name:20s} {spec.description}")
    ctx.exit(0)


@click.command()
@click.option("--preset", "preset_name", required=True, metavar="NAME",
              help=f"One of: {', '.join(PRESETS)}.")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--list", "list_presets", is_flag=True, is_eager=True, expose_value=False,
              callback=_list_presets, help="List the presets and exit.")
@json_option
def init(preset_name: str, out_dir: str, seed: int, force: bool, as_json: bool) -> None:
    """Write a Hugging Face LLaVA checkpoint for a preset into OUT_DIR, offline.

    The weights are RANDOM (seeded); the tokenizer is trained locally. transformers loads
    the result with LlavaForConditionalGeneration / AutoProcessor.from_pretrained.
    """
    spec = get_preset(preset_name)
    require_extra("train", "llava-edge init", "torch", "transformers", "sentencepiece")
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    try:
        with progress_bar(f"writing {spec.name}", enabled=not as_json) as update:
            built = build_checkpoint(spec, out_dir, seed=seed, overwrite=force, progress=update)
    except FileExistsError as e:
        raise LlavaEdgeError(str(e)) from None
    if as_json:
        emit_json({"path": str(built.path), "preset": built.preset, "n_params": built.n_params,
                   "n_image_tokens": built.n_image_tokens, "vocab_size": built.vocab_size,
                   "random_init": True, "files": built.files})
    else:
        click.echo(f"wrote {built.path}: preset {built.preset}, {human_count(built.n_params)} "
                   f"parameters (random init), {built.n_image_tokens} image tokens per image")
