"""``llava-edge init``: write a checkpoint to start training from: a preset (random
weights, offline) or a pretrained vision tower + LLM with a fresh projector."""

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


# Options that describe an assembly from parts; with --preset they would be ignored.
_PARTS_OPTIONS = ("vision", "llm", "projector", "template", "select_layer", "select_feature")


@click.command()
@click.option("--preset", "preset_name", metavar="NAME",
              help=f"One of: {', '.join(PRESETS)} (random weights).")
@click.option("--vision", metavar="DIR_OR_ID",
              help="Pretrained CLIP or SigLIP tower: a directory or a Hub id (org/name[@rev]).")
@click.option("--llm", metavar="DIR_OR_ID",
              help="Pretrained Llama, Mistral or Qwen2 *ForCausalLM: a directory or a Hub id.")
@click.option("--projector", default="mlp2x_gelu", show_default=True, metavar="NAME",
              help="Fresh projector: mlp2x_gelu (LLaVA-1.5) or linear (LLaVA-1).")
@click.option("--template", metavar="NAME",
              help="Chat template (default: vicuna_v1 for Llama/Mistral, chatml for Qwen2).")
@click.option("--select-layer", default=-2, show_default=True,
              help="Vision hidden state the projector reads.")
@click.option("--select-feature", type=click.Choice(["patch", "cls_patch"]), default="patch",
              show_default=True, help="Patch tokens only, or CLIP's CLS token too.")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True,
              help="Seed of the random weights (the projector's with --vision/--llm).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--list", "list_presets", is_flag=True, is_eager=True, expose_value=False,
              callback=_list_presets, help="List the presets and exit.")
@json_option
@click.pass_context
def init(ctx: click.Context, preset_name: str | None, vision: str | None, llm: str | None,
         projector: str, template: str | None, select_layer: int, select_feature: str,
         out_dir: str, seed: int, force: bool, as_json: bool) -> None:
    """Write a Hugging Face LLaVA checkpoint into OUT_DIR: a preset with RANDOM weights
    (offline), or a pretrained vision tower + LLM with a fresh projector.

    \b
      llava-edge init --preset tiny ckpt/
      llava-edge init --vision openai/clip-vit-large-patch14-336 \\
                      --llm lmsys/vicuna-7b-v1.5 ckpt/     # then: train --stage 1

    transformers loads the result with LlavaForConditionalGeneration /
    AutoProcessor.from_pretrained.
    """
    _check_one_source(ctx, preset_name, vision, llm)
    if preset_name is None:
        _from_parts(vision, llm, projector, template, select_layer, select_feature, out_dir,
                    seed, force, as_json)
        return
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
        per = "view (LLaVA-NeXT: a base view + grid tiles per image)" if spec.is_next \
            else "image"
        click.echo(f"wrote {built.path}: preset {built.preset}, {human_count(built.n_params)} "
                   f"parameters (random init), {built.n_image_tokens} image tokens per {per}")


def _check_one_source(ctx: click.Context, preset: str | None, vision: str | None,
                      llm: str | None) -> None:
    """Exactly one of --preset or --vision with --llm."""
    from click.core import ParameterSource

    if preset is not None:
        given = [f"--{name.replace('_', '-')}" for name in _PARTS_OPTIONS
                 if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if given:
            raise LlavaEdgeError(f"give either --preset or --vision/--llm, not both "
                                 f"({', '.join(given)} only apply to --vision/--llm)")
        return
    if vision is None and llm is None:
        raise LlavaEdgeError("give --preset NAME, or --vision DIR_OR_ID and --llm DIR_OR_ID")
    if vision is None or llm is None:
        missing, present = ("--vision", "--llm") if vision is None else ("--llm", "--vision")
        raise LlavaEdgeError(f"{present} needs {missing} too (a checkpoint needs both parts)")


def _from_parts(vision: str, llm: str, projector: str, template: str | None,
                select_layer: int, select_feature: str, out_dir: str, seed: int, force: bool,
                as_json: bool) -> None:
    require_extra("train", "llava-edge init --vision/--llm", "torch", "transformers")
    from llava_edge.trainer.init_from_parts import PartsSpec, assemble_checkpoint

    spec = PartsSpec(vision=vision, llm=llm, projector=projector, template=template,
                     select_layer=select_layer, select_feature=select_feature, seed=seed)
    built = assemble_checkpoint(spec, out_dir, overwrite=force)
    if as_json:
        emit_json({"path": str(built.path), "vision": built.vision_type, "llm": built.llm_type,
                   "projector": built.projector, "template": built.template,
                   "n_params": built.n_params, "n_image_tokens": built.n_image_tokens,
                   "vocab_size": built.vocab_size, "image_token_id": built.image_token_id,
                   "pad_token_id": built.pad_token_id, "random_init": False,
                   "files": built.files})
    else:
        click.echo(f"wrote {built.path}: {built.vision_type} + {built.llm_type}, "
                   f"{human_count(built.n_params)} parameters, fresh {built.projector} "
                   f"projector (train stage 1 next), {built.n_image_tokens} image tokens per "
                   f"image, template {built.template}")
