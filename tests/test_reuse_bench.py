"""Smoke runs of the reuse benchmark and the frame-loop example on the `tiny` preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reuse_bench_builds_tiny_and_writes_its_results(tmp_path):
    out = subprocess.run([sys.executable, "-m", "llava_edge", "bench-reuse",
                          "--preset", "tiny", "--work-dir", str(tmp_path / "work"),
                          "--out", str(tmp_path / "results"), "--repeats", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (folder,) = (tmp_path / "results").iterdir()
    assert folder.name.startswith("reuse-tiny-")
    res = json.loads((folder / "results.json").read_text())
    assert res["weights"] == "random" and res["versions"]["llama_cpp_python"]
    assert res["command"].startswith("llava-edge bench-reuse --preset tiny")
    assert (res["vision_precision"], res["llm_quant"]) == ("fp32", "F16")
    assert "RANDOM weights" in (folder / "results.md").read_text()
    sf = res["same_frame"]
    assert sf["second_same_frame"]["prefill_tokens"] < sf["first_reuse"]["prefill_tokens"] \
        < sf["first_stateless"]["prefill_tokens"]
    assert sf["second_same_frame"]["images_encoded"] == 0
    assert res["chat"]["tokens_identical"] is True
    assert res["chat"]["turn3_chat"]["prefill_tokens"] < res["chat"]["turn3_stateless"][
        "prefill_tokens"]
    cache = res["embedding_cache"]
    assert cache["cached_frame"]["embedding_cache_hits"] == 1
    assert cache["new_frame"]["images_encoded"] == 1


@pytest.mark.slow
def test_frame_loop_example_on_a_folder(tiny_bundle, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            frames / f"{i:03d}.png")
    (frames / "notes.txt").write_text("not a frame")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "frame_loop.py"),
                          str(tiny_bundle), str(frames), "--prompt", "What is it?",
                          "--prompt", "What colour is it?", "--threads", "1",
                          "--max-new-tokens", "4", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["frame"] for r in rows] == ["000.png", "000.png", "001.png", "001.png",
                                          "002.png", "002.png"]
    for first, second in zip(rows[::2], rows[1::2]):
        assert first["timings"]["images_encoded"] == 1
        assert second["timings"]["images_encoded"] == 0
        assert second["timings"]["prefill_tokens"] < first["timings"]["prefill_tokens"]
