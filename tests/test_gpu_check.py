"""scripts/gpu_check.sh: its CPU-only run end to end (so that the GPU check does not rot where
no GPU is), and its GPU path's decisions with nvcc, the GPU and its compute capability stood
in for (what it would build and run, `--plan`; what it refuses, and why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _gpu_check(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("CMAKE_ARGS", "LLAVA_EDGE_CUDA", "LLAVA_EDGE_CUDA_ARCH")}
    environ.update(env)
    return subprocess.run([str(SCRIPT), *args], env=environ, capture_output=True, text=True,
                          timeout=timeout)


GPU_HERE = dict(LLAVA_EDGE_NVCC="/usr/local/cuda/bin/nvcc", LLAVA_EDGE_NVIDIA_GPU="1",
                LLAVA_EDGE_NVIDIA_CC="9.0")


@pytest.fixture
def wheels(tmp_path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "llama_cpp_python-0.3.36.tar.gz").write_bytes(b"")  # --plan only reads its name
    return folder


def test_plan_on_a_gpu_machine(tmp_path, wheels):
    work = tmp_path / "work"
    done = _gpu_check("--plan", "--wheels", str(wheels), "--work", str(work), **GPU_HERE)
    assert done.returncode == 0, done.stderr
    steps = [line.removeprefix("gpu_check.sh: + ") for line in done.stderr.splitlines()
             if line.startswith("gpu_check.sh: + ")]
    venv = work / "venv" / "bin" / "python"
    assert steps[1] == f"python3 -m venv --without-pip {work / 'venv'}"
    # llama.cpp with CUDA for this GPU (sm_90) and this CPU's flags, from the trimmed sdist
    build = steps[2]
    assert "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90'" in build
    assert "-DGGML_NATIVE=OFF" in build
    assert build.endswith(f"scripts/build_llama_wheel.sh {venv} 0.3.36 "
                          f"{wheels / 'llama_cpp_python-0.3.36.tar.gz'}")
    # the project installed offline, from the wheels folder and what the machine has
    assert steps[4] == (f"{venv} -m pip install --quiet --no-index --find-links {wheels} "
                        f"--no-build-isolation -e {ROOT}[train,export,bench]")
    assert steps[5] == (f"{venv} -m llava_edge.benchmarks.gpu_check {work / 'gpu_check.json'} "
                        f"--work {work} --setup {work / 'setup.json'}")
    assert not work.exists()  # a plan does nothing


@pytest.mark.parametrize("env, says", [
    (dict(GPU_HERE, LLAVA_EDGE_NVIDIA_GPU="0"), "no CUDA build of llama.cpp is possible here"),
    (dict(GPU_HERE, LLAVA_EDGE_NVCC="none"), "no CUDA build of llama.cpp is possible here"),
    (dict(GPU_HERE, LLAVA_EDGE_CUDA="0"), "no CUDA build of llama.cpp is possible here"),
], ids=["no-gpu", "no-nvcc", "opted-out"])
def test_refuses_a_machine_it_cannot_check(tmp_path, wheels, env, says):
    done = _gpu_check("--plan", "--wheels", str(wheels), "--work", str(tmp_path / "w"), **env)
    assert done.returncode == 2
    assert says in done.stderr and "--cpu-only" in done.stderr


def test_refuses_without_the_wheels_folder(tmp_path):
    done = _gpu_check("--plan", "--wheels", str(tmp_path / "none"), **GPU_HERE)
    assert done.returncode == 2
    assert f"scripts/gpu_wheelhouse.sh {tmp_path / 'none'}" in done.stderr


def test_unknown_argument():
    done = _gpu_check("--gpus", "2")
    assert done.returncode == 2 and "unknown argument '--gpus'" in done.stderr


@pytest.mark.slow
def test_cpu_only_run_end_to_end(tmp_path):
    """What CI can run of the GPU check: the tiny preset, fp32, every step's code."""
    out = tmp_path / "check.json"
    done = _gpu_check("--cpu-only", "--work", str(tmp_path / "work"), "--out", str(out),
                      timeout=900, PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-only" and report["ok"]
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["name"] for s in report["steps"]] == [
        "environment", "data", "train_step", "export", "answer", "vision_backends", "bench"]
    assert all(s["ok"] and s["seconds"] >= 0 for s in report["steps"])

    env = steps["environment"]["figures"]
    assert env["llama_cpp"]["version"] and "CPUExecutionProvider" in env["onnxruntime"]["providers"]

    train = steps["train_step"]["figures"]
    assert train["steps"] == 3 and train["precision"] == "fp32" and train["device"] == "cpu"
    assert train["gradient_checkpointing"] and train["samples_per_s_last_step"] > 0
    assert train["final_loss"] > 0 and train["peak_gpu_memory_mib"] is None

    export = steps["export"]["figures"]
    assert any(name.endswith(".gguf") for name in export["file_mb"])
    assert any(name.endswith(".onnx") for name in export["file_mb"])

    answer = steps["answer"]["figures"]
    for layers in ("auto", "0"):
        row = answer[layers]
        assert row["tokens"] and row["first_token_ms"] > 0
        assert row["llm_on"] == "CPU" and row["vision_on"] == "CPU"
        assert row["vision_backend"] == "onnx"
    # no GPU: "auto" offloads nothing, so the two runs are the same computation
    assert answer["same_tokens"]

    backends = steps["vision_backends"]["figures"]
    assert backends["auto_choice"]["backend"] == "onnx"
    timed = {r["backend"]: r for r in backends["rows"]}
    exact = timed[f"onnx {backends['exact_graph']}"]
    assert exact["median_ms"] > 0 and exact["relative_error_to_exact"] == 0
    assert all(r["median_ms"] > 0 for r in backends["rows"] if "not_here" not in r)
    assert "#25814" in timed["mtmd mmproj-F16.gguf"]["not_here"]  # tiny is a CLIP tower

    rows = steps["bench"]["figures"]["rows"]
    ours = [r for r in rows if r["error"] is None and r["first_token_ms"]]
    assert ours, rows
