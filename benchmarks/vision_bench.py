"""Vision benchmark: PyTorch eager fp32 against every ONNX Runtime variant, on this CPU.

    llava-edge bench-vision --preset tinyllava-1.1b
    llava-edge bench-vision --checkpoint /tmp/ckpt/tinyllava-1.1b --repeats 3

Exports the checkpoint's vision tower + projector with ``export_vision`` (fp32, fp16,
int8 dynamic and static, int4; variants under their parity gate are benchmarked anyway
and marked), then times batch 1 and batch 8 for PyTorch and each graph (warm-up runs,
then repeats; the median is reported). In the same run it measures the machine's fp32
GEMM throughput (large square matmuls, torch and numpy, the better of the two) and counts
the graph's FLOPs from the config, so each time is also a fraction of that ceiling. And
it times ONNX Runtime's own kernels alone at the graph's shapes (``kernel_floor.py``: the
GEMMs in fp32 and int8, the attention core), which says how far each target is from what
those kernels allow on this CPU.

Targets (reported, not asserted): int8 at most 0.25x PyTorch eager time while holding its
parity gate; fp32 at 90% or more of the measured GEMM throughput.

Presets are built locally with random weights: the numbers are latency only, never
accuracy. Writes ``results.json`` and ``results.md`` into ``--out`` (default
``benchmarks/results/vision-<preset>-<date>/``).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import write_dir, write_json

ROOT = Path(__file__).resolve().parent
VARIANTS = ("fp32", "fp16", "int8", "int4")
INT8_METHODS = ("dynamic", "static")


@dataclass
class VisionBenchOptions:
    """What ``llava-edge bench-vision`` measures (its options, one field each). Give
    ``preset`` (built with random weights in ``work_dir``, or reused from there) or
    ``checkpoint``."""

    preset: str | None = None
    checkpoint: Path | None = None
    out: Path | None = None  # default: benchmarks/results/vision-<preset>-<date>
    work_dir: Path = Path(tempfile.gettempdir()) / "llava-edge-bench"
    batches: tuple[int, ...] = (1, 8)
    warmup: int = 2
    repeats: int = 5
    threads: int = os.cpu_count() or 1
    precisions: tuple[str, ...] = VARIANTS
    int8_methods: tuple[str, ...] = INT8_METHODS
    parity_images: int = 4
    gemm_size: int = 4096
    kernel_floor: bool = True  # also time ONNX Runtime's kernels alone (kernel_floor.py)
    command: str = "llava-edge bench-vision"  # recorded in the report


def timed(fn, warmup: int, repeats: int) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; seconds per run."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs),
            "runs_s": runs}


def gemm_throughput(n: int, repeats: int = 5) -> dict:
    """fp32 GFLOP/s of n x n matmuls in torch and numpy (median of ``repeats``)."""
    import torch

    flops = 2 * n**3
    out = {"size": n}
    a, b = torch.randn(n, n), torch.randn(n, n)
    out["torch_gflops"] = flops / timed(lambda: torch.matmul(a, b), 1, repeats)["median_s"] / 1e9
    x, y = a.numpy(), b.numpy()
    out["numpy_gflops"] = flops / timed(lambda: x @ y, 1, repeats)["median_s"] / 1e9
    out["peak_gflops"] = max(out["torch_gflops"], out["numpy_gflops"])
    return out


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "threads_used": threads,
            "platform": platform.platform(), "python": platform.python_version()}
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["ram_gb"] = round(psutil.virtual_memory().total / 1024**3, 1)
        info["load_average"] = list(os.getloadavg())
    except ImportError:
        pass
    return info


def resolve_checkpoint(args: VisionBenchOptions) -> tuple[Path, str]:
    """The checkpoint folder and its preset name; builds the preset once if asked."""
    from llava_edge.benchmarks.build import ensure_checkpoint
    from llava_edge.checkpoint_info import read_json

    if args.checkpoint:
        config = read_json(args.checkpoint / "config.json", "config.json")
        return args.checkpoint, (config.get("llava_edge") or {}).get("preset", args.checkpoint.name)
    return ensure_checkpoint(args.preset, args.work_dir, say=lambda m: print(m, flush=True)), \
        args.preset


def export_variants(checkpoint: Path, work: Path, args: VisionBenchOptions) -> dict:
    """Export every requested variant. Returns ``variants`` ({label: (graph path, variant
    result)}, int8 labelled by method) and ``exports`` (timing and result per export)."""
    from llava_edge.export.vision import export_vision

    variants, exports = {}, {}
    methods = args.int8_methods if "int8" in args.precisions else args.int8_methods[:1]
    for i, method in enumerate(methods):
        # The first export makes every precision; later ones only the other int8 method.
        precisions = args.precisions if i == 0 else ["int8"]
        out = work / f"graphs-{method}"
        start = time.perf_counter()
        result = export_vision(
            checkpoint, out, precisions=precisions, int8_method=method, allow_degraded=True,
            n_parity_images=args.parity_images, overwrite=True,
            progress=lambda step, done, total: print(f"  [{done}/{total}] {step}", flush=True))
        exports[method] = {"seconds": time.perf_counter() - start, "result": result}
        for v in result.variants:
            label = f"int8-{method}" if v.precision == "int8" else v.precision
            variants[label] = (out / v.files[0], v)
    return {"variants": variants, "exports": exports}


def file_mb(path: Path) -> float:
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return round((size + (data.stat().st_size if data.exists() else 0)) / 1024**2, 1)


def run_vision_bench(args: VisionBenchOptions) -> Path:
    """Export the variants, time them against PyTorch eager, write the report; returns
    the results folder."""
    import torch

    from llava_edge.benchmarks.kernel_floor import kernel_floor
    from llava_edge.export import onnx_export
    from llava_edge.export.vision import tool_versions
    from llava_edge.export.vision_graph import load_vision, vision_flops

    torch.set_num_threads(args.threads)
    checkpoint, preset = resolve_checkpoint(args)
    date = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = args.out or ROOT / "results" / f"vision-{preset}-{date}"
    work = args.work_dir / f"vision-{preset}"

    print(f"exporting {checkpoint} ...", flush=True)
    exported = export_variants(checkpoint, work, args)
    loaded = load_vision(checkpoint)
    encoder, spec = loaded.encoder(), loaded.spec
    flops = vision_flops(spec)

    rows, floors = [], {}
    rng = np.random.default_rng(0)
    for batch in args.batches:
        shape = (batch, 3, spec.image_size, spec.image_size)
        pixels = rng.standard_normal(shape).astype(np.float32)
        tensor = torch.from_numpy(pixels)
        print(f"batch {batch}: torch eager fp32 ...", flush=True)
        with torch.inference_mode():
            t = timed(lambda: encoder(tensor), args.warmup, args.repeats)
        torch_s = t["median_s"]
        rows.append({"backend": "torch eager", "variant": "fp32", "batch": batch, **t})
        for label, (path, result) in exported["variants"].items():
            print(f"batch {batch}: onnxruntime {label} ...", flush=True)
            start = time.perf_counter()
            session = onnx_export.make_session(path, threads=args.threads)
            load_s = time.perf_counter() - start
            t = timed(lambda: session.run(None, {"pixel_values": pixels}),
                      args.warmup, args.repeats)
            rows.append({"backend": "onnxruntime", "variant": label, "batch": batch, **t,
                         "session_load_s": load_s, "file_mb": file_mb(path),
                         "parity_mean_cosine": result.parity["mean_cosine"],
                         "parity_min_cosine": result.parity["min_cosine"],
                         "parity_max_abs_err": result.parity["max_abs_err"],
                         "gate": result.gate, "passed_gate": result.passed})
            del session
        for row in rows:
            if row["batch"] == batch:
                row["x_torch"] = row["median_s"] / torch_s
                row["per_image_s"] = row["median_s"] / batch
                row["gflops"] = flops["total"] * batch / row["median_s"] / 1e9
        if args.kernel_floor:
            print(f"batch {batch}: ONNX Runtime's kernels alone (GEMMs, attention core) ...",
                  flush=True)
            floors[f"batch{batch}"] = kernel_floor(spec, batch, args.threads, timed)

    # Last: numpy's BLAS threads keep spinning after a matmul and would slow whatever ran
    # right after them.
    print("measuring fp32 GEMM throughput ...", flush=True)
    gemm = gemm_throughput(args.gemm_size)
    for row in rows:
        row["fraction_of_gemm"] = row["gflops"] / gemm["peak_gflops"]

    targets = {}
    for batch in args.batches:
        by = {r["variant"]: r for r in rows
              if r["batch"] == batch and r["backend"] == "onnxruntime"}
        int8 = [r for k, r in by.items() if k.startswith("int8") and r["passed_gate"]]
        best = min(int8, key=lambda r: r["median_s"]) if int8 else None
        targets[f"batch{batch}"] = {
            "int8_x_torch": best and best["x_torch"], "int8_variant": best and best["variant"],
            "int8_target_met": bool(best and best["x_torch"] <= 0.25),
            "fp32_fraction_of_gemm": by.get("fp32", {}).get("fraction_of_gemm"),
            "fp32_target_met": bool(by.get("fp32") and by["fp32"]["fraction_of_gemm"] >= 0.9),
        }
        floor = floors.get(f"batch{batch}")
        if floor:
            torch_s = next(r["median_s"] for r in rows
                           if r["batch"] == batch and r["backend"] == "torch eager")
            targets[f"batch{batch}"] |= {
                "int8_floor_x_torch": floor["int8_s"] / torch_s,
                "fp32_floor_fraction_of_gemm": (flops["total"] * batch / floor["fp32_s"] / 1e9
                                                / gemm["peak_gflops"]),
            }

    report = {
        "benchmark": "vision", "preset": preset, "checkpoint": str(checkpoint),
        "weights": "random (llava-edge preset, seeded): latency only, not accuracy",
        "date_utc": date, "command": args.command,
        "machine": machine_info(args.threads), "versions": tool_versions(),
        "settings": {"warmup": args.warmup, "repeats": args.repeats,
                     "batches": list(args.batches),
                     "threads": args.threads, "statistic": "median"},
        "graph": spec.to_dict(), "flops_per_image": flops, "gemm": gemm,
        "export": {m: {"seconds": e["seconds"], "exporter": e["result"].exporter,
                       "fused_ops": e["result"].fused_ops}
                   for m, e in exported["exports"].items()},
        "results": rows, "kernel_floor": floors, "targets": targets,
    }
    write_report(out, report)
    print(f"wrote {out}/results.json and results.md")
    return out


def write_report(out: Path, report: dict) -> None:
    """results.json + results.md, moved into place together."""
    def fill(tmp: Path) -> None:
        write_json(tmp / "results.json", report)
        (tmp / "results.md").write_text(markdown(report))

    write_dir(out, fill)


def markdown(report: dict) -> str:
    m, g = report["machine"], report["gemm"]
    lines = [
        f"# Vision benchmark: {report['preset']} ({report['date_utc']} UTC)",
        "",
        f"Weights: {report['weights']}.",
        f"Machine: {m['cpu']}, {m.get('physical_cores', '?')} physical / {m['logical_cores']} "
        f"logical cores, {m['threads_used']} threads used"
        + (f", load average at the end {m['load_average'][0]:.1f}"
           if "load_average" in m else "") + ".",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Command: `{report['command']}`",
        "",
        f"Graph: {report['graph']['kind']} {report['graph']['image_size']} px, "
        f"{report['graph']['n_layers_run']} of {report['graph']['num_layers']} layers computed, "
        f"{report['graph']['n_image_tokens']} tokens x {report['graph']['n_embd']}; "
        f"{report['flops_per_image']['total'] / 1e9:.1f} GFLOP per image.",
        f"fp32 GEMM ({g['size']}^2): torch {g['torch_gflops']:.0f} GFLOP/s, numpy "
        f"{g['numpy_gflops']:.0f} GFLOP/s; ceiling used: {g['peak_gflops']:.0f} GFLOP/s.",
        f"Timing: {report['settings']['warmup']} warm-up, {report['settings']['repeats']} "
        "repeats, median.",
        "",
        "| batch | backend | variant | median ms | ms / image | x torch | GFLOP/s | % GEMM | "
        "mean cos | min cos | gate | MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        gate = "" if "gate" not in r else f"{r['gate']} {'ok' if r['passed_gate'] else 'MISSED'}"
        cos = (f"{r['parity_mean_cosine']:.6f} | {r['parity_min_cosine']:.6f}"
               if "parity_mean_cosine" in r else "- | -")
        lines.append(
            f"| {r['batch']} | {r['backend']} | {r['variant']} | {1000 * r['median_s']:.1f} | "
            f"{1000 * r['per_image_s']:.1f} | {r['x_torch']:.2f} | {r['gflops']:.0f} | "
            f"{100 * r['fraction_of_gemm']:.0f}% | {cos} | {gate} | {r.get('file_mb', '')} |")
    lines += ["", "Targets (reported, not asserted):", ""]
    for batch, t in report["targets"].items():
        int8 = ("no int8 variant holds its gate" if t["int8_x_torch"] is None else
                f"{t['int8_variant']} at {t['int8_x_torch']:.2f}x torch "
                f"({'met' if t['int8_target_met'] else 'not met'}, target <= 0.25x)")
        fp32 = ("no fp32 variant" if t["fp32_fraction_of_gemm"] is None else
                f"fp32 at {100 * t['fp32_fraction_of_gemm']:.0f}% of GEMM "
                f"({'met' if t['fp32_target_met'] else 'not met'}, target >= 90%)")
        lines.append(f"- {batch}: {int8}; {fp32}")
    if report.get("kernel_floor"):
        lines += kernel_floor_markdown(report)
    return "\n".join(lines) + "\n"


def kernel_floor_markdown(report: dict) -> list[str]:
    """The kernel-floor section: what ONNX Runtime's own kernels allow at these shapes."""
    peak = report["gemm"]["peak_gflops"]
    lines = ["", "What ONNX Runtime's own kernels allow (one-node graphs at the graph's shapes, "
             "each timed back to back, summed over the layers; norms, activations and the "
             "patch embedding left out; a one-node kernel can time a few % slower than the "
             "same kernel inside the graph):", "",
             "| batch | kernel | GFLOP | fp32 ms | fp32 GFLOP/s | int8 ms | int8 GOP/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for batch, f in report["kernel_floor"].items():
        for k in f["gemms"]:
            lines.append(f"| {f['batch']} | {k['name']} x{k['count']} | {k['gflop']:.2f} | "
                         f"{1000 * k['fp32_s']:.1f} | {k['fp32_gflops']:.0f} | "
                         f"{1000 * k['int8_s']:.1f} | {k['int8_gflops']:.0f} |")
        a = f["attention_core"]
        lines.append(f"| {f['batch']} | {a['name']} x{a['count']} | {a['gflop']:.2f} | "
                     f"{1000 * a['s']:.1f} | {a['gflops']:.0f} | (fp32) | |")
    lines.append("")
    for batch, f in report["kernel_floor"].items():
        t = report["targets"][batch]
        lines.append(
            f"- {batch}: fp32 floor {1000 * f['fp32_s']:.1f} ms "
            f"({100 * t['fp32_floor_fraction_of_gemm']:.0f}% of the {peak:.0f} GFLOP/s "
            f"ceiling; ORT's fp32 MatMul at these shapes {f['fp32_gemm_gflops']:.0f} GFLOP/s); "
            f"int8 floor {1000 * f['int8_s']:.1f} ms = {t['int8_floor_x_torch']:.2f}x torch eager "
            f"(int8 GEMMs {1000 * f['int8_gemm_s']:.0f} ms at {f['int8_gemm_gops']:.0f} GOP/s "
            f"+ fp32 attention cores {1000 * f['attention_core']['s']:.0f} ms)")
    return lines

