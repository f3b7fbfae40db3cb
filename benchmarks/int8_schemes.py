"""int8 / int4 vision-graph schemes compared on this CPU, or on an emulated one.

    llava-edge bench-int8-schemes prepare --preset tiny-qwen2 --work-dir /tmp/schemes
    llava-edge bench-int8-schemes measure --work-dir /tmp/schemes            # this CPU
    qemu-x86_64 -cpu Nehalem .venv/bin/python -m llava_edge bench-int8-schemes measure \\
        --work-dir /tmp/schemes --label "qemu Nehalem (SSE4.2: widening int16 kernel)"

(``python benchmarks/int8_schemes.py prepare|measure ...`` runs the same commands.)

``prepare`` (needs torch) builds the preset (random weights), exports the fused fp32
vision graph, derives one graph per scheme with :mod:`llava_edge.export.vision_quantize`
and stores the parity images' pixels and PyTorch's embeddings. ``measure`` needs only
ONNX Runtime and numpy, so it also runs under ``qemu-x86_64 -cpu MODEL`` to check an ISA
class this machine does not have (TCG emulates SSE and AVX2, not AVX-512 or AVX-VNNI).

The schemes: ``s8`` full-range int8 weights (the old default), ``s8-7bit``
(``reduce_range``: the default now), ``u8u8`` (uint8 weights, ONNX Runtime's u8 x u8
kernel), and int4 with its q/k/v Attention in either int8 range. Each graph is scored
against PyTorch (mean / min per-token cosine, as the export gates do) and timed at batch 1
(warm-up, repeats, median; times under emulation mean nothing). Results are printed as
JSON and appended to ``WORK/results.jsonl`` with the machine's CPU class.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# name -> (kind, keyword arguments for the quantizer)
SCHEMES: dict[str, tuple[str, dict]] = {
    "int8 s8 (full range, old)": ("int8", {"reduce_range": False}),
    "int8 s8-7bit (reduce_range, default)": ("int8", {"reduce_range": True}),
    "int8 u8u8": ("int8", {"weight_type": "uint8", "reduce_range": False}),
    "int4 + q/k/v s8 (full range, old)": ("int4", {"reduce_range": False}),
    "int4 + q/k/v s8-7bit (default)": ("int4", {"reduce_range": True}),
}


def prepare(work: Path, preset: str = "tiny-qwen2", n_images: int = 8) -> None:
    """Build ``preset`` (random weights), export its fp32 vision graph, derive one graph
    per scheme and store ``n_images`` parity images with PyTorch's embeddings in ``work``."""
    from llava_edge.export import vision_parity, vision_quantize
    from llava_edge.export.vision import export_vision, graph_name
    from llava_edge.export.vision_graph import load_vision
    from llava_edge.benchmarks.build import ensure_checkpoint

    checkpoint = ensure_checkpoint(preset, work)
    export_vision(checkpoint, work / "fp32", precisions=("fp32",), overwrite=True,
                  n_parity_images=2)
    fp32 = work / "fp32" / graph_name("fp32")
    graphs = {"fp32": fp32.relative_to(work).as_posix()}
    for i, (name, (kind, kwargs)) in enumerate(SCHEMES.items()):
        out = work / f"scheme{i}.onnx"
        if kind == "int8":
            vision_quantize.quantize_int8_dynamic(fp32, out, **kwargs)
        else:
            vision_quantize.quantize_int4(fp32, out, vision_quantize.Int4Config(**kwargs))
        graphs[name] = out.relative_to(work).as_posix()
    loaded = load_vision(checkpoint)
    images = [image for _, image in vision_parity.synthetic_images(n_images)]
    pixels = vision_parity.preprocess(loaded.processor, images)
    reference = vision_parity.torch_embeds(loaded.encoder(), pixels)
    np.savez(work / "reference.npz", pixels=pixels, embeds=reference)
    (work / "graphs.json").write_text(json.dumps({"preset": preset, "graphs": graphs},
                                                 indent=2))
    print(f"prepared {len(graphs)} graphs and {len(images)} reference images in {work}")


def measure(work: Path, label: str | None = None, threads: int = 1, warmup: int = 2,
            repeats: int = 7) -> dict:
    """Score and time every graph ``prepare`` left in ``work`` (ONNX Runtime and numpy
    only: no torch); appends the result to ``work/results.jsonl``, prints and returns it."""
    import onnxruntime as ort

    from llava_edge.cpu_features import cpu_info
    from llava_edge.export.vision_parity import compare

    from llava_edge.errors import LlavaEdgeError

    if not (work / "graphs.json").is_file():
        raise LlavaEdgeError(f"{work} has no graphs.json: run `prepare` on it first")
    meta = json.loads((work / "graphs.json").read_text())
    ref = np.load(work / "reference.npz")
    pixels, reference = ref["pixels"], ref["embeds"]
    rows = {}
    for name, rel in meta["graphs"].items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(work / rel), options,
                                       providers=["CPUExecutionProvider"])
        run = lambda i: session.run(None, {"pixel_values": pixels[i:i + 1]})[0]  # noqa: E731
        got = np.concatenate([run(i) for i in range(len(pixels))])
        figures = compare(reference, got)
        times = []
        for k in range(warmup + repeats):
            start = time.perf_counter()
            run(k % len(pixels))
            if k >= warmup:
                times.append(time.perf_counter() - start)
        rows[name] = {"mean_cosine": figures.mean_cosine, "min_cosine": figures.min_cosine,
                      "batch1_ms": 1000 * statistics.median(times)}
        del session
    cpu = cpu_info()
    result = {"preset": meta["preset"], "label": label or cpu.isa_class,
              "cpu": cpu.to_dict(), "onnxruntime": ort.__version__,
              "python": platform.python_version(), "threads": threads,
              "repeats": repeats, "schemes": rows}
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))
    for name, row in rows.items():
        print(f"{name:40s} mean {row['mean_cosine']:.5f} min {row['min_cosine']:.4f} "
              f"{row['batch1_ms']:8.1f} ms", file=sys.stderr)
    return result


if __name__ == "__main__":  # the same command as `llava-edge bench-int8-schemes ...`
    from llava_edge.cli import main

    main(["bench-int8-schemes", *sys.argv[1:]])
