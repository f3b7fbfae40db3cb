"""Freed heap memory goes back to the OS after a load: :mod:`llava_edge.heap`, and the
vision encoder's session build, which parses a graph into many buffers and frees most of
them. Resident sizes are read from /proc in a fresh process each, so nothing else this
test session allocated is counted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llava_edge.heap import release_freed_memory

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads resident sizes from /proc")
ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    """The last line ``code`` prints, run in a fresh interpreter with :data:`_ANON_MB`."""
    out = subprocess.run([sys.executable, "-c", _ANON_MB + textwrap.dedent(code)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


_ANON_MB = """
def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
"""


@pytest.mark.skipif(not release_freed_memory(), reason="not glibc: malloc_trim is glibc's")
def test_a_fragmented_heap_is_given_back():
    # 64 MB in 64 KB blocks (below glibc's mmap threshold: they come from the heap), all
    # freed but the last, which pins the heap's top so it cannot shrink by itself.
    line = _run("""
        import ctypes
        from llava_edge.heap import release_freed_memory
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = [libc.malloc(65536) for _ in range(1024)]
        for b in blocks:
            ctypes.memset(b, 1, 65536)
        for b in blocks[:-1]:
            libc.free(b)
        held = anon_mb()
        release_freed_memory()
        print(held, anon_mb())
    """)
    held, after = map(float, line.split())
    assert held - after > 48, (held, after)  # most of the 64 MB freed comes back


@pytest.fixture(scope="module")
def int8_graph(tmp_path_factory) -> Path:
    """48 MatMuls of 768x768, quantized by ONNX Runtime to int8 (~28 MB): many weights, as
    a vision tower has, each parsed, then prepacked by the session."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("heap")
    rng, d, n = np.random.default_rng(0), 768, 48
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"],
                              ["y" if i == n - 1 else f"h{i + 1}"]) for i in range(n)]
    weights = [numpy_helper.from_array((rng.standard_normal((d, d)) * 0.03)
                                       .astype(np.float32), f"w{i}") for i in range(n)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, d])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "fp32.onnx")
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
    return folder / "int8.onnx"


@pytest.mark.skipif(not release_freed_memory(), reason="not glibc: malloc_trim is glibc's")
def test_the_vision_session_keeps_about_its_graph_resident(int8_graph):
    # Without the trim ONNX Runtime leaves about twice the graph resident after the build
    # (1.9x here, 1.8x for tinyllava's 302 MB int8 tower); with it, the weights and little
    # else. 1.3x + 16 MB leaves room for the session's own structures.
    line = _run(f"""
        import onnxruntime
        from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder
        before = anon_mb()
        encoder = OnnxVisionEncoder({str(int8_graph)!r}, providers="cpu", n_threads=1)
        print(anon_mb() - before)
    """)
    grown, graph_mb = float(line), int8_graph.stat().st_size / 2**20
    assert grown <= 1.3 * graph_mb + 16, (grown, graph_mb)
