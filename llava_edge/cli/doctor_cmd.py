"""``llava-edge doctor``: what this machine offers and what llava-edge will use on it."""

from __future__ import annotations

import textwrap

import click

from llava_edge.cli.common import emit_json, json_option
from llava_edge.doctor import DoctorReport, diagnose


@click.command()
@click.argument("bundle", required=False, type=click.Path())
@json_option
def doctor(bundle: str | None, as_json: bool) -> None:
    """Describe this machine for llava-edge: CPU and its instruction sets, llama.cpp's
    build, ONNX Runtime's providers, torch, TensorRT, CUDA and GPUs, with a warning (and
    its fix) for each thing that makes llava-edge slower or wrong here. With BUNDLE, also
    which vision graph and GGUF the runtime picks from it. Exits 0 even with warnings."""
    report = diagnose(bundle=bundle)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print(report)


def _short(providers: list[str]) -> str:
    return ", ".join(p.removesuffix("ExecutionProvider") for p in providers) or "none"


def _memory(mib: int | None) -> str:
    return f"{mib} MiB" if mib else "memory shared or unknown"


def _print(r: DoctorReport) -> None:
    cpu, llama, ort, torch = r.cpu, r.llama_cpp, r.onnxruntime, r.torch
    on = [name for name, has in cpu.features.items() if has]
    rows = [
        ("cpu", f"{cpu.model or 'unknown model'}, {cpu.arch}, {cpu.cores} cores, "
                f"{cpu.isa_class}: {' '.join(on) or 'no listed extensions'}; int8 kernel "
                f"{cpu.int8_kernel}" + (" (saturates)" if cpu.int8_saturates else "")),
        ("python", f"{r.python}, {r.platform}"),
        ("llama.cpp", f"not usable ({llama.error})" if llama.error else
         f"llama-cpp-python {llama.version}, GPU offload {'yes' if llama.gpu_offload else 'no'}"
         f", backends {', '.join(llama.backends) or '?'}; CPU build {' '.join(llama.cpu_flags)}"),
        ("onnxruntime", f"not usable ({ort.error})" if ort.error else
         f"{ort.version} ({', '.join(ort.distributions) or '?'}), providers "
         f"{_short(ort.providers)}; the runtime uses {_short(ort.auto_providers)}"),
        ("torch", "not installed" if torch is None else f"not usable ({torch.error})"
         if torch.error else f"{torch.version}, CUDA build {torch.cuda_version or 'no'}, "
         f"CUDA available {'yes' if torch.cuda_available else 'no'}"),
        ("tensorrt", r.tensorrt or "not installed"),
        ("cuda", "none found" if r.cuda is None else ", ".join(
            f"{label} {value}" for label, value in (
                ("driver", r.cuda.driver_version), ("driver's CUDA", r.cuda.driver_cuda),
                ("toolkit (nvcc)", r.cuda.toolkit), ("Jetson Linux", r.cuda.l4t)) if value)),
        ("gpus", "; ".join(f"{g.name} ({_memory(g.memory_mib)}, {g.source})" for g in r.gpus)
         or "none found"),
    ]
    if r.bundle:
        b = r.bundle
        where = "a TensorRT engine" if b.vision_backend == "tensorrt" else _short(b.providers)
        rows.append(("bundle", f"{b.path}: vision {b.vision_file} ({b.vision_precision}) on "
                               f"{where}, LLM {b.llm_file} ({b.llm_quant}); it "
                               f"holds vision {', '.join(b.vision_precisions)} and LLM "
                               f"{', '.join(b.llm_quants)}"))
        rows.append(("vision", "; ".join([b.vision_reason]
                                         + [f"not {p}" for p in b.vision_passed_over])))
        rows.append(("tuning", b.tune_note))
    rows.append(("warnings", str(len(r.warnings)) if r.warnings else "none"))
    width = max(len(k) for k, _ in rows)
    for k, val in rows:
        click.echo(f"{k:>{width}}  {val}")
    for w in r.warnings:
        click.echo(textwrap.fill(w.what, 100, initial_indent="  - ",
                                 subsequent_indent="    ", break_on_hyphens=False))
        click.echo(textwrap.fill(w.fix, 100, initial_indent="    fix: ",
                                 subsequent_indent="         ", break_on_hyphens=False))
