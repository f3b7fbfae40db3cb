"""The machine a benchmark ran on, and its physical limits measured in the same run.

Machine info and fp32 GEMM throughput come from :mod:`.vision_bench` (one implementation
of each). Memory bandwidth is measured here: a multi-threaded numpy copy of an array much
larger than the caches (numpy releases the GIL while copying, so threads overlap).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from llava_edge.benchmarks.vision_bench import gemm_throughput, machine_info

__all__ = ["machine_info", "gemm_throughput", "memory_bandwidth", "versions", "probe",
           "probe_in_subprocess"]

_PACKAGES = ("llava-edge", "numpy", "onnxruntime", "llama_cpp_python", "torch",
             "transformers", "onnx", "matplotlib", "psutil")


def versions() -> dict[str, str | None]:
    """Installed versions of everything a benchmark figure depends on."""
    out = {}
    for package in _PACKAGES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def memory_bandwidth(threads: int, size_mb: int = 512, repeats: int = 5) -> dict:
    """Sustained memory bandwidth in GB/s: ``threads`` threads each copy a slice of a
    ``size_mb`` float32 array (reads + writes counted, the median of ``repeats``)."""
    n = size_mb * 1024**2 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def copy(chunk):
        a, b = chunk
        np.copyto(dst[a:b], src[a:b])

    runs = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(copy, chunks))  # warm-up: touch every page once
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(copy, chunks))
            runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    return {"gb_s": 2 * src.nbytes / seconds / 1e9, "size_mb": size_mb, "threads": threads,
            "method": "numpy copyto, one slice per thread; bytes read + written",
            "runs_s": runs}


def probe(threads: int, gemm_size: int = 2048, bandwidth_mb: int = 512) -> dict:
    """Both limits with ``threads`` threads, in this process: ``{"bandwidth", "gemm"}``."""
    import torch

    torch.set_num_threads(threads)
    return {"bandwidth": memory_bandwidth(threads, bandwidth_mb),
            "gemm": gemm_throughput(gemm_size)}


def probe_in_subprocess(threads: int, gemm_size: int = 2048, bandwidth_mb: int = 512) -> dict:
    """:func:`probe` in a fresh process whose BLAS / OpenMP pools have ``threads`` threads
    (they are sized when numpy and torch load, so it cannot be changed afterwards)."""
    env = os.environ | {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-m", "llava_edge.benchmarks.machine", str(threads),
                          str(gemm_size), str(bandwidth_mb)], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the bandwidth / GEMM probe failed: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    t, g, b = map(int, sys.argv[1:4])
    print(json.dumps(probe(t, g, b)))
