"""benchmarks/vision_bench.py runs end to end on the tiny preset and writes its report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vision_bench.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("vision_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_vision_bench_on_tiny(tmp_path):
    bench = _load_script()
    out = tmp_path / "results"
    assert bench.main(["--preset", "tiny", "--work-dir", str(tmp_path / "work"), "--out", str(out),
                       "--batches", "1", "2", "--warmup", "1", "--repeats", "2",
                       "--parity-images", "2", "--gemm-size", "256"]) == 0
    report = json.loads((out / "results.json").read_text())
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
