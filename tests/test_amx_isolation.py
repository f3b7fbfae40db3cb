"""llama.cpp's computations run on a thread of their own (runtimes/compute_thread.py).

Where llama.cpp has its AMX kernels (an AMX CPU, scripts/amx_probe.sh), ONNX Runtime's
int8 kernels run on the caller's thread between two evaluations used to load their tile
configuration over llama.cpp's, which then returned wrong logits without an error. On a
CPU without AMX the thread is taken all the same here (LLAVA_EDGE_COMPUTE_THREAD=1), so
the path is exercised on every machine.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

from llava_edge.runtimes.compute_thread import (ComputeThread, InlineCompute, for_llama_cpp,
                                                llama_cpp_has_amx)
from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM


def test_an_int8_graph_on_the_callers_thread_leaves_llama_cpp_alone(tiny_gguf, tiny_bundle,
                                                                    monkeypatch):
    monkeypatch.setenv("LLAVA_EDGE_COMPUTE_THREAD", "1")
    graph = next(tiny_bundle.glob("vision_int8*.onnx"))
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
    with LlamaCppLM(tiny_gguf.llm_file("Q8_0"), n_ctx=256, repack=True) as model:
        # long enough for llama.cpp's tile kernels (shorter batches take its VNNI path)
        tokens = model.tokenize("USER: the red circle is at the top " * 6)

        def logits():
            model.reset()
            model.eval_tokens(tokens)
            return model.logits()

        assert isinstance(model._compute, ComputeThread)
        before = logits()
        session.run(None, {inp.name: pixels})  # int8 kernels on this thread
        after = logits()
    np.testing.assert_array_equal(before, after)


def test_the_thread_is_taken_where_llama_cpp_has_amx(monkeypatch):
    monkeypatch.delenv("LLAVA_EDGE_COMPUTE_THREAD", raising=False)
    expected = ComputeThread if llama_cpp_has_amx() else InlineCompute
    assert type(for_llama_cpp()) is expected
    monkeypatch.setenv("LLAVA_EDGE_COMPUTE_THREAD", "0")
    assert type(for_llama_cpp()) is InlineCompute


def test_the_compute_thread_is_one_thread_and_passes_results_and_errors():
    compute = ComputeThread()
    try:
        names = {compute.run(lambda: threading.current_thread().name) for _ in range(3)}
        assert len(names) == 1 and names != {threading.current_thread().name}
        assert compute.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            compute.run(lambda: 1 / 0)
        assert compute.run(lambda: "still serving") == "still serving"
    finally:
        compute.close()
    compute.close()  # idempotent
