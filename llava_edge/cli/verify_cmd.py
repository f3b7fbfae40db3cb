"""``llava-edge verify``: recompute a bundle's parity figures against its checkpoint."""

from __future__ import annotations

import click

from llava_edge.cli.common import emit_json, json_option
from llava_edge.errors import LlavaEdgeError, require_extra


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--against", "checkpoint", required=True, type=click.Path(exists=True, file_okay=False),
              help="The PyTorch checkpoint the bundle was exported from.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False),
              help="Also compare eval accuracy on this LLaVA-format eval set.")
@click.option("--image-folder", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=int, default=None, help="Only the first N eval samples.")
@click.option("--threads", "n_threads", type=int, default=None)
@json_option
def verify(bundle, checkpoint, data, image_folder, limit, n_threads, as_json):
    """Recompute BUNDLE end to end against the checkpoint: image embeddings, logits, greedy
    answers (and eval accuracy with --data), next to the figures recorded at export.
    Exits 1 when a vision graph misses its gate or the exact pair's greedy answers differ."""
    require_extra("export", "llava-edge verify", "torch", "transformers")
    from llava_edge.export.verify import verify_bundle

    report = verify_bundle(bundle, checkpoint, data=data, image_folder=image_folder,
                           limit=limit, n_threads=n_threads,
                           progress=None if as_json else lambda s: click.echo(f"checking {s}",
                                                                               err=True))
    if as_json:
        emit_json(report)
    else:
        exported_on = (report["manifest_measured_on"] or {}).get("isa_class", "an unrecorded CPU")
        click.echo(f"measured here on {report['measured_on']['isa_class']}; the export's "
                   f"figures on {exported_on}"
                   + ("" if report["same_cpu_class"] else
                      " (another CPU class: int8 figures may differ slightly)"))
        for p, fig in report["vision"].items():
            rec = fig["manifest"] or {}
            click.echo(f"vision {p:5s} mean cosine {fig['measured']['mean_cosine']:.6f} "
                       f"(export: {rec.get('mean_cosine', float('nan')):.6f}), preprocessing "
                       f"max abs err {fig['measured']['preprocess_max_abs_err']:.1e}")
        recorded = (report["llm"]["manifest"] or {}).get("logits", {})
        for q, fig in report["llm"]["measured"]["logits"].items():
            rec = recorded.get(q, {})
            click.echo(f"llm    {q:6s} top-1 {fig['top1_agreement']:.1%} KL {fig['kl_mean']:.2e}"
                       + (f" (export: {rec['top1_agreement']:.1%})" if rec else ""))
        for pair, g in report["greedy"].items():
            click.echo(f"greedy {pair}: {g['identical']}/{g['n']} answers identical to PyTorch")
        for name, ev in (report.get("eval") or {}).items():
            mc = ev["multiple_choice"]
            click.echo(f"eval   {name}: {mc['accuracy']:.1%} ({mc['correct']}/{mc['n']})")
    if not report["ok"]:
        raise LlavaEdgeError("verification failed: see the figures above")
