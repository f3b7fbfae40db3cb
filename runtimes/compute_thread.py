"""One thread that runs a model's llama.cpp computations, and nothing else.

Why a thread of its own: llama.cpp's AMX kernels (built where the CPU has AMX, see
scripts/amx_probe.sh) load their tile configuration once per thread and trust it from
then on (ggml-cpu/amx/mmq.cpp keeps a thread_local "done" flag). Any other AMX code that
runs on the same thread loads its own configuration over it: ONNX Runtime's int8 kernels
(our int8 / int4 vision graphs), oneDNN's bf16 ones in torch, a robot's own detector.
llama.cpp then multiplies with the other library's tile shapes and returns wrong logits
without an error: measured on an AMX Xeon, a tiny Q8_0 model's next-token logits moved by
up to 1.3 (argmax changed) after one int8 ONNX Runtime run on the thread between two
identical evaluations. So every ``llama_decode`` of a model runs here, and the OpenMP
threads it leads are llama.cpp's alone; whatever runs on the caller's threads cannot reach
them. The hop costs 0.1-0.2 ms a call (measured on 2 busy cores; a decoded token of a
1B model takes 30-50 ms), so it is taken only where the hazard exists: where llama.cpp was
built with its AMX kernels (:func:`for_llama_cpp`).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class ComputeThread:
    """Run callables one at a time on a single dedicated thread (started on first use)."""

    def __init__(self, name: str = "llama.cpp"):
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on the thread; its result, or its exception.

        A KeyboardInterrupt that reaches the caller while it waits is raised once the call
        has returned, as around a direct ctypes call: the model is never left mid-step."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            future = self._pool.submit(fn, *args)
        interrupted: BaseException | None = None
        while True:
            try:
                result = future.result()
                break
            except KeyboardInterrupt as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted
        return result

    def close(self) -> None:
        """Let the thread end once its call (if any) returns (idempotent)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class InlineCompute:
    """:class:`ComputeThread`'s interface, calling on the caller's thread."""

    def run(self, fn: Callable[..., T], *args) -> T:
        return fn(*args)

    def close(self) -> None:
        pass


@functools.lru_cache(maxsize=None)
def llama_cpp_has_amx() -> bool:
    """Whether this llama.cpp was built with its AMX kernels (its system info, read by the
    parser ``llava-edge doctor`` uses)."""
    from llava_edge.doctor import probe_llama_cpp

    return "AMX_INT8" in probe_llama_cpp().cpu_flags


def for_llama_cpp(name: str = "llama.cpp") -> ComputeThread | InlineCompute:
    """Where a model's llama.cpp computations run: a thread of their own where llama.cpp
    has AMX kernels, the caller's thread elsewhere. LLAVA_EDGE_COMPUTE_THREAD=1 / 0 forces
    either (tests take the thread on every machine)."""
    forced = os.environ.get("LLAVA_EDGE_COMPUTE_THREAD")
    own = forced == "1" if forced in ("0", "1") else llama_cpp_has_amx()
    return ComputeThread(name) if own else InlineCompute()
