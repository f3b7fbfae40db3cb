"""``llava-edge convert``: an original LLaVA checkpoint -> a llava-hf checkpoint."""

from __future__ import annotations

import click

from llava_edge.cli.common import emit_json, human_count, json_option, progress_bar
from llava_edge.errors import require_extra


def _template_names() -> str:
    from llava_edge.templates import TEMPLATES

    return ", ".join(TEMPLATES)


@click.command()
@click.argument("src")  # a directory or a Hub id: convert_checkpoint resolves it
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="llava-hf checkpoint directory to write.")
@click.option("--base", metavar="DIR_OR_ID",
              help="The base LLM of a LoRA or stage-1 run (the model it was trained from): "
                   "a directory or a Hub id (org/name[@rev]).")
@click.option("--vision-tower", metavar="DIR_OR_ID",
              help="The CLIP tower, instead of config.json's mm_vision_tower: a directory or "
                   "a Hub id.")
@click.option("--template", metavar="NAME",
              help=f"Chat template, one of: {_template_names()}. Default: vicuna_v1 for "
                   "Llama, mistral_instruct for Mistral.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@json_option
def convert(src: str, out_dir: str, base: str | None, vision_tower: str | None,
            template: str | None, force: bool, as_json: bool) -> None:
    """Convert SRC, a checkpoint of the original LLaVA code (github.com/haotian-liu/LLaVA:
    LlavaLlamaForCausalLM / LlavaMistralForCausalLM; a directory or a Hub id), into a
    Hugging Face LlavaForConditionalGeneration directory that export, train and
    transformers load.

    \b
    SRC may be a full checkpoint, a LoRA run (adapter + non_lora_trainables.bin; needs
    --base) or a stage-1 run (mm_projector.bin; needs --base).
    """
    require_extra("train", "llava-edge convert", "torch", "transformers", "safetensors")
    from llava_edge.trainer.convert import ConvertSpec, convert_checkpoint

    spec = ConvertSpec(src=src, base=base, vision_tower=vision_tower, template=template)
    with progress_bar("converting", enabled=not as_json) as update:
        done = convert_checkpoint(spec, out_dir, overwrite=force, progress=update)
    if as_json:
        emit_json({"path": str(done.path), "kind": done.kind, "llm": done.llm_type,
                   "projector": done.projector, "template": done.template,
                   "template_guessed": done.template_guessed,
                   "vision_tower": done.vision_tower, "vision_weights": done.vision_weights,
                   "image_aspect_ratio": done.image_aspect_ratio, "n_params": done.n_params,
                   "n_image_tokens": done.n_image_tokens, "vocab_size": done.vocab_size,
                   "image_token_id": done.image_token_id, "pad_token_id": done.pad_token_id,
                   "random_init": False, "files": done.files})
        return
    tower = ("its own trained copy" if done.vision_weights == "checkpoint"
             else done.vision_tower)
    click.echo(f"wrote {done.path}: LLaVA {done.kind} checkpoint on {done.llm_type}, "
               f"{human_count(done.n_params)} parameters, {done.projector} projector, "
               f"vision tower {tower}, {done.n_image_tokens} image tokens per image"
               + (", images padded to square" if done.image_aspect_ratio == "pad" else ""))
    if done.template_guessed:
        click.echo(f"template {done.template} (guessed from the {done.llm_type} LLM; choose "
                   f"another with --template: {_template_names()})")
    else:
        click.echo(f"template {done.template}")
