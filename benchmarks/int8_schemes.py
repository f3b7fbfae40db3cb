"""int8 / int4 vision-graph schemes compared on this CPU, or on an emulated one.

    python benchmarks/int8_schemes.py prepare --preset tiny-qwen2 --work /tmp/schemes
    python benchmarks/int8_schemes.py measure --work /tmp/schemes            # this CPU
    qemu-x86_64 -cpu Nehalem .venv/bin/python benchmarks/int8_schemes.py measure \\
        --work /tmp/schemes --label "qemu Nehalem (SSE4.2: widening int16 kernel)"

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

import argparse
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


def prepare(args) -> None:
    from llava_edge.export import vision_parity, vision_quantize
    from llava_edge.export.vision import export_vision, graph_name
    from llava_edge.export.vision_graph import load_vision
    from llava_edge.presets import get_preset
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    work = args.work
    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        build_checkpoint(get_preset(args.preset), checkpoint)
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
    images = [image for _, image in vision_parity.synthetic_images(args.images)]
    pixels = vision_parity.preprocess(loaded.processor, images)
    reference = vision_parity.torch_embeds(loaded.encoder(), pixels)
    np.savez(work / "reference.npz", pixels=pixels, embeds=reference)
    (work / "graphs.json").write_text(json.dumps({"preset": args.preset, "graphs": graphs},
                                                 indent=2))
    print(f"prepared {len(graphs)} graphs and {len(images)} reference images in {work}")


def measure(args) -> None:
    import onnxruntime as ort

    from llava_edge.cpu_features import cpu_info
    from llava_edge.export.vision_parity import compare

    work = args.work
    meta = json.loads((work / "graphs.json").read_text())
    ref = np.load(work / "reference.npz")
    pixels, reference = ref["pixels"], ref["embeds"]
    rows = {}
    for name, rel in meta["graphs"].items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(work / rel), options,
                                       providers=["CPUExecutionProvider"])
        run = lambda i: session.run(None, {"pixel_values": pixels[i:i + 1]})[0]  # noqa: E731
        got = np.concatenate([run(i) for i in range(len(pixels))])
        figures = compare(reference, got)
        times = []
        for k in range(args.warmup + args.repeats):
            start = time.perf_counter()
            run(k % len(pixels))
            if k >= args.warmup:
                times.append(time.perf_counter() - start)
        rows[name] = {"mean_cosine": figures.mean_cosine, "min_cosine": figures.min_cosine,
                      "batch1_ms": 1000 * statistics.median(times)}
        del session
    cpu = cpu_info()
    result = {"preset": meta["preset"], "label": args.label or cpu.isa_class,
              "cpu": cpu.to_dict(), "onnxruntime": ort.__version__,
              "python": platform.python_version(), "threads": args.threads,
              "repeats": args.repeats, "schemes": rows}
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))
    for name, row in rows.items():
        print(f"{name:40s} mean {row['mean_cosine']:.5f} min {row['min_cosine']:.4f} "
              f"{row['batch1_ms']:8.1f} ms", file=sys.stderr)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prepare", help="build the graphs and the PyTorch reference (torch)")
    pre.add_argument("--preset", default="tiny-qwen2")
    pre.add_argument("--images", type=int, default=8, help="parity images (synthetic)")
    pre.add_argument("--work", type=Path, required=True)
    mea = sub.add_parser("measure", help="score and time every graph (no torch)")
    mea.add_argument("--work", type=Path, required=True)
    mea.add_argument("--label", help="what CPU this is (default: its ISA class)")
    mea.add_argument("--threads", type=int, default=1)
    mea.add_argument("--warmup", type=int, default=2)
    mea.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    (prepare if args.command == "prepare" else measure)(args)


if __name__ == "__main__":
    main()
