"""Every vision backend a bundle can run on this machine, timed on one image side by side.

    python -m llava_edge.benchmarks.vision_backends BUNDLE [--out DIR] [--repeats 5]

``auto`` (:mod:`llava_edge.runtimes.vision_backend`) picks a backend by a fixed order;
this measures the order's premise on the machine at hand: each ONNX graph of the bundle on
ONNX Runtime's best provider here, llama.cpp's mtmd with the bundle's mmproj (where its
export parity allows it), the bundle's TensorRT engines (where they match this machine).
For each: the vision stage for one image (all its views), warm-up then repeats, median;
and its agreement with the bundle's most exact graph on the same views (min per-token
cosine, relative error). A backend that cannot run here is listed with the reason.
Writes ``results.json`` (and prints it) into ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from llava_edge.benchmarks.vision_bench import machine_info, timed
from llava_edge.errors import LlavaEdgeError


def candidates(manifest) -> list[tuple[str, dict]]:
    """(label, choose_vision arguments) of every backend worth timing for ``manifest``."""
    rows = [(f"onnx {v.precision}", {"backend": "onnx", "precision": v.precision})
            for v in manifest.vision]
    rows += [(f"tensorrt {e.precision}", {"backend": "tensorrt", "precision": e.precision})
             for e in manifest.tensorrt]
    if manifest.mmproj is not None:
        rows.append((f"mtmd {manifest.mmproj.file}", {"backend": "mtmd"}))
    return rows


def bench_vision_backends(bundle: str | Path, warmup: int = 1, repeats: int = 5,
                          n_threads: int | None = None, image_size=(640, 480)) -> dict:
    from PIL import Image

    from llava_edge.bundle import open_bundle
    from llava_edge.runtimes.pipeline import LlavaEdge
    from llava_edge.runtimes.vision_backend import choose_vision, open_vision

    b = open_bundle(bundle)
    image = Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (image_size[1], image_size[0], 3), np.uint8))
    exact, _ = b.manifest.exact_pair
    rows, reference = [], None
    with LlavaEdge.load(b.path, tune=False, n_threads=n_threads, vision_precision=exact,
                        vision_backend="onnx") as model:
        views = model.pixel_values([image])
        reference = model.vision.encode(views)
        auto = choose_vision(b.manifest, b.path)
    for label, how in candidates(b.manifest):
        row = {"backend": label}
        try:
            choice = choose_vision(b.manifest, b.path, how.get("precision"), None, how["backend"])
            encoder, choice = open_vision(b, choice, n_threads=n_threads)
        except LlavaEdgeError as e:
            rows.append({**row, "not_here": str(e)})
            continue
        try:
            t = timed(lambda: encoder.encode(views), warmup, repeats)
            out = encoder.encode(views)
        finally:
            if hasattr(encoder, "close"):
                encoder.close()
        a, g = reference.reshape(-1, reference.shape[-1]), out.reshape(-1, out.shape[-1])
        cosine = (a * g).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(g, axis=1)
        rows.append({**row, "file": choice.file, "on": choice.placement,
                     "median_ms": round(1000 * t["median_s"], 2),
                     "runs_ms": [round(1000 * s, 2) for s in t["runs_s"]],
                     "cosine_min_to_exact": float(cosine.min()),
                     "relative_error_to_exact": float(np.linalg.norm(a - g) / np.linalg.norm(a))})
    return {"bundle": str(b.path), "views": int(len(views)), "image_size": list(image_size),
            "exact_graph": exact, "warmup": warmup, "repeats": repeats,
            "auto_choice": {"backend": auto.backend, "file": auto.file, "on": auto.placement,
                            "reason": auto.reason},
            "machine": machine_info(n_threads or 0), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="Folder for results.json.")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    report = bench_vision_backends(args.bundle, args.warmup, args.repeats, args.threads)
    report["command"] = "python -m llava_edge.benchmarks.vision_backends " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = json.dumps(report, indent=1)
    if args.out:
        from llava_edge.atomic_dir import write_json

        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "results.json", report)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
