"""``llava-edge pretrain-vision``: stage 0, a tiny vision tower pretrained on the synthetic
shapes (cached per machine), before stages 1 and 2 keep it frozen."""

from __future__ import annotations

import click

from llava_edge.cli.common import emit_json, json_option, progress_bar
from llava_edge.errors import require_extra


@click.command("pretrain-vision")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--output-dir", "-o", required=True, type=click.Path(file_okay=False),
              help="Where the checkpoint with the pretrained tower is written.")
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(1),
              help="Training steps (batches of 64 scenes).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seed of the scenes and of the training order.")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Take the tower from, and put it in, the per-machine cache "
                   "($LLAVA_EDGE_TOWER_CACHE, else ~/.cache/llava-edge/towers).")
@click.option("--force", is_flag=True, help="Replace OUTPUT_DIR if it exists.")
@json_option
def pretrain_vision(checkpoint: str, output_dir: str, steps: int, seed: int, cache: bool,
                    force: bool, as_json: bool) -> None:
    """Stage 0: pretrain CHECKPOINT's (tiny) vision tower on synthetic shapes scenes, as
    LLaVA starts from a pretrained CLIP. Each patch token learns what the grid cell under
    it holds (empty or not, kind, colour, size); a linear probe measures that before and
    after. The LLM and projector are copied unchanged.

    \b
      llava-edge init --preset tiny ckpt/tiny
      llava-edge pretrain-vision ckpt/tiny -o ckpt/tiny-stage0   # then: train --stage 1
    """
    require_extra("train", "llava-edge pretrain-vision", "torch", "transformers")
    from llava_edge.trainer.pretrain_vision import VisionPretrainConfig, pretrain_vision

    config = VisionPretrainConfig(steps=steps, seed=seed)
    with progress_bar("stage 0: vision tower", enabled=not as_json) as update:
        result = pretrain_vision(checkpoint, output_dir, config, use_cache=cache,
                                 overwrite=force, progress=update)
    if as_json:
        emit_json(result.to_dict())
        return
    source = (f"from the cache ({result.cache_file})" if result.cached
              else f"trained in {result.seconds:.0f} s")
    click.echo(f"wrote {result.output_dir}: vision tower {source}")
    for name in result.probe_after:
        click.echo(f"  linear probe, {name:8s} {result.probe_before[name]:6.1%} -> "
                   f"{result.probe_after[name]:6.1%}")
