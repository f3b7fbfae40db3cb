"""``llava-edge export``: a checkpoint -> ONNX vision graph(s) + GGUF LLM(s) in a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from llava_edge.cli.common import emit_json, human_bytes, json_option, progress_bar
from llava_edge.errors import LlavaEdgeError, require_extra
from llava_edge.manifest import Manifest


def _csv(_ctx, _param, value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _gates(_ctx, _param, values: tuple[str, ...]) -> dict[str, float]:
    gates = {}
    for item in values:
        precision, sep, number = item.partition("=")
        try:
            gates[precision.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not PRECISION=MIN_COSINE") from None
        if not sep:
            raise click.BadParameter(f"{item!r} is not PRECISION=MIN_COSINE")
    return gates


@click.command()
@click.argument("model")  # a directory or a Hub id: export_bundle resolves it
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write.")
@click.option("--fp16", "quality", flag_value="fp16", help="fp16 vision graph + F16 LLM.")
@click.option("--int8", "quality", flag_value="int8", help="int8 vision graph + Q8_0 LLM.")
@click.option("--int4", "quality", flag_value="int4",
              help="int4 vision graph (int8 if int4 misses its gate) + Q4_K_M LLM.")
@click.option("--vision-precision", callback=_csv, metavar="LIST",
              help="Vision graphs: fp32,fp16,int8,int4 (added to a quality flag's).")
@click.option("--llm-quant", callback=_csv, metavar="LIST",
              help="GGUF types: F16,BF16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0 (added to a quality "
                   "flag's).")
@click.option("--mmproj", is_flag=True, help="Also write an mmproj GGUF for stock llama.cpp.")
@click.option("--trt", callback=_csv, metavar="LIST",
              help="TensorRT engines to build (fp16,int8); needs TensorRT and a GPU.")
@click.option("--calib", "calib_dir", type=click.Path(exists=True, file_okay=False),
              help="Images for int8 calibration and parity.")
@click.option("--gate", "gates", multiple=True, callback=_gates, metavar="P=COS",
              help="Override a vision parity gate, e.g. --gate int8=0.995.")
@click.option("--allow-degraded", is_flag=True, help="Write variants under their gate too.")
@click.option("--no-parity", is_flag=True,
              help="Skip the LLM's PyTorch parity (needs the fp32 model in RAM).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@json_option
def export(model, out_dir, quality, vision_precision, llm_quant, mmproj, trt, calib_dir,
           gates, allow_degraded, no_parity, force, as_json):
    """Split the LLaVA checkpoint MODEL (a directory or a Hugging Face Hub id,
    org/name[@revision]) into a vision graph and a GGUF language model, measure both
    against PyTorch, and write one self-describing bundle to OUT.

    Without a quality flag: fp32 vision + F16 LLM, or exactly the --vision-precision /
    --llm-quant lists given (comma-separated). With a quality flag they add variants to
    its pair, which is the bundle's default.
    """
    require_extra("export", "llava-edge export", "torch", "transformers", "onnx", "gguf")
    from llava_edge.export.bundle_export import ExportOptions, export_bundle

    if quality is None and (vision_precision or llm_quant):
        options = ExportOptions(vision_precisions=vision_precision or ("fp32",),
                                llm_quants=llm_quant or ("F16",))
    else:
        options = ExportOptions.from_quality(quality or "fp32", vision_precision, llm_quant)
    options.mmproj, options.tensorrt = mmproj, trt
    options.calib_dir = Path(calib_dir) if calib_dir else None
    options.gates, options.allow_degraded, options.parity = gates, allow_degraded, not no_parity

    with progress_bar("exporting", enabled=not as_json) as update:
        manifest = export_bundle(model, out_dir, options, overwrite=force,
                                 progress=lambda step, done, total: update(done, total))
    if as_json:
        emit_json(manifest.to_dict())
    else:
        _print_summary(out_dir, manifest)
    # A TensorRT engine that could not be built (no TensorRT, no GPU) does not stop the
    # ONNX/GGUF export, but the command still fails so that scripts notice.
    missing = [p for p in trt if p not in {e.precision for e in manifest.tensorrt}]
    if missing:
        reasons = manifest.parity.get("tensorrt_errors", {})
        why = "; ".join(f"{p}: {reasons.get(p, 'not built')}" for p in missing)
        raise LlavaEdgeError(f"TensorRT engine(s) {', '.join(missing)} not built ({why}); "
                             f"the rest of the bundle was written to {out_dir}")


def _print_summary(out_dir: str, m: Manifest) -> None:
    click.echo(f"wrote bundle {out_dir}")
    for v in m.vision:
        extra = f" (instead of {v.fallback})" if v.fallback else ""
        click.echo(f"  vision {v.precision:5s} {v.file:22s} "
                   f"mean cos {v.parity.get('mean_cosine', float('nan')):.6f} "
                   f"min cos {v.parity.get('min_cosine', float('nan')):.6f}{extra}")
    for precision, g in m.parity["vision_gates"].items():
        if not g["written"]:
            why = f"replaced by {g['fallback']}" if g.get("fallback") else "not written"
            click.echo(f"  vision {precision:5s} under its gate {g['gate']}: {why}")
    for e in m.llm:
        p = m.llm_parity(e.quant)
        fig = (f"top-1 {p['top1_agreement']:.1%}, KL {p['kl_mean']:.2e}"
               if "top1_agreement" in p else "no parity measured")
        size = human_bytes(m.files[e.file].size)
        click.echo(f"  llm    {e.quant:6s} {e.file:22s} {size}, {fig}")
    if m.mmproj:
        click.echo(f"  mmproj {m.mmproj.file}")
    click.echo(f"  default: vision {m.defaults['vision']}, llm {m.defaults['llm']}")
