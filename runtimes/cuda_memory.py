"""GPU memory for a TensorRT engine, through CUDA's runtime API (``cuda-python``), no torch.

TensorRT runs on device addresses it is given; something else must allocate them and copy
the inputs in and the outputs out. :class:`CudaMemory` is that something, kept to the five
calls the engine runner needs (allocate, free, copy in, copy out, wait), so that the runner
reads the same whichever library provides them, and a test can stand in for the GPU with
host memory behind the same five calls.

``cuda-python`` is the package NVIDIA's own TensorRT samples use; it comes with the
``[tensorrt]`` extra. Its module moved in 12.8 (``cuda.bindings.runtime``; before:
``cuda.cudart``): both are tried.
"""

from __future__ import annotations

import numpy as np

from llava_edge.errors import LlavaEdgeError


class CudaUnavailableError(LlavaEdgeError):
    """CUDA's runtime cannot be used from Python here."""


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise CudaUnavailableError(
                "running a TensorRT engine needs cuda-python for its GPU memory: pip install "
                "'llava-edge[tensorrt]' (or pip install cuda-python)") from None
    return cudart


class CudaMemory:
    """Device buffers and one stream on the current CUDA device."""

    def __init__(self):
        self._rt = _cudart()
        self.stream = self._call("cudaStreamCreate")

    @property
    def stream_handle(self) -> int:
        """The stream as the integer TensorRT's ``execute_async_v3`` takes."""
        return int(self.stream)

    def alloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, address: int) -> None:
        self._call("cudaFree", address)

    def to_device(self, address: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._call("cudaMemcpyAsync", address, host.ctypes.data, host.nbytes,
                   self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)
        self.synchronize()  # ``host`` may be a temporary: the copy must end before it goes

    def to_host(self, host: np.ndarray, address: int) -> None:
        self._call("cudaMemcpyAsync", host.ctypes.data, address, host.nbytes,
                   self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self.stream)

    def close(self) -> None:
        if getattr(self, "stream", None) is not None:
            self._call("cudaStreamDestroy", self.stream)
            self.stream = None

    def _call(self, name: str, *args):
        """Call ``cudart.<name>``: its first result is the error code, the rest the value."""
        result = getattr(self._rt, name)(*args)
        err, rest = result[0], result[1:]
        if err != self._rt.cudaError_t.cudaSuccess:
            _, message = self._rt.cudaGetErrorString(err)
            raise CudaUnavailableError(
                f"CUDA {name} failed: {message.decode() if isinstance(message, bytes) else message}")
        return rest[0] if len(rest) == 1 else (rest or None)
