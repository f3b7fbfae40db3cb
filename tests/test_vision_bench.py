"""``llava-edge bench-vision`` (benchmarks/vision_bench.py) runs end to end on the tiny
preset and writes its report."""

from __future__ import annotations

import json

import pytest

from llava_edge.cli import run


@pytest.mark.slow
def test_vision_bench_on_tiny(tmp_path):
    out = tmp_path / "results"
    assert run(["bench-vision", "--preset", "tiny", "--work-dir", str(tmp_path / "work"),
                "--out", str(out), "--batches", "1,2", "--warmup", "1", "--repeats", "2",
                "--parity-images", "2", "--gemm-size", "256"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["command"].startswith("llava-edge bench-vision --preset tiny")
    assert "random" in report["weights"] and report["machine"]["logical_cores"] >= 1
    assert report["flops_per_image"]["total"] > 0 and report["gemm"]["peak_gflops"] > 0
    rows = {(r["batch"], r["variant"]) for r in report["results"]}
    for batch in (1, 2):
        for variant in ("fp32", "fp16", "int8-dynamic", "int8-static", "int4"):
            assert (batch, variant) in rows
    torch_rows = [r for r in report["results"] if r["backend"] == "torch eager"]
    assert all(r["x_torch"] == 1.0 and len(r["runs_s"]) == 2 for r in torch_rows)
    assert set(report["targets"]) == {"batch1", "batch2"}
    table = (out / "results.md").read_text()
    assert "| 2 | onnxruntime | int4 |" in table and "GEMM" in table
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]
    floor = report["kernel_floor"]["batch2"]
    assert floor["int8_s"] > floor["int8_gemm_s"] > 0
    assert floor["fp32_s"] > floor["fp32_gemm_s"] > 0
    assert report["targets"]["batch1"]["int8_floor_x_torch"] > 0
    assert "What ONNX Runtime's own kernels allow" in table


def test_kernel_floor_times_every_flop_of_the_graph_but_the_patch_embedding(tmp_path):
    """The floor's GEMMs and attention cores are the graph's FLOPs (vision_flops), less the
    patch embedding; its int8 GEMMs are the int8 export's quantized MatMuls."""
    import numpy as np
    import onnx

    from llava_edge.benchmarks import kernel_floor as kf
    from llava_edge.export.vision_graph import VisionGraphSpec, vision_flops

    # CLIP-like, two hidden states concatenated: 17 positions, 16 image tokens.
    spec = VisionGraphSpec(kind="clip", image_size=32, patch_size=8, hidden_size=32,
                           intermediate_size=64, num_heads=4, num_layers=3,
                           feature_layers=(-2, -1), hidden_state_indices=(2, 3),
                           select_strategy="default", n_image_tokens=16, n_embd=48)
    batch = 3
    kernels = kf.floor_kernels(spec, batch, threads=1)
    assert sorted({k.precision for k in kernels}) == ["fp32", "int8"]
    for k in kernels:  # each runs: real ONNX Runtime sessions at the graph's shapes
        assert k.run()[0].ndim in (2, 3)
    floor = kf.floor_report(kernels, {k.label: 1e-3 for k in kernels}, batch)
    flops = vision_flops(spec)
    counted = sum(g["gflop"] for g in floor["gemms"]) + floor["attention_core"]["gflop"]
    assert counted * 1e9 == pytest.approx(batch * (flops["total"] - flops["patch_embed"]))
    layers = spec.n_layers_run
    # 4 per-layer GEMMs and the core at 1 ms x layers, the 2 projector GEMMs at 1 ms once
    assert floor["int8_s"] == pytest.approx(1e-3 * (5 * layers + 2))
    model = kf._matmul_model(kf.Gemm("g", 4, 8, 16, 1), np.random.default_rng(0))
    ops = {n.op_type for n in onnx.load_from_string(kf._int8(model, tmp_path)).graph.node}
    assert "MatMulInteger" in ops and "MatMul" not in ops

