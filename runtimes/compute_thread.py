"""The one thread that runs this process's llama.cpp computations, and nothing else.

Two reasons to keep llama.cpp on a thread of its own:

- OpenMP thread pools. llama.cpp's CPU backend (built with OpenMP, as ours is) gets a pool
  of worker threads for every thread that calls into it: the model load (weight
  repacking), mtmd's warm-up encode, each ``llama_decode``. Two callers make two pools,
  and once a process holds more OpenMP threads than there are cores, libgomp stops its
  workers from spin-waiting between parallel regions and puts them to sleep instead.
  Measured on a 2-core Xeon (tinyllava-1.1b Q4_K_M, 2 threads): a model loaded on the
  main thread and decoded on another took 56-63 ms a token, against 40-45 ms with load
  and decode on one thread. A server or a robot loop calls from threads of its own, so
  the library keeps every load, encode and decode on this one thread, whoever calls.
- AMX tile state. llama.cpp's AMX kernels (built where the CPU has AMX, see
  scripts/amx_probe.sh) load their tile configuration once per thread and trust it from
  then on (ggml-cpu/amx/mmq.cpp keeps a thread_local "done" flag). Any other AMX code that
  runs on the same thread loads its own configuration over it: ONNX Runtime's int8
  kernels (our int8 / int4 vision graphs), oneDNN's bf16 ones in torch, a robot's own
  detector. llama.cpp then multiplies with the other library's tile shapes and returns
  wrong logits without an error: measured on an AMX Xeon, a tiny Q8_0 model's next-token
  logits moved by up to 1.3 (argmax changed) after one int8 ONNX Runtime run on the
  thread between two identical evaluations. Nothing but llama.cpp runs here.

The hop costs 0.1-0.2 ms a call (a decoded token of a 1B model takes 30-60 ms on a CPU).
LLAVA_EDGE_COMPUTE_THREAD=0 calls llama.cpp on the caller's thread instead (for
debugging; it gives up both protections).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class ComputeThread:
    """Run callables one at a time on a single dedicated thread (started on first use).

    A callable running on the thread may call :meth:`run` again (it runs at once, on the
    same thread). A forked child starts a thread of its own on first use (the parent's
    does not exist there)."""

    def __init__(self, name: str = "llama.cpp"):
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._pid: int | None = None
        self._ident: int | None = None
        self._lock = threading.Lock()

    def _mark(self) -> None:
        self._ident = threading.get_ident()

    def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on the thread; its result, or its exception.

        A KeyboardInterrupt that reaches the caller while it waits is raised once the call
        has returned, as around a direct ctypes call: the model is never left mid-step."""
        if self._pid == os.getpid() and threading.get_ident() == self._ident:
            return fn(*args)
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name,
                                                initializer=self._mark)
                self._pid = os.getpid()
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
        """Let the thread end once its call (if any) returns (idempotent); a later
        :meth:`run` starts a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=True)


class InlineCompute:
    """:class:`ComputeThread`'s interface, calling on the caller's thread."""

    def run(self, fn: Callable[..., T], *args) -> T:
        return fn(*args)

    def close(self) -> None:
        pass


# Every model, mtmd context and export check of the process shares it (one OpenMP pool).
_LLAMA_CPP_THREAD = ComputeThread("llama.cpp")


def for_llama_cpp() -> ComputeThread | InlineCompute:
    """Where llama.cpp computations run: the process's llama.cpp thread, or the caller's
    thread where LLAVA_EDGE_COMPUTE_THREAD=0."""
    if os.environ.get("LLAVA_EDGE_COMPUTE_THREAD") == "0":
        return InlineCompute()
    return _LLAMA_CPP_THREAD
