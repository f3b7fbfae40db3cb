"""``llava-edge data``: datasets in the LLaVA JSON format."""

from __future__ import annotations

import click

from llava_edge.cli.common import emit_json, json_option, progress_bar
from llava_edge.errors import LlavaEdgeError


@click.group()
def data() -> None:
    """Make or check datasets in the LLaVA JSON format."""


@data.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n-train", default=2000, show_default=True, help="Training images.")
@click.option("--n-eval", default=200, show_default=True, help="Held-out eval questions.")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=64, show_default=True, metavar="PX")
@click.option("--mc-options", type=click.Choice(["fixed", "shuffled"]), default="fixed",
              show_default=True,
              help="Multiple-choice options: every answer in a fixed order per question kind "
                   "(the letter names the answer), or the answer and 3 distractors shuffled "
                   "(the model must also read the options).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@json_option
def shapes(out_dir: str, n_train: int, n_eval: int, seed: int, image_size: int,
           mc_options: str, force: bool, as_json: bool) -> None:
    """Write a synthetic shapes dataset: images, stage-1 captions, stage-2 instructions
    and a multiple-choice eval set. The same seed gives the same files."""
    from llava_edge.data.shapes import ShapesConfig, generate_shapes

    try:
        config = ShapesConfig(n_train=n_train, n_eval=n_eval, seed=seed, image_size=image_size,
                              mc_options=mc_options)
        with progress_bar("drawing images", enabled=not as_json) as update:
            ds = generate_shapes(out_dir, config, progress=update, overwrite=force)
    except (ValueError, FileExistsError) as e:
        raise LlavaEdgeError(str(e)) from None
    summary = {"root": str(ds.root), "image_folder": str(ds.image_folder),
               "stage1": str(ds.stage1), "stage2": str(ds.stage2), "eval": str(ds.eval),
               "n_images": ds.n_images, "counts": ds.counts}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {ds.root}: {ds.n_images} images; "
                   + ", ".join(f"{k}: {v}" for k, v in ds.counts.items()))


@data.command("shapes-mc")
@click.argument("dataset_dir", type=click.Path(file_okay=False))
@click.option("--per-image", default=4, show_default=True, type=click.IntRange(1),
              help="Questions (of different kinds) per train image, as one multi-turn "
                   "conversation.")
@click.option("--reply", type=click.Choice(["letter", "statement"]), default="letter",
              show_default=True,
              help="Answer turns as the letter alone, or as a sentence naming what was asked "
                   "about and then the letter.")
@json_option
def shapes_mc(dataset_dir: str, per_image: int, reply: str, as_json: bool) -> None:
    """Write multiple-choice training questions (stage2_mc.json) about the train images
    of a dataset made by `llava-edge data shapes`, in the eval's format: the tiny-demo
    recipe trains stage 2 on them next to stage2_instruct.json."""
    from llava_edge.trainer.shapes_mc import write_shapes_mc

    out = write_shapes_mc(dataset_dir, per_image, reply)
    if as_json:
        emit_json({"file": str(out)})
    else:
        click.echo(f"wrote {out}")


@data.command("shapes-short")
@click.argument("dataset_dir", type=click.Path(file_okay=False))
@click.option("--per-image", default=5, show_default=True, type=click.IntRange(1, 5),
              help="Questions (of different kinds) per train image, as one multi-turn "
                   "conversation.")
@json_option
def shapes_short(dataset_dir: str, per_image: int, as_json: bool) -> None:
    """Write short-answer questions (a word or phrase, LLaVA-1.5's VQA style) about a
    dataset made by `llava-edge data shapes`: stage2_short.json about the train images,
    and eval_short.json with held-out images of its own under images/eval_short/."""
    from llava_edge.trainer.shapes_short import write_shapes_short

    train, held_out = write_shapes_short(dataset_dir, per_image)
    if as_json:
        emit_json({"train": str(train), "eval": str(held_out)})
    else:
        click.echo(f"wrote {train} and {held_out}")


@data.command()
@click.argument("json_file", type=click.Path(dir_okay=False))
@click.option("--image-folder", type=click.Path(file_okay=False),
              help="Also check that every image exists under this folder.")
@json_option
def check(json_file: str, image_folder: str | None, as_json: bool) -> None:
    """Validate a LLaVA-format JSON file (and its images with --image-folder)."""
    from pathlib import Path

    from llava_edge.data.llava_format import LlavaFormatError, load_llava_json

    try:
        samples = load_llava_json(json_file, Path(image_folder) if image_folder else None,
                                  check_images=image_folder is not None)
    except LlavaFormatError as e:
        raise LlavaEdgeError(str(e)) from None
    n_img = sum(1 for s in samples if "image" in s)
    result = {"file": json_file, "samples": len(samples), "with_image": n_img,
              "text_only": len(samples) - n_img, "valid": True}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{json_file}: {len(samples)} valid samples ({n_img} with an image)")
