"""``llava-edge eval``: multiple-choice accuracy and exact match of a checkpoint."""

from __future__ import annotations

import click

from llava_edge.cli.common import emit_json, json_option, progress_bar
from llava_edge.errors import LlavaEdgeError, require_extra


@click.command(name="eval")
@click.argument("model", type=click.Path(file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="LLaVA JSON of questions with their answers (e.g. eval_mc.json).")
@click.option("--image-folder", type=click.Path(file_okay=False),
              help="Folder the data's image paths are relative to.")
@click.option("--template", default="auto", show_default=True,
              type=click.Choice(["auto", "plain", "vicuna_v1", "chatml", "tokenizer"]),
              help="Prompt format; auto: the checkpoint's.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--limit", type=int, help="Only the first N samples.")
@click.option("--predictions", type=click.Path(dir_okay=False),
              help="Also write every reply and its score to this JSON file.")
@click.option("--vision-precision", default=None, help="Bundles: which vision graph.")
@click.option("--llm-quant", default=None, help="Bundles: which GGUF.")
@click.option("--threads", "n_threads", type=int, default=None, help="Bundles: CPU threads.")
@json_option
def eval_(model: str, data: str, image_folder: str | None, template: str, max_new_tokens: int,
          limit: int | None, predictions: str | None, vision_precision: str | None,
          llm_quant: str | None, n_threads: int | None, as_json: bool) -> None:
    """Score MODEL (a checkpoint, or a bundle run by the runtime) on DATA: multiple-choice accuracy (ScienceQA-style prompts, the option
    letter parsed from the greedy reply) and exact match for short answers."""
    import json
    from pathlib import Path

    from llava_edge.data.llava_format import LlavaFormatError, load_llava_json

    from llava_edge.bundle import MANIFEST_NAME

    is_bundle = (Path(model) / MANIFEST_NAME).exists()
    if not is_bundle:
        require_extra("train", "llava-edge eval", "torch", "transformers")
    from llava_edge.trainer.evaluate import evaluate

    try:
        samples = load_llava_json(data, Path(image_folder) if image_folder else None,
                                  check_images=image_folder is not None)
    except LlavaFormatError as e:
        raise LlavaEdgeError(str(e)) from None
    if limit is not None:
        samples = samples[:limit]
    if is_bundle:  # the exported bundle through the runtime: no torch
        from llava_edge.export.verify import bundle_answerer
        from llava_edge.runtimes.pipeline import LlavaEdge

        runtime = LlavaEdge.load(model, vision_precision=vision_precision, llm_quant=llm_quant,
                                 n_threads=n_threads)
        answerer = bundle_answerer(runtime, max_new_tokens=max_new_tokens)
    else:
        from llava_edge.trainer.evaluate import TorchAnswerer

        answerer = TorchAnswerer(model, template=template, max_new_tokens=max_new_tokens)
    with progress_bar("evaluating", enabled=not as_json) as update:
        report = evaluate(samples, answerer, image_folder, progress=update)
    if predictions:
        Path(predictions).write_text(json.dumps(report.to_dict(with_predictions=True),
                                                indent=2) + "\n")
    if as_json:
        emit_json({"model": model, "data": data, **report.to_dict()})
        return
    mc, em = report.multiple_choice, report.exact_match
    parts = []
    if mc["n"]:
        parts.append(f"multiple choice {mc['accuracy']:.1%} ({mc['correct']}/{mc['n']}"
                     + (f", {report.unparsed} without a letter" if report.unparsed else "") + ")")
    if em["n"]:
        parts.append(f"exact match {em['accuracy']:.1%} ({em['correct']}/{em['n']})")
    click.echo(f"{model}: " + "; ".join(parts))
    if len(report.by_kind) > 1:
        click.echo("  " + ", ".join(f"{kind} {s['accuracy']:.1%}"
                                    for kind, s in report.by_kind.items()))
