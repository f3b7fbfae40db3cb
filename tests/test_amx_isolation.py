"""llama.cpp's computations run on a thread of their own (runtimes/compute_thread.py).

Where llama.cpp has its AMX kernels (an AMX CPU, scripts/amx_probe.sh), ONNX Runtime's
int8 kernels run on the caller's thread between two evaluations used to load their tile
configuration over llama.cpp's, which then returned wrong logits without an error. On a
CPU without AMX the thread is taken all the same (it also keeps llama.cpp to one OpenMP
pool), so the path is exercised on every machine.
"""

from __future__ import annotations

import threading

import llama_cpp
import numpy as np
import onnxruntime as ort
import pytest

from llava_edge.runtimes.compute_thread import ComputeThread, InlineCompute, for_llama_cpp
from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM


def test_an_int8_graph_on_the_callers_thread_leaves_llama_cpp_alone(tiny_gguf, tiny_bundle,
                                                                    monkeypatch):
    monkeypatch.delenv("LLAVA_EDGE_COMPUTE_THREAD", raising=False)
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


def test_every_model_shares_the_process_llama_cpp_thread(monkeypatch):
    monkeypatch.delenv("LLAVA_EDGE_COMPUTE_THREAD", raising=False)
    assert isinstance(for_llama_cpp(), ComputeThread) and for_llama_cpp() is for_llama_cpp()
    monkeypatch.setenv("LLAVA_EDGE_COMPUTE_THREAD", "0")
    assert type(for_llama_cpp()) is InlineCompute


def test_loads_encodes_and_decodes_run_on_one_thread_whoever_calls(tiny_gguf, monkeypatch):
    """One thread for everything llama.cpp computes, so one OpenMP pool: a second pool
    (a model loaded on the main thread, decoded on another) made libgomp put its workers
    to sleep between parallel regions, 40% slower decoding on 2 cores."""
    from llama_cpp import mtmd_cpp

    from llava_edge.export.mtmd_encode import mtmd_greedy
    from llava_edge.runtimes.vision_mtmd import MtmdVisionEncoder

    monkeypatch.delenv("LLAVA_EDGE_COMPUTE_THREAD", raising=False)
    seen: dict[str, set[int]] = {}
    for module, name in ((llama_cpp, "llama_model_load_from_file"),
                         (llama_cpp, "llama_init_from_model"), (llama_cpp, "llama_decode"),
                         (mtmd_cpp, "mtmd_init_from_file"), (mtmd_cpp, "mtmd_encode_chunk"),
                         (mtmd_cpp, "mtmd_helper_eval_chunks")):
        def recorded(*args, _fn=getattr(module, name), _name=name):
            seen.setdefault(_name, set()).add(threading.get_ident())
            return _fn(*args)
        monkeypatch.setattr(module, name, recorded)
    rgb = np.full((64, 48, 3), 128, dtype=np.uint8)
    llm = tiny_gguf.llm_file("Q8_0")

    with LlamaCppLM(llm, n_ctx=256) as model:      # loaded on this thread ...
        def decode_elsewhere():                     # ... decoded on another, as a server does
            model.eval_tokens(model.tokenize("USER: hello"))
        worker = threading.Thread(target=decode_elsewhere)
        worker.start()
        worker.join()
        model.eval_tokens(model.tokenize(" again"))
        encoder = MtmdVisionEncoder(tiny_gguf.mmproj_file, llm, use_gpu=False)
        try:
            encoder.encode_rgb(rgb)
        finally:
            encoder.close()
    mtmd_greedy(tiny_gguf.mmproj_file, llm, "USER: <image>\nWhat is it? ASSISTANT:", rgb, 2)

    assert set(seen) == {"llama_model_load_from_file", "llama_init_from_model",
                         "llama_decode", "mtmd_init_from_file", "mtmd_encode_chunk",
                         "mtmd_helper_eval_chunks"}
    threads = set().union(*seen.values())
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_the_compute_thread_is_one_thread_and_passes_results_and_errors():
    compute = ComputeThread()
    try:
        names = {compute.run(lambda: threading.current_thread().name) for _ in range(3)}
        assert len(names) == 1 and names != {threading.current_thread().name}
        assert compute.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            compute.run(lambda: 1 / 0)
        assert compute.run(lambda: "still serving") == "still serving"
        # a computation that calls another runs it in place (no deadlock)
        assert compute.run(lambda: compute.run(lambda: threading.current_thread().name)) \
            in names
    finally:
        compute.close()
    compute.close()  # idempotent
